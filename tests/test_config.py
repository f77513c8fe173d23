"""Configuration: YAML + --set overrides, validated once; bad input is one line and exit 2."""
from __future__ import annotations

import pytest

from conftest import run_job, write_config
from pipeline.config import load_settings
from pipeline.errors import UserError


def test_overrides_are_parsed_as_yaml(tmp_path, demo_raw):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    s = load_settings(cfg, ["stage1.steps=300", "stage1.ema=true", "ray.use_gpu=false"])
    assert s.stage1.steps == 300 and s.stage1.ema is True and s.ray.use_gpu is False


def test_the_data_section_belongs_to_the_modality(tmp_path, demo_raw):
    from pipeline.modalities.image import ImageData, ImageModality

    s = load_settings(write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw), ["data.image_size=24"])
    assert isinstance(s.data, ImageData) and isinstance(s.modality, ImageModality)
    # its own fields survive the round trip Ray workers make through model_dump()
    again = type(s).model_validate(s.model_dump())
    assert isinstance(again.data, ImageData) and again.data.image_size == 24


def test_paths_are_made_absolute_and_workdir_is_substituted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", "rel/work", "{workdir}/raw")
    s = load_settings(cfg)
    assert s.workdir == str(tmp_path / "rel" / "work")
    assert s.data.root == str(tmp_path / "rel" / "work" / "raw")


@pytest.mark.parametrize("override, fragment", [
    ("stage1.stepz=3", "unknown key 'stage1.stepz'"),
    ("stage1.steps=many", "key 'stage1.steps'"),
    ("data.image_size=[1, 2]", "key 'data.image_size'"),
    ("nonsense", "expected dotted.key=value"),
    ("data.modality=sound", "key 'data': modality: unknown modality 'sound'"),
    ("data.modality=nowhere.module:THING", "modality 'nowhere.module:THING' cannot be imported"),
    ("data.sample_rate=16000", "unknown key 'data.sample_rate'"),  # a field of another modality
])
def test_bad_settings_raise_one_clear_error(tmp_path, demo_raw, override, fragment):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")):
        load_settings(cfg, [override])


@pytest.mark.parametrize("args, fragment", [
    (["--set", "data.colour=red"], "unknown key 'data.colour'"),
    (["--set", "data.samples_per_shard=lots"], "key 'data.samples_per_shard'"),
    (["--set", "data.root=/nonexistent/imagenet"], "/nonexistent/imagenet"),
])
def test_shard_job_exits_2_with_one_line(tmp_path, demo_raw, args, fragment):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw)
    proc = run_job("shard.py", "--config", str(cfg), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file_exits_2(tmp_path):
    proc = run_job("shard.py", "--config", str(tmp_path / "nope.yaml"), timeout=60)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


# ---- settings per model --------------------------------------------------------------------------

@pytest.mark.parametrize("config, override", [
    ("demo-speech.yaml", "stage1.num_res_blocks=2"),  # the speech encoder has no residual blocks
    ("demo-video.yaml", "stage2.kernel_size=5"),  # the video prior is a transformer
    ("demo.yaml", "stage2.cycle=4"),  # a field of the speech prior, not of the Gated PixelCNN
    ("demo.yaml", "stage1.lpc_order=16"),  # a field of the speech decoder
])
def test_a_setting_the_chosen_model_does_not_have_is_an_unknown_key(tmp_path, config, override):
    from conftest import REPO

    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"^{REPO / 'configs' / config}: unknown key '{key}'$"):
        load_settings(REPO / "configs" / config, [f"workdir={tmp_path}", override])


@pytest.mark.parametrize("config, same, other", [
    ("demo.yaml", ["stage1.val_every=7", "stage1.compile=true", "stage1.log_every=3"], ["stage1.hidden=32"]),
    ("demo-speech.yaml", ["stage1.shown_seconds=0.25", "stage1.checkpoint_every=50"], ["stage1.lpc_order=8"]),
    ("demo-video.yaml", ["stage2.vqvae=models:/vqvae-demo-video/1", "stage2.max_failures=3"], ["stage2.num_heads=2"]),
])
def test_only_what_shapes_the_model_makes_a_training_run_s_identity(tmp_path, config, same, other):
    """A run is named by its section's values that shape the model: how often it validates,
    checkpoints and logs, where its codes come from and how its examples are written do not."""
    from conftest import REPO
    from pipeline.stages.train.driver import shaping

    def identity(*overrides):
        s = load_settings(REPO / "configs" / config, [f"workdir={tmp_path}", *overrides])
        section = s.stage2 if overrides and overrides[0].startswith("stage2") else s.stage1
        return shaping(section)

    stage = same[0].split(".")[0]
    base = identity(f"{stage}.seed=0")
    assert identity(*same) == base
    assert identity(*other) != base
