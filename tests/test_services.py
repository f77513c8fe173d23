"""The cluster path on real services started here on 127.0.0.1 and stopped after: a Ray head
(`ray start --head`) taking stage 1 and codes (and a video shard job) through `ray job submit`'s
API, and an `mlflow server` that they log to from Ray workers."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, TINY_STAGE1, workdir_with_shards, write_config

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not up after {seconds} s:\n{log.read_text()[-3000:]}")


@contextmanager
def service(args: list[str], url: str, log: Path, env: dict | None = None, seconds: float = 240):
    """A server process in its own process group, up when `url` answers 200, stopped after."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        wait_for(url, seconds, proc, log)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def retried(call, seconds: float = 60):
    """`call()`, retried while the head's dashboard drops a connection under load or its job agent is
    still starting ("No available agent")."""
    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except (RuntimeError, requests.ConnectionError) as e:
            transient = isinstance(e, requests.ConnectionError) or "No available agent" in str(e)
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(1)


def submit(client, **job) -> str:
    """submit_job under a fixed submission id, so that a retry after a POST whose answer was lost finds
    the job it made rather than starting a second one."""
    sid = f"test-{uuid.uuid4().hex[:12]}"

    def once():
        try:
            return client.submit_job(submission_id=sid, **job)
        except RuntimeError as e:
            if "already exists" in str(e):  # the lost answer's job: it is ours
                return sid
            raise
    return retried(once)


def wait_done(client, job: str, seconds: float = 400) -> str:
    """Wait for a submitted job to end; it must have succeeded. -> its logs."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + seconds
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while retried(lambda: client.get_job_status(job)) not in done:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(1)
    logs = retried(lambda: client.get_job_logs(job))
    assert retried(lambda: client.get_job_status(job)) == JobStatus.SUCCEEDED, (job, logs[-3000:])
    return logs


@pytest.mark.slow
@pytest.mark.e2e
def test_jobs_submitted_to_a_real_head_log_to_a_real_mlflow_server(tmp_path, demo_raw, demo_shards):
    """The cluster path in one: stage 1 and codes go through `ray job submit` to a `ray start --head`,
    and their Ray workers log over HTTP to an `mlflow server` that proxies the artifacts."""
    import torch
    from ray.job_submission import JobSubmissionClient
    from safetensors.torch import load_file

    from pipeline import tracking

    work = workdir_with_shards(tmp_path, demo_shards)
    cfg = write_config(tmp_path / "c.yaml", work, demo_raw, stage1={**TINY_STAGE1, "steps": 30},
                       ray={"num_workers": 1, "cpus_per_worker": 1})  # DDP: test_stage1.py
    store, artifacts, port = tmp_path / "server" / "mlflow.db", tmp_path / "server" / "artifacts", free_port()
    store.parent.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
              "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts),
              "--workers", "1"]
    gcs, dashboard = free_port(), free_port()
    short_tmp = tempfile.mkdtemp(prefix="rayhead-")  # unix socket paths must stay under 108 bytes
    # As a user does after `source .venv/bin/activate`: the head's PATH finds the venv's python.
    env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    # Every port explicit: beside the session's own Ray instance, a second head on the default
    # dashboard-agent port never gets a job agent ("No available agent to submit job").
    agent_ports = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "ray-client-server-port",
                                                          "runtime-env-agent-port", "metrics-export-port")]
    head = [f"{VENV_BIN}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *agent_ports, "--num-cpus=4",
            f"--temp-dir={short_tmp}", "--disable-usage-stats"]
    address = f"http://127.0.0.1:{dashboard}"
    with service(server, f"{uri}/health", tmp_path / "mlflow.log"), \
            service(head, f"{address}/api/version", tmp_path / "head.log", env=env):
        client = JobSubmissionClient(address)
        for script in ("stage1.py", "dump_codes.py"):
            # the server's address reaches the job and its Ray workers as a cluster's nodes get it
            job = submit(client, entrypoint=f"python jobs/{script} --config {cfg}",
                         runtime_env={"working_dir": str(REPO), "env_vars": {"MLFLOW_TRACKING_URI": uri}})
            logs = wait_done(client, job)
            # the job joined the head it was submitted to, never a local instance of its own
            assert re.search(rf"ray: joined the cluster at [0-9.]+:{gcs} \(4 CPU", logs), logs[-3000:]
            assert "started a local instance" not in logs
        assert not (work / "mlflow.db").exists()  # nothing went to the local default store

        # a video job goes the same way: ViZDoom clips with their actions, sharded on the head
        from pipeline.modalities.video.demo import make_demo_data

        make_demo_data(tmp_path / "clips", train_clips=3, val_clips=1, frames=8, size=16, workers=1)
        video_cfg = tmp_path / "video.yaml"
        video_cfg.write_text(yaml.safe_dump({
            "workdir": str(tmp_path / "vw"), "data": {"name": "doom", "modality": "video", "root": str(tmp_path / "clips"),
                                                      "frame_size": 16, "frames": 4, "window_stride": 4}}))
        job = submit(client, entrypoint=f"python jobs/shard.py --config {video_cfg}",
                     runtime_env={"working_dir": str(REPO)})
        logs = wait_done(client, job)
        assert re.search(rf"ray: joined the cluster at [0-9.]+:{gcs} \(4 CPU", logs), logs[-3000:]
        manifest = json.loads((tmp_path / "vw" / "shards" / "doom" / "manifest.json").read_text())
        assert manifest["splits"]["train"]["samples"] == 3 * 2 and manifest["splits"]["val"]["samples"] == 2
        assert manifest["cond"]["actions"]["names"] == ["forward", "backward", "turn_left", "turn_right"]

        mlflow_client = MlflowClient(uri)
        exp = mlflow_client.get_experiment_by_name("t")
        runs = {r.data.tags.get("stage"): r for r in mlflow_client.search_runs([exp.experiment_id])}
        assert runs["stage1"].info.status == "FINISHED" and runs["codes"].info.status == "FINISHED"
        # rank 0 logged through the server: metrics and the reconstructions picture
        assert [m.step for m in mlflow_client.get_metric_history(runs["stage1"].info.run_id, "val_mse")] == [30]
        assert any(p.name.endswith(".png") for p in artifacts.rglob("reconstructions/*"))
        aliases = mlflow_client.get_registered_model("vqvae-t").aliases
        assert {alias: str(version) for alias, version in aliases.items()} == {"champion": "1"}  # REST gives str
        assert runs["codes"].data.tags["vqvae_version"] == "1"

        # the registered model comes back through the server and matches the weights it stored
        tracking.setup_tracking(uri, "t")
        model = tracking.load_vqvae("models:/vqvae-t@champion")
        assert model.vq.codebook_size == TINY_STAGE1["codebook_size"]
        on_disk = load_file(str(next(artifacts.rglob("weights.safetensors"))))
        assert set(on_disk) == set(model.state_dict())
        assert all(torch.equal(on_disk[k], v) for k, v in model.state_dict().items())
        assert list((work / "codes" / "t").glob("v1-*/train/*.parquet"))
    assert not port_open(gcs) and not port_open(dashboard) and not port_open(port)  # all gone
    shutil.rmtree(short_tmp, ignore_errors=True)
