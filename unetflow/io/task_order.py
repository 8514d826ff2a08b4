"""dask tasks that wait for other tasks without taking their results.

The chunk steps of a prediction are ordered by what they read (a pyramid chunk waits for the
chunks below it), not by values passed between them. ``dask.graph_manipulation.bind`` expresses
that by cloning the graphs it binds, about a millisecond per task: most of the time of building
a small image's graph, and seconds of a slide's before its first chunk starts. Here the tasks to
wait for are extra arguments the task ignores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import dask
from dask.delayed import Delayed


def _run_after(fn: Callable[..., Any], args: tuple[Any, ...], *_done: Any) -> Any:
    return fn(*args)


def task_after(fn: Callable[..., Any], *args: Any, after: Iterable[Delayed] = ()) -> Delayed:
    """``fn(*args)`` as a task (named after ``fn``) that starts once every task of ``after`` is done."""
    name = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
    return dask.delayed(_run_after, pure=False)(fn, args, *after, dask_key_name=name)
