"""Progress as a person reads it when the output is not a terminal: one line at most every few
seconds with done/total, rate, time left and the facts beside it; nothing when progress is off."""
from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest

from pipeline import progress


@pytest.fixture
def on(monkeypatch):
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "0.5")
    progress.enable()
    yield
    progress.enable(False)


def test_off_by_default_it_prints_nothing_and_passes_items_through():
    out = io.StringIO()
    assert not progress.enabled()
    bar = progress.Progress("stage1 t", 10, "steps", stream=out)
    for i in range(10):
        bar.update(i + 1, loss=0.5)
    bar.close()
    assert out.getvalue() == ""
    assert list(progress.track(range(5), "sampling")) == [0, 1, 2, 3, 4]


def test_the_line_has_done_total_rate_time_left_and_facts(on):
    bar = progress.Progress("stage1 demo", 600, "steps", stream=io.StringIO())
    _started_ago(bar, 40.0)
    bar.update(120, loss=0.1234567, val_psnr=24.1)
    line = bar.stream.getvalue().strip()
    assert line.startswith("stage1 demo: 120/600 steps (20%), 3 steps/s, 2:40 left"), line
    assert line.endswith("loss 0.1235, val_psnr 24.1"), line
    slow = progress.Progress("sample", 10, "windows", stream=io.StringIO())
    _started_ago(slow, 20.0)
    slow.update(2)
    assert "10 s per window" in slow.stream.getvalue() and "1:20 left" in slow.stream.getvalue()


def _started_ago(bar, seconds: float) -> None:
    bar._start -= seconds
    bar._mark = (bar._start, bar._mark[1])


def test_time_left_follows_a_stage_that_slows_down(on):
    out = io.StringIO()
    bar = progress.Progress("stage1 t", 1000, "steps", stream=out)
    _started_ago(bar, 10.0)
    bar.update(500)  # 50 steps/s for 10 s: a line
    when, _ = bar._mark
    bar._mark, bar._last_line = (when - 10.0, 500), bar._last_line - 10.0  # that line was 10 s ago
    bar.update(600)  # 10 steps/s since
    first, last = out.getvalue().splitlines()
    assert "50 steps/s, 0:10 left" in first, first
    assert "30 steps/s, 0:13 left" in last, last  # (10 + 50) / 2 for the 400 steps left


def test_lines_come_at_most_every_interval_and_once_at_the_end(on):
    out = io.StringIO()
    with progress.Progress("codes t train", 100, "samples", stream=out) as bar:
        start = time.monotonic()
        while time.monotonic() - start < 1.6:
            bar.update(advance=1)
            time.sleep(0.01)
    lines = out.getvalue().splitlines()
    # a line each 0.5 s of the 1.6 s (never one per update), then the final count
    assert 2 <= len(lines) <= 5, lines
    assert all(re.match(r"codes t train: \d+/100 samples", line) for line in lines)
    assert lines[-1].startswith(f"codes t train: {bar.done}/100 samples")


def test_work_shorter_than_one_interval_prints_nothing(on, monkeypatch):
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "5")
    out = io.StringIO()
    with progress.Progress("sampling", 50, "positions", stream=out) as bar:
        for _ in range(50):
            bar.update(advance=1)
    assert out.getvalue() == ""


def test_the_driver_shows_what_rank_0_writes(on, tmp_path, capsys):
    path = str(tmp_path / progress.PROGRESS_FILE)
    (tmp_path / progress.PROGRESS_FILE).write_text(json.dumps({"step": 99}))  # an earlier attempt's
    writer = progress.StepFile(path, every=0.0)

    def train():
        for step in range(1, 41):
            writer.write(step, loss=1.0 / step, **({"val_psnr": 20.0 + step / 10} if step % 20 == 0 else {}))
            time.sleep(0.04)

    with progress.watch(path, "stage1 t", 40, metrics=("val_psnr",)):
        thread = threading.Thread(target=train)
        thread.start()
        thread.join()
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[-1].startswith("stage1 t: 40/40 steps (100%)"), lines
    assert "loss 0.025" in lines[-1] and "val_psnr 24" in lines[-1], lines
    assert not any("99/40" in line for line in lines)


def test_a_step_file_that_cannot_be_written_is_given_up_quietly(tmp_path):
    writer = progress.StepFile(str(tmp_path / "missing" / progress.PROGRESS_FILE), every=0.0)
    writer.write(1, loss=0.5)
    assert writer.path is None and not writer.due()


def test_the_end_is_said_once(on):
    out = io.StringIO()
    bar = progress.Progress("codes t val", 200, "samples", stream=out)
    _started_ago(bar, 5.0)
    bar.update(200)  # the last count arrives as a line...
    bar.close()  # ...and closing adds none
    assert len(out.getvalue().splitlines()) == 1, out.getvalue()


def test_a_count_that_stands_still_is_not_said_again(on):
    out = io.StringIO()
    bar = progress.Progress("stage1 t", 60, "steps", stream=out)
    _started_ago(bar, 5.0)
    bar.update(60)  # the last step, said
    bar._last_line -= 5.0  # an interval later the workers are still shutting down
    bar.update(60)
    bar.close()
    assert len(out.getvalue().splitlines()) == 1, out.getvalue()


def _pty(columns: int):
    """(a stream on a pseudo-terminal `columns` wide, a function that reads what reached it)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    stream = os.fdopen(slave, "w")

    def read() -> str:
        stream.flush()
        os.set_blocking(master, False)
        chunks = []
        while True:
            try:
                chunks.append(os.read(master, 65536).decode(errors="replace"))
            except (BlockingIOError, OSError):
                return "".join(chunks)

    return stream, read


def test_a_terminal_gets_a_bar_and_an_unsized_one_gets_lines(on):
    stream, read = _pty(100)  # a person's terminal: a bar redrawn in place
    with progress.Progress("stage1 demo", 50, "steps", stream=stream) as bar:
        bar.update(50, loss=0.25)
    shown = read()
    stream.close()
    assert re.search(r"stage1 demo: 100%\|[^\n]*\| 50/50 .*loss 0\.25", shown), shown
    assert "\r" in shown  # redrawn on the same line
    # a pty nobody sized (`script`, some CI runners): 0 columns, where a bar draws as nothing
    stream, read = _pty(0)
    with progress.Progress("stage1 demo", 50, "steps", stream=stream) as bar:
        _started_ago(bar, 10.0)
        bar.update(25, loss=0.25)
    shown = read()
    stream.close()
    assert shown.strip().splitlines()[0].startswith("stage1 demo: 25/50 steps (50%)"), shown


def test_a_bar_with_many_facts_stays_on_one_line_of_the_terminal(on):
    stream, read = _pty(100)
    with progress.Progress("stage1 demo", 1500, "steps", stream=stream) as bar:
        for step in (250, 500):
            bar.update(step, loss=0.008611, val_mse=0.007302, val_psnr=21.37, perplexity=93.2, codebook_usage=0.98)
    drawn = [line for line in re.split(r"[\r\n]", read()) if line.strip()]
    stream.close()
    assert drawn and all(len(line) <= 100 for line in drawn), [len(line) for line in drawn]
    assert re.search(r"\|[█▏▎▍▌▋▊▉ ]{10,}\|", drawn[-1]) and "loss 0.008611" in drawn[-1], drawn[-1]
