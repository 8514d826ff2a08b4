"""tuned.json, the tune stage's output, as its readers (evaluate, predict) take it.

Apart from ``unetflow.tune`` so that reading the choice does not import the search (and its
scoring and plotting dependencies) into the predict stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetflow.io.errors import InputError

#: what every entry (a grid row, ``best``, ``chunked``, ``defaults``) holds besides its score
ENTRY_KEYS = ("mode", "seed_threshold", "foreground_threshold", "h_distance", "min_size")


def load_tuned(path: str | Path) -> dict[str, Any]:
    """A tuned.json written by ``unetflow tune``, checked for the entries its readers use:
    ``best`` (evaluate) and ``chunked`` (the best chunk-exact entry, for predict)."""
    path = Path(path)
    expected = "a tuned.json written by `unetflow tune`"
    try:
        tuned = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the tuned post-processing ({exc})", expected) from exc
    for entry in ("best", "chunked"):
        missing = [k for k in ENTRY_KEYS if not isinstance(tuned.get(entry), dict) or k not in tuned[entry]]
        if missing:
            raise InputError(path, f"entry {entry!r} lacks {missing}", expected)
    return tuned
