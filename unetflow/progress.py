"""How every stage shows progress: a tqdm bar on a terminal, one log line every few seconds in a
log file.

A Snakemake job's stderr is its log file, which users read; a redrawn bar there becomes one
"line" per redraw (dask's bar redraws every 0.1 s). So ``Progress`` decides once, from whether
stderr is a terminal, and either drives a tqdm bar or logs ``label: done/total unit (pct %),
elapsed, remaining`` when ``every_s`` seconds have passed since its last line, plus a final line
when it is closed. Dask computations report through ``DaskProgress``, a scheduler callback that
runs in the calling thread as tasks finish (no timer thread to join per computation).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from dask.callbacks import Callback
from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
"""Seconds between progress lines in a log file (predict uses ``predict.progress_s``)."""

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether progress is watched live (a bar) rather than read later from a log file."""
    return sys.stderr.isatty()


class Progress:
    """Progress of ``total`` units of work named ``label``: a bar or periodic log lines.

    Use as a context manager (the final line, or the bar's last state, is written on exit).
    ``enabled=False`` shows nothing (tests, benchmarks).
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "it",
        initial: int = 0,
        every_s: float = LOG_EVERY_S,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, initial
        self.enabled, self.every_s = enabled, every_s
        self.note = ""
        self._initial = initial
        self._shown: int | None = None  # ``done`` of the last log line
        self._start = time.monotonic()
        self._next_line = self._start + every_s
        self._bar = (
            tqdm(total=total, initial=initial, desc=label, unit=unit, file=sys.stderr)
            if enabled and on_terminal()
            else None
        )

    def update(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.set(self.done + n)

    def set(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` of ``total`` (default: as before) units are done; ``note`` is shown after them
        (the latest loss, the workers alive)."""
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if note is not None:
            self.note = note
            if self._bar is not None:
                self._bar.set_postfix_str(note, refresh=False)
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done
        if self._bar is None and self.due():
            self._log_line()

    def due(self) -> bool:
        """Whether an update would be shown now (always on a bar): lets a caller skip gathering
        figures that are costly to count (chunk markers, workers asked over the network)."""
        return self._bar is not None or (self.enabled and time.monotonic() >= self._next_line)

    def _log_line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        percent = 100.0 * self.done / self.total if self.total else 100.0
        line = f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), {elapsed:.0f} s"
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        if 0 < self.done < self.total and rate > 0:
            line += f", ~{(self.total - self.done) / rate:.0f} s left"
        log.info("%s%s", line, f", {self.note}" if self.note else "")
        self._next_line = now + self.every_s
        self._shown = self.done

    def close(self) -> None:
        """The bar's last state, or the final log line."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._shown != self.done:  # not the line just written again
            self._log_line()
        self.enabled = False  # closed: nothing more is shown

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def track(items: Iterable[T], label: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with progress (``total`` defaults to ``len(items)``)."""
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(label, count, unit) as progress:
        for item in items:
            yield item
            progress.update()


class DaskProgress(Callback):
    """Reports the tasks done of a computation on dask's local (threaded) scheduler to a
    ``Progress``. Its hooks run in the thread that called ``compute``, as tasks finish."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self.progress.set(0, self._total(state))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self.progress.set(len(state["finished"]), self._total(state))

    @staticmethod
    def _total(state: dict[str, Any]) -> int:
        return len(state["finished"]) + sum(len(state[k]) for k in ("ready", "waiting", "running"))
