"""Learning-rate schedules: a linear warm-up, then cosine, poly or constant decay over the run.

The rate is a pure function of the step and the run's total steps (no scheduler object with
hidden state), so a resumed run gets exactly the rates an uninterrupted one would, and the
checkpoint needs only the step. Raising ``train.steps`` on a finished run re-evaluates the same
function for the new total: the rate steps back up from near zero to ``factor(step, new_total)``
and decays to zero again at the new end (a warm restart; the result differs from a run trained
to the new total from the start, which would have used higher rates earlier).
"""

from __future__ import annotations

import math
from typing import Any

POLY_EXPONENT = 0.9  # nnU-Net's poly schedule: (1 - t)^0.9


def lr_factor(step: int, total: int, settings: dict[str, Any]) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (1-based) of ``total``.

    Warm-up ramps linearly from ``1/(warmup+1)`` to 1 over ``warmup_steps``, which keeps the
    first updates of a randomly initialised net with high momentum small. After it, the decay
    runs over the remaining steps: ``cosine`` 0.5 (1 + cos(pi t)), ``poly`` (1 - t)^0.9 with
    ``t`` the fraction of post-warm-up steps done before this one, ``constant`` 1.
    """
    warmup = min(int(settings["warmup_steps"]), max(total - 1, 0))
    if step <= warmup:
        return step / (warmup + 1)
    t = (step - 1 - warmup) / max(total - warmup, 1)
    t = min(max(t, 0.0), 1.0)
    name = settings["name"]
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "poly":
        return (1.0 - t) ** POLY_EXPONENT
    return 1.0
