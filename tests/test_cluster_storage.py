"""Beyond one machine's disk, end to end on real services started here on 127.0.0.1 and stopped
after: an S3 server (SeaweedFS, tests/s3server.py), an `mlflow server` keeping its artifacts there,
and a Ray cluster of two nodes whose second node runs in a mount namespace of its own, where the
head's Ray session folder and every test folder are private empty file systems: it cannot see the
head's disk, so whatever it reads or writes goes through the object store.

Every node gets the store's endpoint and keys in its environment, as a cluster's operator gives
them (docs: cluster/README.md); the jobs get only the MLflow server's address."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY_STAGE1, write_config
from s3server import LocalS3
from test_services import VENV_BIN, free_port, port_open, service

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TINY_STAGE2 = {"steps": 40, "batch_size": 16, "hidden": 16, "num_layers": 2, "checkpoint_every": 20,
               "val_every": 20}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with LocalS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@contextmanager
def mlflow_on(s3: LocalS3, folder: Path, bucket: str):
    """An MLflow server whose artifacts go to the bucket (the server reaches the store; the jobs
    only reach the server)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{bucket}/mlartifacts", "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with service(args, f"{uri}/health", folder / "mlflow.log", env=s3.env):
        yield uri


def objects(s3: LocalS3, prefix: str) -> list[str]:
    from pyarrow.fs import FileSelector, FileType

    infos = s3.filesystem().get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == FileType.File)


def raw_on_s3(s3: LocalS3, demo_raw: Path, bucket: str) -> str:
    from pyarrow.fs import LocalFileSystem, copy_files

    s3.make_bucket(bucket)
    copy_files(str(demo_raw), f"{bucket}/raw", source_filesystem=LocalFileSystem(),
               destination_filesystem=s3.filesystem())
    return f"s3://{bucket}/raw"


def pipeline_job(cfg: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(cfg)],
                                cwd=tempfile.gettempdir(), env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_the_image_pipeline_runs_on_s3_and_a_killed_run_resumes_from_its_checkpoints_there(s3, tmp_path, demo_raw):
    """Raw data, shards, Ray Train's checkpoints, codes, priors, samples, the report and MLflow's
    artifacts all on the store; stage 1 killed after its first checkpoint resumes from it."""
    root = raw_on_s3(s3, demo_raw, "pipe")
    with mlflow_on(s3, tmp_path / "server", "pipe") as uri:
        env = {**s3.env, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": None}
        env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        cfg = write_config(tmp_path / "c.yaml", "s3://pipe/w", root, ray={"num_workers": 1, "num_cpus": 4},
                           stage1={**TINY_STAGE1, "steps": 80, "checkpoint_every": 20, "val_every": 40},
                           stage2=TINY_STAGE2, sample={"per_class": 1})
        first = pipeline_job(cfg, env, tmp_path / "first.log")
        try:
            deadline = time.time() + 400
            while time.time() < deadline and first.poll() is None and \
                    not [p for p in objects(s3, "pipe/w/runs") if re.search(r"stage1-t-[^/]+/checkpoint_[^/]+/state.pt", p)]:
                time.sleep(0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        said = (tmp_path / "first.log").read_text()
        assert "stage1 t:" not in said or "registered" not in said, said[-3000:]  # killed mid-training
        assert [p for p in objects(s3, "pipe/w/runs") if "checkpoint_" in p], said[-3000:]

        again = subprocess.run([sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(cfg)],
                               cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        out = again.stdout
        assert "shard t: already finished at s3://pipe/w/shards/t" in out
        assert re.search(r"resuming stage1-t-\w+", out), out[-3000:]
        stored = objects(s3, "pipe")
        shards = json.loads(s3.filesystem().open_input_stream("pipe/w/shards/t/manifest.json").read())
        assert all(f"pipe/w/shards/t/{s['path']}" in stored for split in shards["splits"].values()
                   for s in split["shards"])
        [codes] = [p for p in stored if re.fullmatch(r"pipe/w/codes/t/v1-\w+/manifest.json", p)]
        rows = json.loads(s3.filesystem().open_input_stream(codes).read())["rows"]
        assert rows == {s: shards["splits"][s]["samples"] for s in ("train", "val")}
        assert "pipe/w/report-t.html" in stored and any(p.startswith("pipe/w/samples/samples-1") for p in stored)
        assert any(p.endswith("weights.safetensors") for p in stored if p.startswith("pipe/mlartifacts/"))
        assert not [p for p in stored if p.endswith(".lock")]  # every lock released
        client = MlflowClient(uri)
        run = client.get_run(client.get_registered_model("vqvae-t").latest_versions[0].run_id)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")]
        assert steps[-1] == 80 and run.info.status == "FINISHED"
    assert not (Path(tempfile.gettempdir()) / "s3:").exists() and not (REPO / "s3:").exists()


def ray_node(args: list[str], log: Path, env: dict, private: list[str] | None = None) -> subprocess.Popen:
    """`ray start ... --block` in its own process group; with `private`, in a mount namespace of its
    own where each of those folders is an empty tmpfs (root: unshare --mount)."""
    command = [f"{VENV_BIN}/ray", "start", "--block", "--disable-usage-stats", *args]
    if private:
        mounts = " && ".join(f"mount -t tmpfs tmpfs {p}" for p in private)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && exec \"$@\"", "node",
                   *command]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)


def node_ports(first_worker_port: int) -> list[str]:
    """Every port a node listens on, explicit: two nodes share 127.0.0.1."""
    return [f"--{flag}={free_port()}" for flag in ("node-manager-port", "object-manager-port",
                                                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "runtime-env-agent-port", "metrics-export-port")] + \
        [f"--min-worker-port={first_worker_port}", f"--max-worker-port={first_worker_port + 199}"]


def actor_nodes(dashboard: str, name: str) -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(address=dashboard, limit=10_000, detail=True, raise_on_missing_output=False)
            if name in a.class_name}


