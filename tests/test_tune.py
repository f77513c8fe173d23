"""Ray Tune over stage-1 keys: a real search of 4 trials, 2 at a time, ASHA on val_mse."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY_STAGE1, run_job, workdir_with_shards, write_config
from pipeline.config import load_settings
from pipeline.errors import UserError


def test_space_is_validated_before_any_trial(tmp_path, demo_raw):
    base = dict(stage1=TINY_STAGE1)
    cases = {
        "stage1.nope": "not a stage1.* key",
        "ray.num_workers": "not a stage1.* key",
    }
    for key, message in cases.items():
        cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, tune={"space": {key: [1, 2]}}, **base)
        with pytest.raises(UserError, match=message):
            load_settings(cfg)
    # a candidate that would break a trial is caught when the config loads
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, **base,
                       tune={"space": {"stage1.codebook_size": [16, 1]}})
    with pytest.raises(UserError, match="codebook_size"):
        load_settings(cfg)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, **base,
                       tune={"space": {"stage1.beta": [0.25]}, "overrides": {"stage1.steps": 0}})
    with pytest.raises(UserError, match="stage1.steps"):
        load_settings(cfg)


def test_an_override_set_on_the_command_line_changes_one_key_of_every_trial(tmp_path, demo_raw):
    from pipeline.stages.tune import trial_settings

    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", demo_raw, stage1={**TINY_STAGE1, "hidden": 48},
                       tune={"space": {"stage1.codebook_size": [8, 16]},
                             "overrides": {"stage1.steps": 400, "ray.num_workers": 1}})
    # `--set tune.overrides.stage1.steps=60` arrives nested ({stage1: {steps: 60}}): it once
    # replaced the whole stage1 section, and every trial trained the default model (hidden 256)
    settings = load_settings(cfg, ["tune.overrides.stage1.steps=60", "tune.space.stage1.lr=[0.001, 0.002]"])
    assert settings.tune.overrides == {"stage1.steps": 60, "ray.num_workers": 1}
    assert settings.tune.space == {"stage1.codebook_size": [8, 16], "stage1.lr": [0.001, 0.002]}
    trial = trial_settings(settings, {"stage1.codebook_size": 8, "stage1.lr": 0.002})
    assert (trial.stage1.steps, trial.stage1.hidden, trial.stage1.batch_size, trial.stage1.codebook_size,
            trial.stage1.lr, trial.ray.num_workers) == (60, 48, TINY_STAGE1["batch_size"], 8, 0.002, 1)
    for override in ("tune.overrides.stage1=3", "tune.overrides.stage1.nope=3"):
        with pytest.raises(UserError, match="does not name a config key"):
            load_settings(cfg, [override])


def test_a_grid_whose_trials_score_different_signals_is_refused_before_anything_starts(tmp_path):
    """Speech with and without the linear predictor scores the excitation or the samples: the
    search would keep whichever number is lower, so it refuses in one line, before Ray or MLflow."""
    import yaml

    from pipeline.stages.tune import trial_settings, tune

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"),
                                   "data": {"name": "t", "root": str(tmp_path / "nowhere"), "modality": "speech",
                                            "sample_rate": 8000},
                                   "tune": {"space": {"stage1.lpc_order": [0, 16]}}}))
    with pytest.raises(UserError, match=r"tune.space: .*val_bits_per_sample would score different signals"):
        tune(load_settings(cfg))
    assert not (tmp_path / "w").exists()  # nothing was started or written
    alike = load_settings(cfg, ['tune.space={"stage1.codebook_size": [8, 16]}', "stage1.lpc_order=16"])
    assert {alike.modality.metric_scale(t.data, t.stage1) for t in
            (trial_settings(alike, {"stage1.codebook_size": k}) for k in (8, 16))} == {
        "sample_rate=8000 lpc_order=16 preemphasis=0.0"}


@pytest.mark.slow
@pytest.mark.e2e
def test_search_stops_bad_trials_and_registers_the_best(tmp_path, ray_local, demo_raw, demo_shards):
    work = workdir_with_shards(tmp_path, demo_shards)
    # The job starts a local Ray instance of its own (4 logical CPUs) beside the session's, as a
    # search on a laptop where other Ray work runs: its trials must still get back the resources of
    # the trials ASHA stops (Ray Train's cleaner once asked the wrong instance and they never did).
    # 4 trials, 2 at a time, 1 worker of 2 CPUs each: they only all run if the trials ASHA stops
    # give their CPUs back. lr 1e-7 learns nothing: those two trials start after the lr 1e-3 ones
    # (grid order) and must be stopped at the first rung (step 20).
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1=TINY_STAGE1,
                       ray={"num_workers": 2, "cpus_per_worker": 2, "num_cpus": 4},
                       tune={"space": {"stage1.codebook_size": [8, 32], "stage1.lr": [1e-3, 1e-7]},
                             "max_concurrent_trials": 2, "grace_period": 20,
                             "overrides": {"stage1.steps": 40, "stage1.val_every": 10,
                                           "stage1.checkpoint_every": 20, "ray.num_workers": 1}})
    assert ray_local.is_initialized()  # the other instance
    # RAY_AUTH_MODE unset, as in a user's shell: Ray's default token auth, started without its
    # WARNING line (and once without a GCS client that refused the token: every job failed)
    user = {"PIPELINE_PROGRESS_SECONDS": "1", "RAY_AUTH_MODE": None}
    proc = run_job("tune_codebook.py", "--config", str(cfg), timeout=600, env=user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Token authentication" not in out + proc.stderr, (out + proc.stderr)[:2000]
    assert "started a local instance (4 CPU" in out and "4 trials" in out and "best val_mse" in out, out[-2000:]
    # the search's progress in lines of its own (not a terminal), Tune's status tables left out
    shown = [line for line in out.splitlines() if re.match(r"tune t: \d/4 trials", line)]
    assert shown and shown[-1].startswith("tune t: 4/4 trials (100%)"), out[-3000:]
    assert re.search(r"best val_mse [0-9.]+ \(codebook_size=(8|32), lr=0.001\)", shown[-1]), shown[-1]
    assert "Trial status" not in out + proc.stderr and "tensorboard" not in (out + proc.stderr).lower()

    settings = load_settings(cfg)
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("t")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "tune")
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.txt", "trials.json", "val_mse_vs_K.png"} <= artifacts
    rows = json.loads(open(client.download_artifacts(parent.info.run_id, "trials.json", str(tmp_path))).read())
    assert len(rows) == 4

    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    by_lr = {}
    for child in children:
        tags = child.data.tags
        steps = int(tags["steps_run"])
        if child.info.status == "FINISHED":
            assert steps == 40 and tags["stop_reason"] == "completed"
        else:
            assert child.info.status == "KILLED" and steps < 40, (child.info.status, steps)
            assert tags["stop_reason"] == f"stopped early by ASHA at step {steps}"
        # every child logged its own trial's values and val metrics
        assert child.data.params["stage1.codebook_size"] == tags["tune.stage1.codebook_size"]
        assert child.data.params["stage1.steps"] == "40"
        assert "val_mse" in child.data.metrics
        by_lr.setdefault(float(child.data.params["stage1.lr"]), []).append((child.info.status, steps))
    assert sorted(by_lr[1e-7]) == [("KILLED", 20), ("KILLED", 20)], by_lr

    # the best completed trial is registered and takes champion; its model loads back
    from pipeline import tracking

    tracking.setup_tracking(settings.tracking_uri, "t")
    info = tracking.resolve("models:/vqvae-t@champion")
    best = min((r for r in rows if r["status"] == "FINISHED"), key=lambda r: r["final_val_mse"])
    assert info["tags"]["tune_trial"] == best["trial"] == parent.data.tags["best_trial"]
    assert float(info["tags"]["metric.val_mse"]) == pytest.approx(best["final_val_mse"])
    model = tracking.load_vqvae("models:/vqvae-t@champion")
    assert model.vq.codebook_size == best["stage1.codebook_size"]

    # the same search again does nothing
    again = run_job("tune_codebook.py", "--config", str(cfg), timeout=120, env=user)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]


def _checkpointed_step(run_dir: Path) -> int:
    """The step of the last checkpoint the Train controller registered (0: none yet)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_search_resumes_its_trials_from_their_checkpoints(tmp_path, ray_local, demo_raw, demo_shards):
    from pipeline.stages.tune import search_name

    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1=TINY_STAGE1,
                       ray={"num_workers": 1, "cpus_per_worker": 1},
                       tune={"space": {"stage1.codebook_size": [8, 16]}, "max_concurrent_trials": 2,
                             "grace_period": 300,  # no early stops: both trials run to the end
                             "overrides": {"stage1.steps": 300, "stage1.val_every": 100,
                                           "stage1.checkpoint_every": 20}})
    settings = load_settings(cfg)
    runs = Path(settings.runs_dir)
    address = ray_local.get_runtime_context().gcs_address
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune_codebook.py"), "--config", str(cfg)],
                           cwd=REPO, env={**os.environ, "RAY_ADDRESS": address}, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial_dirs: list = []
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        trial_dirs = sorted(runs.glob(f"{search_name(settings)}-*"))
        if len(trial_dirs) == 2 and all(_checkpointed_step(d) for d in trial_dirs):
            break
        time.sleep(0.2)
    assert job.poll() is None, "the search ended before both trials had a checkpoint"
    os.killpg(job.pid, signal.SIGKILL)  # the driver dies: Ray reaps its trials and Train workers
    job.wait()
    deadline = time.time() + 120
    while time.time() < deadline and ray_local.available_resources().get("CPU", 0) < 4:
        time.sleep(0.5)
    last = {d.name: _checkpointed_step(d) for d in trial_dirs}  # read once every worker is gone
    assert all(0 < step < 300 for step in last.values()), last  # killed mid-way

    proc = run_job("tune_codebook.py", "--config", str(cfg), timeout=600, env={"RAY_ADDRESS": address})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming search" in proc.stdout and "2 trials" in proc.stdout, proc.stdout[-2000:]

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("t")
    [parent] = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "tune"]
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # the same two trials and MLflow runs, carried on from their checkpoints, not started again
    assert sorted(c.info.run_name for c in children) == sorted(last)
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["steps_run"] == "300"
        resumed = child.data.metrics["resumed_from_step"]
        assert resumed == last[child.info.run_name], (child.info.run_name, resumed, last)
