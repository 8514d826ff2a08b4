"""The error raised for input a user must fix: it always names the file and what was expected."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Input data is missing, malformed or inconsistent."""

    def __init__(self, path: str | Path | None, problem: str, expected: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path else ""
        tail = f" (expected {expected})" if expected else ""
        super().__init__(f"{where}{problem}{tail}")
