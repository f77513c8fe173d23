"""One writer per stage output: a job holds `<output>.lock` (its pid and host) while it writes,
and a second job that would write the same output refuses in one line naming the first. A lock
left by a process that is gone (killed, its machine restarted) is taken over, and said so."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

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
    """Hold the lock of `output` (a local path; pyarrow URIs are not locked) around a block."""
    if "://" in output:
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
