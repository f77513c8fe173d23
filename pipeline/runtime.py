"""Joining Ray: the cluster when there is one, else a local instance."""
from __future__ import annotations

import os

from pipeline.config import Settings


# Whether this process started the Ray instance it uses (None: it did not call init_ray, as in a
# Tune trial). An instance started here never grows; a joined cluster may (an autoscaler).
_started_local: bool | None = None


def init_ray(settings: Settings) -> None:
    """`ray.address` or RAY_ADDRESS (set by `ray job submit`) joins a cluster; else start locally.

    Inside a submitted job RAY_ADDRESS names that job's cluster, so a job never starts a second
    local instance. Without either, a new local instance starts even when a `ray start` instance
    runs on the machine: plain ray.init() would join that one (the last `ray start`'s address,
    kept in /tmp/ray/ray_current_cluster), with its CPUs and its other work, or fail on the
    stale address a crashed head leaves. `ray.address: auto` joins it when that is what you want."""
    global _started_local
    import ray

    if ray.is_initialized():
        return
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if address == "local":  # Ray's own word for "start a new instance"
        address = None
    # Workers' and actors' output stays in the session's log files (/tmp/ray/session_*/logs):
    # streamed here it buries the stages' own lines, and a failure's one-line reason, under
    # tracebacks and Ray Train's internal lines. An unexpected failure still shows its worker
    # traceback, in the error Ray raises in this process.
    verbose = bool(os.environ.get("PIPELINE_VERBOSE"))
    kwargs: dict = {"log_to_driver": verbose, "configure_logging": True,
                    "logging_level": "INFO" if verbose else "WARNING"}
    if address:
        context = ray.init(address=address, **kwargs)
        _started_local = False
        print(f"ray: joined the cluster at {address} ({_resources(ray)}){_dashboard(context)}", flush=True)
    else:
        # The dashboard stays on: Ray Train and Tune query the State API through it; without it
        # a Tune search whose scheduler stops trials leaks placement groups and hangs (ray #54305).
        # A local instance has no node to lose: Ray Train's preemption watcher (one more process
        # per fit, ~5 s of every stage's start and stop on 2 cores) is off unless asked for.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Ray turns token authentication on for a new local instance (good) and says so in a
        # WARNING line at every stage's start ("Set RAY_AUTH_MODE=disabled to opt out"): kept out
        # unless --verbose. (Setting RAY_AUTH_MODE=token here instead is too late: this process's
        # Ray config is read at import, and its GCS client then refuses the token-mode GCS.)
        if not verbose:
            import logging

            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
                lambda record: "Token authentication is enabled" not in record.getMessage())
        context = start_local(settings.ray.num_cpus, **kwargs)
        _started_local = True
        # Everything in this process that looks for "the" local instance (Ray Train's driver
        # side, the State API) finds this one: with another local instance on the machine they
        # found two and logged a "Found multiple active Ray instances" traceback each time.
        os.environ["RAY_ADDRESS"] = context.address_info["gcs_address"]
        print(f"ray: started a local instance ({_resources(ray)}){_dashboard(context)}", flush=True)
    ctx = ray.data.DataContext.get_current()
    # The stages show their own progress (pipeline.progress); Ray Data's bars and its INFO lines
    # ("Starting execution of Dataset ...", a block of resource figures every few seconds when
    # the output is not a terminal) come back with --verbose. Its log file keeps them all.
    ctx.enable_progress_bars = verbose
    if not verbose:
        import logging

        for handler in logging.getLogger("ray.data").handlers:
            if type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.WARNING)
        # its one notice that the bars are off (they are ours now)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # and its warning that the cluster has no free CPU, which it gives whenever the codes
        # actors hold every CPU for a moment (they do, by design, and the job goes on)
        logging.getLogger("ray.data.dataset").addFilter(
            lambda record: "does not have any available CPUs" not in record.getMessage())


# What ray.init raises when the node it started did not come up in time. On a loaded machine its
# raylet gives up on the dashboard agent after a fixed 15 s (the agent, a Python process, took
# longer to import) and exits; ray.init then waits 30 s for it and raises this.
NODE_TIMED_OUT = "timed out during startup"
START_TRIES = 3


