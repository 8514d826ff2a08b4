"""Shared fixtures: the real datasets beside the checkout (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def isbi_dir() -> Path:
    path = SHARED_DATA / "isbi2012"
    if not (path / "image").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {path}")
    return path


@pytest.fixture
def dsb_dir() -> Path:
    path = SHARED_DATA / "dsb2018" / "stage1_train"
    if not path.is_dir():
        pytest.skip(f"DSB 2018 data not found at {path}")
    return path
