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
