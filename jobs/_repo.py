"""Imported first by every job: the repository on the import path, in place of jobs/. Ray gives
its workers the job script's folder (`ray job submit --working-dir .` too), where jobs/pipeline.py
would shadow the package of the same name."""
import sys
from pathlib import Path

_jobs = Path(__file__).resolve().parent
sys.path[:] = [str(_jobs.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _jobs]