def test_two_nodes_that_share_no_disk_run_the_pipeline_on_s3_with_the_figures_of_one(s3, tmp_path, demo_raw,
                                                                                       tmp_path_factory):
    """Train workers and codes actors on both nodes; the same models and codes as on one node."""
    from ray.job_submission import JobSubmissionClient

    from test_services import submit, wait_done

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test needs root and unshare(1) to give the second node a mount namespace of its own")
    root = raw_on_s3(s3, demo_raw, "nodes")
    sections = dict(ray={"num_workers": 2, "cpus_per_worker": 2, "num_cpus": 4},
                    stage1={**TINY_STAGE1, "steps": 40, "checkpoint_every": 20, "val_every": 20},
                    stage2=TINY_STAGE2, sample={"per_class": 1}, codes={"actors": 2})
    short_tmp = tempfile.mkdtemp(prefix="rayc-")  # unix socket paths must stay under 108 bytes
    with ExitStack() as stack:
        uri = stack.enter_context(mlflow_on(s3, tmp_path / "server", "nodes"))
        figures = {}
        for name in ("one", "two"):  # the same data under two names: one node, then two
            write_config(tmp_path / f"{name}.yaml", f"s3://nodes/{name}", root, **sections,
                         data={"name": name, "root": root, "image_size": 16, "samples_per_shard": 20})
        env = {**s3.env, "MLFLOW_TRACKING_URI": uri}
        one = subprocess.run([sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(tmp_path / "one.yaml")],
                             cwd=tempfile.gettempdir(), env={**os.environ, **env, "RAY_ADDRESS": ""},
                             capture_output=True, text=True, timeout=900)
        assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

        gcs, dashboard = free_port(), free_port()
        node_env = {**env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
        head = ray_node(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}", "--num-cpus=2",
                         f"--temp-dir={short_tmp}", *node_ports(41000)], tmp_path / "head.log", node_env)
        stack.callback(lambda: (os.killpg(head.pid, signal.SIGTERM), head.wait(60)))
        address = f"http://127.0.0.1:{dashboard}"
        from test_services import wait_for

        wait_for(f"{address}/api/version", 240, head, tmp_path / "head.log")
        hidden = [short_tmp, str(tmp_path_factory.getbasetemp())]  # the head's Ray session and every test folder
        worker = ray_node([f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                           *node_ports(41500)], tmp_path / "worker.log", node_env, private=hidden)
        stack.callback(lambda: (os.killpg(worker.pid, signal.SIGTERM), worker.wait(60)))
        for folder in (tmp_path, short_tmp):
            (Path(folder) / "on-the-head.txt").write_text("only the head sees this")
        deadline = time.monotonic() + 120
        while True:
            alive = [n for n in __import__("requests").get(f"{address}/nodes?view=summary").json()["data"]["summary"]
                     if n.get("raylet", {}).get("state") == "ALIVE"]
            if len(alive) == 2:
                break
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)

        # the second node sees neither the test's folder nor the head's Ray folder, only its own
        for folder in (tmp_path, short_tmp):
            seen = subprocess.run(["nsenter", "-t", str(worker.pid), "-m", "ls", "-A", str(folder)],
                                  capture_output=True, text=True)
            # (the test's folder is not there at all: its parent is an empty tmpfs there)
            assert "on-the-head.txt" not in seen.stdout and (seen.returncode == 0 or "No such file" in seen.stderr), seen
        client = JobSubmissionClient(address)
        job = submit(client, entrypoint=f"python jobs/pipeline.py --config {tmp_path / 'two.yaml'}",
                     runtime_env={"working_dir": str(REPO), "env_vars": {"MLFLOW_TRACKING_URI": uri}})
        logs = wait_done(client, job, seconds=900)
        assert re.search(rf"ray: joined the cluster at [0-9.]+:{gcs} \(4 CPU", logs), logs[-3000:]
        trainers, encoders = actor_nodes(address, "RayTrainWorker"), actor_nodes(address, "EncoderActor")
        assert len(trainers) == 2 and len(encoders) == 2, (trainers, encoders)

        mlflow = MlflowClient(uri)
        for name in ("one", "two"):
            vq = mlflow.get_run(mlflow.get_model_version(f"vqvae-{name}", "1").run_id).data.metrics
            prior = mlflow.get_run(mlflow.get_model_version(f"prior-{name}", "1").run_id).data.metrics
            figures[name] = (vq["val_mse"], vq["perplexity"], prior["val_nll_bits_per_code"])
        print(f"one node vs two: (val_mse, perplexity, val bits/code) {figures}")
        assert figures["one"] == pytest.approx(figures["two"], rel=1e-4), figures
        codes = {name: [p for p in objects(s3, f"nodes/{name}/codes") if p.endswith("manifest.json")] for name in figures}
        rows = {name: json.loads(s3.filesystem().open_input_stream(codes[name][0]).read())["rows"] for name in figures}
        assert rows["one"] == rows["two"] and rows["one"]["train"] > 0
    for port in (gcs, dashboard):
        assert not port_open(port)
    shutil.rmtree(short_tmp, ignore_errors=True)
