"""Progress a person can read: a bar on a terminal, a line every few seconds elsewhere.

Every stage shows how far it has got: shards written, training steps (with the loss and the last
validation metric), samples encoded, sampling positions. On a terminal that is a tqdm bar with
done/total, rate and time left. When the output is not a terminal (CI, `ray job submit` logs, a
file), the same facts are printed as one line at most every `PIPELINE_PROGRESS_SECONDS` seconds
(default 15), and once at the end.

Progress is off until a job turns it on (`enable()`, called by `pipeline.cli.run_job`), so that
library calls and tests print nothing of it.

A training stage runs on Ray Train workers whose output does not reach the driver: rank 0 writes
its step, loss and last validation metrics to `<run folder>/progress.json` (`StepFile`), and the
driver shows them (`watch`).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from pipeline import fs
from pipeline.fs import write_atomic

_enabled = False


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def interval() -> float:
    try:
        return max(0.5, float(os.environ.get("PIPELINE_PROGRESS_SECONDS", "15")))
    except ValueError:
        return 15.0


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """done/total of one stage's unit of work. `update(done, **facts)` sets the count (absolute,
    so a resumed run starts where it is) and the facts shown beside it (loss=..., val_psnr=...)."""

    def __init__(self, label: str, total: int | None, unit: str, initial: int = 0, stream=None,
                 leave: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.done, self.facts = initial, {}
        self.stream = stream or sys.stdout
        self.active = _enabled
        self._start_done, self._start = initial, time.monotonic()
        self._last_line = 0.0
        self._rate: float | None = None  # smoothed over the lines so far (the recent pace)
        self._mark = (self._start, initial)  # (time, done) of the last line
        self._bar = None
        if self.active and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit=f" {unit}", file=self.stream,
                             dynamic_ncols=True, mininterval=0.5, leave=leave,
                             # "0.15 shards/s", not tqdm's "6.49s/ shards" for a slow unit
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                        "{rate_noinv_fmt}{postfix}]" if total else None)

    def update(self, done: int | None = None, advance: int = 0, **facts) -> None:
        if not self.active:
            return
        previous = self.done
        self.done = (done if done is not None else self.done) + advance
        self.facts.update({k: v for k, v in facts.items() if v is not None})
        if self._bar is not None:
            if self.facts:
                self._bar.set_postfix_str(self._fitted(self._facts()), refresh=False)
            self._bar.update(self.done - previous)
            return
        now = time.monotonic()
        # the first line once there is something to say (work done, or an interval gone by); later
        # ones only when the count moved (a stage winding down repeats nothing)
        started = self.done > self._start_done or now - self._start >= interval()
        moved = self.done != self._mark[1] or not self._last_line
        if now - self._last_line >= interval() and now - self._start >= min(interval(), 2.0) and started and moved:
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The non-terminal line: `label: 120/600 steps (20%), 3.1 steps/s, 2:35 left, loss 0.12`."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self._pace(now)
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s per {self.unit.rstrip('s')}")
            if self.total and self.done < self.total:
                parts.append(f"{_clock((self.total - self.done) / rate)} left")
        else:
            parts.append(f"{_clock(elapsed)} so far")
        if self.facts:
            parts.append(self._facts())
        return f"{self.label}: " + ", ".join(parts)

    def _pace(self, now: float) -> float:
        """Units per second: since the start for the first line, then the pace since the last
        line smoothed with the earlier one (time left follows a stage that slows or speeds up)."""
        then, done_then = self._mark
        recent = (self.done - done_then) / max(now - then, 1e-9)
        return recent if self._rate is None else 0.5 * recent + 0.5 * self._rate

    def _facts(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.facts.items())

    def _fitted(self, facts: str) -> str:
        """The facts cut to what the terminal's width leaves beside the label, the counts and a
        bar of 10: a line longer than the terminal wraps, and every redraw then starts a new line."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return facts
        room = columns - len(self.label) - len(self.unit) - 62  # "100%|" bar "| n/total [0:00<0:00, rate, "
        return facts if len(facts) <= room else facts[:max(room - 1, 0)] + "…"

    def _line(self, now: float) -> None:
        self._last_line = now
        print(self.line(now), file=self.stream, flush=True)
        self._rate, self._mark = self._pace(now), (now, self.done)

    def close(self) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        elif self._last_line and self.done != self._mark[1]:  # work that ended before its first
            self._line(time.monotonic())  # line stays silent; a line already saying this is enough
        self.active = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    """A terminal a bar can be drawn on: a tty of known width (a pty nobody sized, as `script`
    or some CI runners make, reports 0 columns and tqdm would draw an empty bar: lines there)."""
    try:
        return (stream.isatty() and os.environ.get("TERM") != "dumb"
                and os.get_terminal_size(stream.fileno()).columns > 0)
    except (AttributeError, ValueError, OSError):
        return False


