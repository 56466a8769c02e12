"""The structure loss of PraNet and Polyp-PVT: weighted BCE + weighted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted BCE + weighted IoU loss, averaged over the batch.

    ``logits`` and ``mask`` are N×1×H×W (mask in [0, 1]); ``weights`` default to
    :func:`boundary_weights`. This is the *intended* weighted form. Both reference
    repositories call ``binary_cross_entropy_with_logits(..., reduce='none')``: ``reduce``
    is the deprecated boolean argument, the string ``'none'`` is truthy, so the BCE is
    reduced to its mean *before* weighting and their BCE term is in fact unweighted.
    """
    if weights is None:
        weights = boundary_weights(mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weights * bce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weights).sum(dim=(2, 3))
    union = ((prob + mask) * weights).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()
