"""Training losses: the paper's pixel-weighted cross-entropy, optionally plus a soft Dice term.

The cross-entropy averages over pixels, so a class that covers few pixels (the thin boundary class
of touching cells, small nuclei in a large field) moves it little; the weight map (``w0``) is the
paper's answer for the gaps between cells. The soft Dice term (``train.loss: ce_dice``, nnU-Net's
default loss) scores every foreground class by its overlap instead, whatever its area: a class of
50 pixels counts as much as one of 50 000. Dice is taken over the whole batch (nnU-Net's "batch
Dice"), so a tile with no object of a class does not make the term ill-defined.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DICE_SMOOTH = 1e-5  # keeps a class absent from both prediction and batch at Dice 1, not 0/0


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``w(x) * -log softmax(logits)(x)[target(x)]`` (the paper's eq. 1).

    Computed in float32 even under autocast so the weights of rare border pixels are not lost to
    half precision.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (weight * ce).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean over the foreground classes (1..K-1) of the soft Dice of softmax(logits) with
    the one-hot target, sums over the batch and all pixels (float32)."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean()


def ce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weighted cross-entropy plus the soft Dice term, with equal weight (nnU-Net)."""
    return weighted_cross_entropy(logits, target, weight) + soft_dice_loss(logits, target)


LOSSES: dict[str, LossFunction] = {"ce": weighted_cross_entropy, "ce_dice": ce_dice}
