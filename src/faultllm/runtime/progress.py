"""How far a long step has got: a tqdm bar on a terminal, a line every few seconds elsewhere, always in the log.

Every line goes through Python logging, so it lands in the run's faultllm.log with a time stamp. Where bars
are drawn (`use_bars(True)`: `progress` is on, by default when stdout is a terminal), the "k/n" lines go to
faultllm.log only (`FileOnly` on the console handler): the bar shows them on the terminal already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("faultllm.runtime.progress")
Item = TypeVar("Item")

EVERY = 5.0  # seconds between two lines of one step (the last item always gets its line)
_bars = {"on": False}  # set once per process by the CLI (`use_bars`)


def use_bars(on: bool) -> None:
    """Draw tqdm bars on the console (a terminal) and keep the k/n lines for faultllm.log alone."""
    _bars["on"] = on


def bars_on() -> bool:
    return _bars["on"]


class FileOnly(logging.Filter):
    """On the console handler: drops the lines a bar on the terminal already shows (faultllm.log keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "under_bar", False)


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """k of n items done of one step, with the time taken and an ETA from the pace so far.

    `bar`: draw a tqdm bar when bars are on (False where another library draws its own, e.g. the Trainer).
    `announce`: log "what 0/n" at once; without it a step says nothing until it has taken `every` seconds
    (scoring, called for every epoch: quick calls stay silent).
    """

    def __init__(
        self, what: str, total: int, bar: bool = True, announce: bool = True, start: int = 0, every: float = EVERY
    ) -> None:
        self.what, self.total, self.every, self.first = what, total, every, start
        self.done, self.started = start, time.perf_counter()
        self.last = self.started  # when the last line was written
        self.bar = None
        if bar and bars_on():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=what, dynamic_ncols=True)
        self.said = False
        if announce:
            self._line()

    def update(self, done: int) -> None:
        """`done` items are finished now (a count, not an increment)."""
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        now = time.perf_counter()
        if (now - self.last >= self.every and done < self.total) or (done >= self.total and self.said):
            self._line()

    def advance(self, items: int = 1) -> None:
        self.update(self.done + items)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.started
        line = f"{self.what} {self.done}/{self.total}"
        if self.done > self.first:
            pace = elapsed / (self.done - self.first)
            left = f", eta {duration(pace * (self.total - self.done))}" if self.done < self.total else ""
            line += f" ({duration(elapsed)}{left})"
        log.info(line, extra={"under_bar": bars_on()})
        self.last, self.said = time.perf_counter(), True


def steps(
    items: Iterable[Item], what: str, total: int | None = None, bar: bool = True, announce: bool = True
) -> Iterator[Item]:
    """Yield the items, reporting how many are done (`Progress`); `total` for an iterable without a length."""
    items = items if total is not None or hasattr(items, "__len__") else list(items)
    progress = Progress(what, len(items) if total is None else total, bar, announce)  # type: ignore[arg-type]
    try:
        for item in items:
            yield item
            progress.advance()
    finally:
        progress.close()
