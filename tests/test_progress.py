"""One progress path: a bar on a terminal, periodic lines and a final one in a log file."""

from __future__ import annotations

import logging

import dask
import pytest

import unetflow.progress as progress_module
from unetflow.progress import DaskProgress, Progress, track


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "unetflow.progress"]


@pytest.fixture(autouse=True)
def _log_file(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """stderr is a log file (as in a Snakemake job), and the progress logger's lines are captured."""
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="unetflow.progress")


def test_a_log_file_gets_one_line_per_interval_and_a_final_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    with Progress("train", 10, "steps", every_s=30) as shown:
        for step in range(1, 11):
            clock[0] += 10  # a step every 10 s: a line at 30, 60 and 90 s, then the final one
            shown.set(step, note=f"loss {1 / step:.2f}")
    assert _lines(caplog) == [
        "train: 3/10 steps (30%), 30 s, ~70 s left, loss 0.33",
        "train: 6/10 steps (60%), 60 s, ~40 s left, loss 0.17",
        "train: 9/10 steps (90%), 90 s, ~10 s left, loss 0.11",
        "train: 10/10 steps (100%), 100 s, loss 0.10",
    ]


def test_disabled_progress_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with Progress("train", 3, "steps", every_s=1e-9, enabled=False) as shown:
        shown.update(3)
    assert _lines(caplog) == []


def test_a_terminal_gets_a_bar_and_no_log_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    assert list(track(range(5), "targets", "images")) == list(range(5))
    assert _lines(caplog) == []
    bar = capsys.readouterr().err
    assert "targets: 100%" in bar and "5/5" in bar


def test_dask_computation_reports_its_tasks_from_the_calling_thread(caplog: pytest.LogCaptureFixture) -> None:
    parts = [dask.delayed(lambda i: i * i)(i) for i in range(6)]
    total = dask.delayed(sum)(parts)
    with Progress("predict giant", 0, "tasks", every_s=3600) as shown, DaskProgress(shown):
        (result,) = dask.compute(total, scheduler="threads", num_workers=2)
    assert result == sum(i * i for i in range(6))
    assert _lines(caplog)[-1].startswith("predict giant: 7/7 tasks (100%)")  # 6 squares + their sum
    assert len(_lines(caplog)) == 1  # the interval never passed: only the final line
