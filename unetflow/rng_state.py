"""The states of every random generator a training run draws from, as one checkpointable dict.

Exact resume needs all of them: Python's and NumPy's global generators, torch's CPU (and CUDA)
generator, and the run's own generators (tile sampler, augmenter). The NumPy state is stored
with plain Python values so that ``torch.load(weights_only=True)`` can read it back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (each run's own are seeded by it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture(generators: dict[str, torch.Generator], cuda: bool) -> dict[str, Any]:
    """The global generators' states and those of ``generators`` (by name)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"]}
    state = {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        **{name: generator.get_state() for name, generator in generators.items()},
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what ``capture`` returned, into the global generators and ``generators``."""
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32), "pos": numpy_state["state"]["pos"]
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    for name, generator in generators.items():
        generator.set_state(state[name])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
