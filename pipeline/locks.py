"""One writer per stage output: a job holds `<output>.lock` (its pid and host) while it writes,
and a second job that would write the same output refuses in one line naming the first. A lock
left by a process that is gone (killed, its machine restarted) is taken over, and said so.

On an object store (an s3:// workdir) there is neither O_EXCL nor a pid another machine could
check: the lock is an object holding its owner and a lease that the holder renews every
LEASE_S / 4 seconds from a thread. A job takes it when there is none or its lease has run out,
then reads it back after SETTLE_S (two jobs that wrote it at once: the one whose write landed
last holds it, the other sees so and refuses); a job killed without releasing it holds it at most
LEASE_S more, or none when the next job runs on the same machine and sees its pid is gone."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from pipeline.errors import UserError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(lock: str) -> dict | None:
    try:
        with open(lock) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written this instant, or damaged


@contextlib.contextmanager
def exclusive(output: str, what: str):
    """Hold the lock of `output` (a local path or an object-store URI) around a block."""
    from pipeline import fs

    if fs.is_remote(output):
        with _leased(output, what):
            yield
        return
    lock = f"{output.rstrip('/')}.lock"
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is None:
                continue  # released meanwhile
            if not holder:
                time.sleep(0.2)
                holder = _holder(lock) or {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                print(f"{what}: taking over {lock} from pid {pid} on {host}, which is gone", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            where = f"pid {pid} on {host} since {holder.get('since', '?')}" if holder else "another job"
            gone = "" if host == me["host"] else f" (if that job is gone, delete {lock})"
            raise UserError(f"{what}: {output} is being written by {where}{gone}")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{what}: could not take the lock {lock}")
    try:
        yield
    finally:
        if (_holder(lock) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


LEASE_S = 120.0  # how long a lock on an object store outlives a holder that stopped renewing it
SETTLE_S = 2.0  # between writing the lock and reading it back


@contextlib.contextmanager
def _leased(output: str, what: str):
    from pipeline import fs

    lock = f"{output.rstrip('/')}.lock"
    owner = uuid.uuid4().hex
    me = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def refuse(holder: dict) -> None:
        left = max(0, int(holder.get("expires", 0) - time.time()))
        raise UserError(f"{what}: {output} is being written by pid {holder.get('pid')} on {holder.get('host')} since "
                        f"{holder.get('since', '?')} (its lease on {lock} runs {left} s more unless renewed)")

    holder = fs.read_json(lock)
    pid = (holder or {}).get("pid")
    gone = bool(holder) and holder.get("host") == me["host"] and isinstance(pid, int) and not _alive(pid)
    if holder and holder.get("expires", 0) > time.time() and not gone:
        refuse(holder)
    if holder:
        why = "which is gone" if gone else "whose lease ran out"
        print(f"{what}: taking over {lock} from pid {pid} on {holder.get('host')}, {why}", flush=True)
    fs.write_json_atomic(lock, {**me, "expires": time.time() + LEASE_S})
    time.sleep(SETTLE_S)
    holder = fs.read_json(lock) or {}
    if holder.get("owner") != owner:
        refuse(holder)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                if (fs.read_json(lock) or {}).get("owner") not in (owner, None):
                    print(f"{what}: warning: {lock} was taken by another job while this one held it", flush=True)
                    return
                fs.write_json_atomic(lock, {**me, "expires": time.time() + LEASE_S})
            except OSError as e:  # the store is unreachable for a moment: try again at the next turn
                print(f"{what}: could not renew {lock}: {e}", flush=True)

    renewer = threading.Thread(target=renew, name="lock-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        with contextlib.suppress(OSError):
            if (fs.read_json(lock) or {}).get("owner") == owner:
                lfs, where = fs.filesystem(lock)
                lfs.delete_file(where)
