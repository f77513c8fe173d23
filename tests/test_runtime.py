"""pipeline.runtime: keep_freed_memory, measured on a fresh interpreter the way a Ray Train worker
runs the loop (in a thread that has already allocated, so it has its own malloc arena); and a
local Ray start that times out on a loaded machine, tried again; a job that starts its own instance
beside a `ray start` one, and refuses in one line what that instance cannot hold."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, TINY_STAGE1, run_job, workdir_with_shards, write_config

SCRIPT = """
import json, resource, sys, threading
import torch
sys.path.insert(0, {root!r})
from pipeline.models.vqvae import VQVAE
from pipeline.runtime import keep_freed_memory

def loop():
    warm = torch.ones(1000); del warm  # small: a freed mmap block would raise glibc's threshold itself
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, spatial_dims=2, hidden=64, num_downsamples=2, codebook_size=64, code_dim=16)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.rand(64, 3, 32, 32)  # the demo's batch
    def step():
        loss = model(x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()  # warm-up: first allocations always fault their pages in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(json.dumps({{"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))

t = threading.Thread(target=loop)
t.start()
t.join()
"""


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(REPO)), mode], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_keep_freed_memory_stops_the_page_faults_of_every_training_step():
    default, kept = faults("default"), faults("keep")
    assert kept["kept"] is True  # glibc (Linux): mallopt took every setting
    # glibc's defaults: the steps fault their activations in again (30 000-76 000 faults seen)
    assert default["faults"] > 10 * 2000, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)


# The dashboard agent made slow once, as a loaded 2-core machine makes it (a CI run saw its raylet
# give up after 15 s and the job die): a sitecustomize that sleeps in the agent's first start.
SLOW_AGENT = """
import os, sys, time
if sys.argv[:1] and sys.argv[0].endswith(os.path.join("dashboard", "agent.py")):
    marker = os.environ["SLOW_AGENT_ONCE"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(25)
"""

START = """
import os, sys
sys.path.insert(0, {root!r})
import ray
from pipeline.runtime import _children, start_local
start_local(1, logging_level="WARNING")
assert ray.get(ray.remote(lambda: 42).remote()) == 42
names = [open(f"/proc/{{pid}}/cmdline").read() for pid in _children()]
print("gcs servers", sum("gcs_server" in name for name in names))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_start_that_times_out_is_cleaned_up_and_tried_again(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SLOW_AGENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "SLOW_AGENT_ONCE": str(tmp_path / "slowed"), "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-c", START.format(root=str(REPO))], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "slowed").exists()  # the first start did meet the slow agent
    assert "did not start in time (a loaded machine?); starting another (2/3)" in proc.stdout, proc.stdout
    assert "gcs servers 1" in proc.stdout  # the first attempt's processes were stopped


def test_a_job_starts_its_own_instance_beside_a_ray_start_one_and_refuses_what_it_cannot_hold(
        tmp_path, demo_raw, demo_shards):
    """`ray start` leaves its address in <Ray's temp dir>/ray_current_cluster, and a plain
    ray.init() joins it: a job would train on someone else's instance (here its address is stale,
    as a crashed head leaves it, so joining it fails outright). A job not told to join starts its
    own. Three one-CPU workers on its 2 CPUs would wait for ever, silently: exit 2 and one line,
    and the stage's MLflow run is FAILED, not left running."""
    from mlflow import MlflowClient

    short = tempfile.mkdtemp(prefix="rt-")  # RAY_TMPDIR: Ray's socket paths must stay under 108 bytes
    try:
        (Path(short) / "ray").mkdir()
        (Path(short) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        work = workdir_with_shards(tmp_path, demo_shards)
        cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1=TINY_STAGE1,
                           ray={"num_workers": 3, "cpus_per_worker": 1, "num_cpus": 2})
        proc = run_job("stage1.py", "--config", str(cfg), env={"RAY_TMPDIR": short, "RAY_ADDRESS": None},
                       timeout=240)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert "ray: started a local instance (2 CPU, 0 GPU)" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: stage1 t needs 3 CPU and the local Ray instance has 2 CPU: lower ray.num_workers or "
        "ray.cpus_per_worker, or raise ray.num_cpus (the local instance's logical CPUs)"), proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert [(r.data.tags.get("stage"), r.info.status) for r in runs] == [("stage1", "FAILED")]
