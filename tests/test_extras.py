"""Dependencies per modality: the base install serves images; speech and video bring their
libraries as extras (`pip install 'vqvae-pipeline[speech]'`), and a missing one is one line naming
the pip command. A missing library is simulated by a `sitecustomize` that makes its import fail,
as it fails where the extra was never installed."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, run_job

SPEECH = ("soundfile", "soxr", "librosa", "resemblyzer")
VIDEO = ("av", "vizdoom")


def _without(tmp_path, modules) -> dict:
    """The environment of a process in which importing `modules` fails."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update({{m: None for m in {list(modules)!r}}})\n")
    return {"PYTHONPATH": f"{site}:{REPO / 'tests'}"}


def test_the_image_path_needs_no_speech_or_video_library(tmp_path):
    """Every module outside speech/ and video/ imports, the image demo's config loads and its
    models build and register their classes, with neither extra installed."""
    code = """
import importlib, pathlib, sys
for path in sorted(pathlib.Path("pipeline").rglob("*.py")):
    name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    if not name.startswith(("pipeline.modalities.speech", "pipeline.modalities.video")):
        importlib.import_module(name)
for gone in %r:
    assert gone not in sys.modules or sys.modules[gone] is None, gone
from pipeline.config import load_settings
from pipeline.modalities import model_classes
s = load_settings("configs/demo.yaml", ["workdir=%s"])
model = s.modality.build_autoencoder(s.stage1, s.data, {})
assert model.latent_shape((32, 32)) == (8, 8)
assert {"VQVAE", "GatedPixelCNN"} <= set(model_classes())
print("ok")
""" % (SPEECH + VIDEO, tmp_path / "w")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **_without(tmp_path, SPEECH + VIDEO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path):
    for config, missing, extra in (("demo-speech.yaml", SPEECH[:2], "speech"), ("demo-video.yaml", VIDEO[:1], "video")):
        proc = run_job("shard.py", "--config", str(REPO / "configs" / config), "--set", f"workdir={tmp_path / 'w'}",
                       timeout=120, env=_without(tmp_path, missing))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(f"error: the {extra} modality needs {', '.join(missing)}") and \
            f"pip install 'vqvae-pipeline[{extra}]'" in lines[0], lines
    assert not (tmp_path / "w").exists()  # nothing started
