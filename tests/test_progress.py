"""Never silent: every command's first line comes within seconds, long steps say how far they are."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from faultllm.runtime import progress
from faultllm.runtime.progress import FileOnly, Progress, duration, steps

FIRST_LINE_SECONDS = 10.0


class Clock:
    """A perf_counter that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "faultllm.runtime.progress"]


def test_a_step_says_its_start_its_pace_with_an_eta_and_its_end(clock, caplog):
    caplog.set_level(logging.INFO)
    for item in steps(range(4), "fitting"):
        clock.now += 6 if item < 2 else 1  # two slow items, then two quick ones
    assert _lines(caplog) == [
        "fitting 0/4",
        "fitting 1/4 (6 s, eta 18 s)",
        "fitting 2/4 (12 s, eta 12 s)",
        "fitting 4/4 (14 s)",
    ]


def test_a_quick_unannounced_step_stays_silent_and_a_slow_one_speaks(clock, caplog):
    caplog.set_level(logging.INFO)
    for _ in steps(range(3), "scoring", announce=False):
        clock.now += 1
    assert _lines(caplog) == []
    for _ in steps(range(3), "scoring", announce=False):
        clock.now += 4
    assert _lines(caplog) == ["scoring 2/3 (8 s, eta 4 s)", "scoring 3/3 (12 s)"]


def test_a_resumed_count_takes_its_eta_from_this_sessions_pace(clock, caplog):
    caplog.set_level(logging.INFO)
    counter = Progress("training", 100, bar=False, start=40)
    clock.now += 10
    counter.update(50)
    assert _lines(caplog) == ["training 40/100", "training 50/100 (10 s, eta 50 s)"]


def test_under_a_bar_the_lines_go_to_the_log_file_only(clock, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_bars", {"on": True})
    caplog.set_level(logging.INFO)
    for _ in steps(range(2), "baselines"):
        clock.now += 6
    records = [r for r in caplog.records if r.name == "faultllm.runtime.progress"]
    assert [r.getMessage() for r in records] == [
        "baselines 0/2",
        "baselines 1/2 (6 s, eta 6 s)",
        "baselines 2/2 (12 s)",
    ]
    assert not any(FileOnly().filter(r) for r in records)  # the console handler drops them; the file keeps them
    assert FileOnly().filter(logging.LogRecord("faultllm", logging.INFO, "", 0, "epoch 1/2", None, None))


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (4.4, 65, 7380)] == ["4 s", "1 min 05 s", "2 h 03 min"]


def _first_line(args: list[str], cwd) -> tuple[float, str]:
    """Seconds until the command's first line of output (stdout or stderr), and the line; the process is
    killed then."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "faultllm", *args, "progress=false"], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(child.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=60)
        return time.perf_counter() - started, line
    finally:
        child.kill()
        child.wait()


COMMANDS = {
    "train": ["train", "model=tiny", "trainer.epochs=1"],
    "baselines": ["baselines", "baselines.models=[lr]"],
    "hpo": ["hpo", "model=tiny", "hpo.n_trials=1"],
    "evaluate": ["evaluate", "run_dir={run}"],
    "predict": ["predict", "run_dir={run}", "input={csv}"],
    "explain": ["explain", "run_dir={run}"],
    "report": ["report", "{run}", "--out", "{out}/report"],
}


READS_A_RUN = ("evaluate", "predict", "explain", "report")


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.slow) if c in READS_A_RUN else c for c in COMMANDS]
)
def test_every_command_prints_its_first_line_within_seconds(command, tmp_path, request):
    """Before torch and transformers are imported (they take seconds): the command, its run directory.
    evaluate/predict/explain/report read a finished train run (a missing one is refused before any line)."""
    run = request.getfixturevalue("trained_run")[0] if command in READS_A_RUN else tmp_path / "run"
    csv = request.getfixturevalue("easy_csv") if command == "predict" else None
    args = [arg.format(run=run, out=tmp_path, csv=csv) for arg in COMMANDS[command]]
    if "{run}" not in " ".join(COMMANDS[command]):
        args.append(f"hydra.run.dir={run}")
    seconds, line = _first_line(args, tmp_path)
    assert line.startswith(f"faultllm {command} starting in "), line
    assert seconds < FIRST_LINE_SECONDS