def track(items: Iterable, label: str, total: int | None = None, unit: str = "items") -> Iterator:
    """Iterate `items`, showing progress when it is on (else just the items)."""
    if not _enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(label, total, unit, leave=False) as bar:
        for item in items:
            yield item
            bar.update(advance=1)


@contextmanager
def _every_half_second(show):
    """Call `show()` every half second in a thread while the body runs, and once after it."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            show()

    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        show()


@contextmanager
def polled(count, label: str, total: int | None, unit: str):
    """While the body runs (a Ray job whose results land in files), show `count()`: the work
    done so far as a number, or (number, facts) to show beside it; read every half second."""
    if not _enabled:
        yield
        return
    bar = Progress(label, total, unit)

    def show() -> None:
        try:
            got = count()
        except Exception:  # noqa: BLE001 - a file being written: read it next time
            return
        done, facts = got if isinstance(got, tuple) else (got, {})
        bar.update(int(done), **facts)

    with bar, _every_half_second(show):
        yield


# ---- training: rank 0 writes, the driver shows -------------------------------------------------

PROGRESS_FILE = "progress.json"


class StepFile:
    """Rank 0's side: the step, the loss and the last validation metrics, written at most every
    `every` seconds (default 1 s, 5 s on an object store: a request each), atomically: the driver
    never reads half a file. Best effort: a run folder that this worker cannot write (a local
    workdir on another node without shared storage) just shows no progress."""

    def __init__(self, path: str | None, every: float | None = None):
        self.path, self._last = path, 0.0
        self.every = every if every is not None else 5.0 if path and fs.is_remote(path) else 1.0
        self.state: dict = {}

    def due(self) -> bool:
        """Whether a write now would reach the file (callers skip reading the loss otherwise)."""
        return bool(self.path) and time.monotonic() - self._last >= self.every

    def write(self, step: int, force: bool = False, **values) -> None:
        if not self.path:
            return
        self.state.update({k: v for k, v in values.items() if v is not None}, step=step)
        if not force and not self.due():
            return
        self._last = time.monotonic()
        try:
            fsys, where = fs.filesystem(self.path)
            write_atomic(where, json.dumps(self.state).encode(), fsys)
        except OSError:
            self.path = None


def read_steps(path: str) -> dict | None:
    try:
        return fs.read_json(path)
    except (OSError, ValueError):
        return None


@contextmanager
def watch(path: str, label: str, total: int, unit: str = "steps", metrics: tuple[str, ...] = ()):
    """While the body runs (a Ray Train fit), show the steps rank 0 writes to `path`, with the
    loss and the validation metrics named in `metrics`."""
    if not _enabled:
        yield
        return
    try:  # an earlier attempt's file: the resumed run writes its own
        fsys, where = fs.filesystem(path)
        fsys.delete_file(where)
    except OSError:
        pass
    bar: Progress | None = None
    remote, last = fs.is_remote(path), [0.0]

    def show() -> None:
        nonlocal bar
        if remote and time.monotonic() - last[0] < 2.0:  # on an object store: a request every 2 s
            return
        last[0] = time.monotonic()
        state = read_steps(path)
        if not state:
            return
        if bar is None:  # from the step it starts at (a resumed run)
            bar = Progress(label, total, unit, initial=int(state.get("step", 0)))
        facts = {k: state[k] for k in ("loss", *metrics) if k in state}
        bar.update(int(state.get("step", 0)), **facts)

    try:
        with _every_half_second(show):
            yield
    finally:
        if bar is not None:
            bar.close()
