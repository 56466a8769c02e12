"""The structure loss of PraNet, Polyp-PVT and PVT-CASCADE: (weighted) BCE + weighted IoU.

Two forms, chosen by ``segmentation.loss``:

- ``reference``: what the released training scripts compute (CASCADE's too). They call
  ``binary_cross_entropy_with_logits(..., reduce='none')``; ``reduce`` is the deprecated
  boolean argument and the string ``'none'`` is truthy, so the BCE is reduced to its mean
  over the whole batch *before* the boundary weights touch it: their BCE term is the plain
  mean BCE, and only the IoU term is weighted. The paper ran the segmenters "with their
  default settings", so this is the like-for-like form.
- ``weighted``: the form the papers describe, both terms weighted per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccis.segmentation.registry import LOSSES


def box_mean31(mask: torch.Tensor) -> torch.Tensor:
    """``avg_pool2d(mask, 31, stride=1, padding=15)`` (zero padding counted), separably.

    With ``count_include_pad`` every window divides by 31², so a 1×31 pass followed by a
    31×1 pass gives the same values (up to float rounding) at 2·31 instead of 31² adds
    per pixel: the 31×31 pool dominated a CPU training step.
    """
    rows = F.avg_pool2d(mask, kernel_size=(1, 31), stride=1, padding=(0, 15))
    return F.avg_pool2d(rows, kernel_size=(31, 1), stride=1, padding=(15, 0))


def boundary_weights(mask: torch.Tensor) -> torch.Tensor:
    """``1 + 5·|avgpool31(m) − m|``: pixels near the polyp boundary weigh up to 6×."""
    return 1 + 5 * torch.abs(box_mean31(mask) - mask)


def structure_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    form: str = "weighted",
) -> torch.Tensor:
    """BCE + weighted IoU loss, averaged over the batch.

    ``logits`` and ``mask`` are N×1×H×W (mask in [0, 1], soft masks allowed); ``weights``
    default to :func:`boundary_weights`. ``form`` is ``weighted`` (both terms weighted) or
    ``reference`` (the released code's unweighted mean BCE; see the module docstring).
    """
    if form not in LOSSES:
        raise ValueError(f"unknown structure-loss form {form!r}; known: {', '.join(LOSSES)}")
    if weights is None:
        weights = boundary_weights(mask)
    if form == "reference":
        wbce = F.binary_cross_entropy_with_logits(logits, mask)  # one mean over the batch
    else:
        bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        wbce = (weights * bce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weights).sum(dim=(2, 3))
    union = ((prob + mask) * weights).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()