def start_local(num_cpus: int | None, **kwargs):
    """`ray.init` of a local instance whose own actors ask *its* State API; a start that timed out
    on a loaded machine is cleaned up and tried again, up to START_TRIES times.

    Ray's actors (Train's placement-group cleaner polls the State API every second) look for "the"
    local instance unless told which: beside another instance on the machine they found two, could
    not ask either, and a Tune search whose scheduler stops trials never got their resources back
    (ray #54305). The dashboard's address in the environment the instance starts with reaches every
    worker it spawns, so they ask this one. It stays set in this process too."""
    import socket

    import ray

    from pipeline.errors import UserError

    for attempt in range(1, START_TRIES + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        before = _children()
        try:
            # "local": a new instance, never the one a `ray start` on this machine left its address for
            return ray.init(address="local", num_cpus=num_cpus, dashboard_port=port, **kwargs)
        except Exception as e:  # noqa: BLE001 - only a start that timed out is tried again
            if NODE_TIMED_OUT not in str(e):
                raise
            ray.shutdown()
            _stop(_children() - before)  # the half-started node's GCS, dashboard and monitors
            if attempt == START_TRIES:
                raise UserError(f"ray: a local instance did not start in {START_TRIES} tries (its raylet gave up "
                                f"waiting for its agents: a machine too loaded?); see "
                                f"{_session_logs()}/raylet.err") from None
            print(f"ray: the local instance did not start in time (a loaded machine?); starting another "
                  f"({attempt + 1}/{START_TRIES})", flush=True)


def _children() -> set[int]:
    """This process's child processes (Linux; elsewhere none are found, and a failed start's
    processes stay until this process exits, as Ray's reaper then stops them)."""
    me, found = str(os.getpid()), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # the field after the state is the parent's pid
            found.add(int(entry))
    return found


def _stop(pids: set[int]) -> None:
    """SIGKILL these children and reap them (their own children die with them: Ray starts its
    processes sharing their parent's fate)."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _session_logs() -> str:
    return os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "session_latest", "logs")


def _dashboard(context) -> str:
    """`; dashboard http://...` when the instance serves Ray's dashboard (workers, resources, logs)."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return ""
    return f"; dashboard {url if '://' in url else 'http://' + url}"


def use_gpu(settings: Settings) -> bool:
    """`ray.use_gpu`, else whether the cluster has a GPU (Ray must be initialised)."""
    import ray

    if settings.ray.use_gpu is not None:
        return settings.ray.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def check_resources(what: str, need: dict[str, tuple[float, str]]) -> None:
    """Ray waits without a word for resources that its instance does not have: a stage asking
    more CPUs or GPUs than a local instance holds would hang. There that is a one-line error
    (exit 2); on a joined cluster, which an autoscaler may grow, a line saying what it waits for.
    `need`: {resource: (amount, the settings that set it)}."""
    import ray

    have = ray.cluster_resources()
    short = {k: need[k] for k in need if need[k][0] > have.get(k, 0) + 1e-9}
    if not short:
        return
    text = ", ".join(f"{amount:g} {k}" for k, (amount, _) in short.items())
    has = ", ".join(f"{have.get(k, 0):g} {k}" for k in short)
    knobs = " or ".join(dict.fromkeys(knob for _, knob in short.values()))
    if _started_local:
        from pipeline.errors import UserError

        more = ", or raise ray.num_cpus (the local instance's logical CPUs)" if "CPU" in short else ""
        raise UserError(f"{what} needs {text} and the local Ray instance has {has}: lower {knobs}{more}")
    print(f"{what}: needs {text} and the cluster has {has} now; waiting for it to grow (an autoscaler adds "
          f"nodes; without one, lower {knobs})", flush=True)


def _resources(ray) -> str:
    total = ray.cluster_resources()
    return ", ".join(f"{total.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20) -> bool:
    """Let glibc's malloc keep freed tensor memory for reuse instead of handing it back to the OS.

    With glibc's defaults a CPU training step faults its activations' pages in again on every
    step: blocks over 128 KiB get their own mmap, unmapped on free, and a thread's arena (Ray
    Train runs the loop in a thread) deletes its 64 MiB heaps as soon as they are empty. On the
    demo that is about 9000 minor faults and 14 ms of system time per step, 20 % of the
    throughput (bench/stage1.py). glibc raises the mmap threshold itself only after the process
    frees a large mapped block, and never stops deleting arena heaps.

    This serves blocks up to `mmap_threshold` from the heap, trims the heap only past twice that
    (as glibc's own adjustment would), and pads every heap by as much, which keeps a thread
    arena's heaps alive. The cost is up to that much freed memory held per arena. Process-wide,
    from any thread; call it first thing in a training worker or actor. Returns False where malloc
    is not glibc's (macOS, musl): nothing to do there."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {_M_MMAP_THRESHOLD: mmap_threshold, _M_TRIM_THRESHOLD: 2 * mmap_threshold,
                _M_TOP_PAD: 2 * mmap_threshold}
    return all([bool(mallopt(param, value)) for param, value in settings.items()])  # a list: set every one
