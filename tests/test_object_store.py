"""The workdir on an object store (pipeline/fs.py, pipeline/locks.py), against a real S3 server
started here on 127.0.0.1 (SeaweedFS, tests/s3server.py) and stopped after: files that round-trip,
tars that webdataset streams from it, a lock that a second writer respects, and refusals (a
missing bucket, unknown or wrong keys, a SQLite store for an s3:// workdir) as one line and exit 2."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import pytest

from conftest import REPO, run_job
from s3server import LocalS3


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with LocalS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def on_s3(s3, monkeypatch):
    """This process reaches the server the standard AWS way (AWS_ENDPOINT_URL and keys)."""
    from pipeline import fs

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    fs._S3.clear()
    yield s3
    fs._S3.clear()


def test_files_round_trip_through_the_environments_endpoint(on_s3, tmp_path):
    from pipeline import fs

    base = f"{on_s3.make_bucket('roundtrip')}/w"
    fs.write_json_atomic(fs.join(base, "a", "m.json"), {"x": [1, 2]})
    assert fs.read_json(fs.join(base, "a", "m.json")) == {"x": [1, 2]}
    assert fs.read_json(fs.join(base, "a", "missing.json")) is None
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "p.bin").write_bytes(b"\x00\x01" * 5000)
    (tmp_path / "up" / "sub" / "q.txt").write_text("q")
    fs.upload(tmp_path / "up", fs.join(base, "up"))
    assert fs.names(fs.join(base, "up")) == ["p.bin"]
    with fs.open_read(fs.join(base, "up", "p.bin")) as f:
        assert f.read() == b"\x00\x01" * 5000
    with fs.staged(fs.join(base, "staged")) as local:  # writers that need a local file
        with open(f"{local}/r.txt", "w") as f:
            f.write("r")
        assert fs.names(fs.join(base, "staged")) == []  # nothing there before the body returns
    assert fs.names(fs.join(base, "staged")) == ["r.txt"]
    fs.remove_tree(fs.join(base, "up"))
    assert not fs.path_exists(fs.join(base, "up", "p.bin")) and fs.names(fs.join(base, "up")) == []
    # what Ray Train and Tune get: the path on the store and this filesystem, never the URI
    storage = fs.ray_storage(fs.join(base, "runs"))
    assert storage["storage_path"] == "roundtrip/w/runs" and storage["storage_filesystem"] is fs.filesystem(base)[0]
    assert fs.ray_storage("/local/runs") == {"storage_path": "/local/runs"}


def test_webdataset_streams_shards_from_the_store_as_from_disk(on_s3, tmp_path):
    import webdataset as wds

    from pipeline import fs
    from pipeline.formats import reader  # noqa: F401 - registers the s3:// opener

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(30):
            payload = bytes([i]) * (100_000 + i)  # samples larger than a read
            info = tarfile.TarInfo(f"k{i:03d}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    url = fs.join(on_s3.make_bucket("wds"), "s.tar")
    fsys, path = fs.filesystem(url)
    fs.write_atomic(path, buf.getvalue(), fsys)
    local = [(s["__key__"], s["bin"]) for s in wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "s.tar")]),
                                                                 wds.tarfile_to_samples())]
    remote = [(s["__key__"], s["bin"]) for s in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())]
    assert len(remote) == 30 and remote == local


def test_a_lock_on_the_store_refuses_a_second_writer_and_a_lapsed_lease_is_taken_over(on_s3, monkeypatch, capsys):
    from pipeline import fs, locks
    from pipeline.errors import UserError

    monkeypatch.setattr(locks, "SETTLE_S", 0.2)
    out = f"{on_s3.make_bucket('locks')}/w/shards/t"
    with locks.exclusive(out, "shard t"):
        held = fs.read_json(f"{out}.lock")
        assert held["pid"] > 0 and held["expires"] > time.time() + 60
        with pytest.raises(UserError, match=r"shard t: s3://locks/w/shards/t is being written by pid \d+ on "):
            with locks.exclusive(out, "shard t"):
                pass
    assert fs.read_json(f"{out}.lock") is None  # released
    # a holder killed without releasing: its lease runs out, then the lock is taken over
    fs.write_json_atomic(f"{out}.lock", {"owner": "gone", "pid": 4242, "host": "elsewhere", "expires": time.time() - 1})
    with locks.exclusive(out, "shard t"):
        assert fs.read_json(f"{out}.lock")["owner"] != "gone"
    assert "taking over s3://locks/w/shards/t.lock from pid 4242 on elsewhere, whose lease ran out" \
        in capsys.readouterr().out
    # a holder on this machine that is gone (killed): taken over at once, lease or not
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    fs.write_json_atomic(f"{out}.lock", {"owner": "killed", "pid": dead.pid, "host": socket.gethostname(),
                                         "expires": time.time() + 100})
    with locks.exclusive(out, "shard t"):
        pass
    assert f"from pid {dead.pid} on {socket.gethostname()}, which is gone" in capsys.readouterr().out
    # two writers at once: one of them holds it, the other is refused
    results: list[str] = []

    def writer() -> None:
        try:
            with locks.exclusive(out, "shard t"):
                time.sleep(1.0)
            results.append("held")
        except UserError:
            results.append("refused")

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held", "refused"]


def test_the_lease_is_renewed_while_the_holder_works(on_s3, monkeypatch):
    from pipeline import fs, locks

    monkeypatch.setattr(locks, "SETTLE_S", 0.1)
    monkeypatch.setattr(locks, "LEASE_S", 2.0)  # renewed every 0.5 s
    out = f"{on_s3.make_bucket('lease')}/w/codes"
    with locks.exclusive(out, "codes t"):
        first = fs.read_json(f"{out}.lock")["expires"]
        time.sleep(3.0)  # longer than the lease: still held, renewed
        assert fs.read_json(f"{out}.lock")["expires"] > first + 1.0


@pytest.mark.slow
def test_a_missing_bucket_wrong_keys_and_a_sqlite_store_are_one_line_and_exit_2(s3, tmp_path):
    s3.make_bucket("jobs")
    server = {**s3.env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # never reached: refused before
    cfg = str(REPO / "configs" / "demo.yaml")

    def shard(workdir: str, **env) -> str:
        return one_line_error(run_job("shard.py", "--config", cfg, "--set", f"workdir={workdir}",
                                      timeout=120, env={**server, **env}))

    line = shard("s3://no-such-bucket/w")
    assert "the bucket 'no-such-bucket' does not exist" in line and s3.endpoint in line
    line = shard("s3://jobs/w", AWS_ACCESS_KEY_ID="not-a-key")
    assert line.startswith("error: workdir s3://jobs/w: ") and "AWS_ACCESS_KEY_ID" in line
    line = shard("s3://jobs/w", AWS_SECRET_ACCESS_KEY="wrong-secret")
    assert line.startswith("error: workdir s3://jobs/w: ") and "AWS_SECRET_ACCESS_KEY" in line
    line = shard("s3://jobs/w", MLFLOW_TRACKING_URI=None)  # the default: SQLite in the workdir
    assert "cannot hold MLflow's SQLite file" in line and "mlflow server --artifacts-destination s3://jobs/w/" in line
    from pipeline import fs

    fsys = s3.filesystem()
    assert [i.path for i in fsys.get_file_info(fs.pafs.FileSelector("jobs", recursive=True))] == []  # nothing left


def test_store_refusals_read_as_one_line():
    from pipeline.fs import store_error

    assert store_error(OSError("When initiating multiple part upload for key 'w/x' in bucket 'b': AWS Error "
                               "NO_SUCH_BUCKET during CreateMultipartUpload operation: ...")) \
        .startswith("s3://b: the bucket does not exist (NO_SUCH_BUCKET from ")
    assert "credentials" in store_error(OSError("AWS Error ACCESS_DENIED during HeadObject operation"), "s3://b/w")
    assert store_error(OSError("[Errno 28] No space left on device")) is None
    assert json.dumps(store_error(OSError("curlCode: 7, Couldn't connect to server"), "s3://b")).count("reach") == 1
