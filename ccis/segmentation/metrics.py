"""mDice / mIoU as PraNet's and Polyp-PVT's evaluation code computes them, per image.

The papers' MATLAB toolbox (reimplemented by ``pysodmetrics``): the ground truth is
``gt > 128``; the saved uint8 prediction is read as ``v/255`` and min–max normalised
(``mapminmax``); for each of the 256 thresholds ``t = k/255`` (k = 0…255) the map is
binarised with ``pred ≥ t`` and Dice and IoU are computed; a threshold with an empty
intersection scores 0 (so both masks empty also scores 0). A data set's mDice is the
mean over images of the mean over thresholds; both means are linear, so the mean of our
per-image threshold means equals it exactly.

We compare ``(v − min)·255 ≥ k·(max − min)`` in integers: the exact form of the rule,
where floating point (MATLAB, pysodmetrics) can flip a pixel lying exactly on a
threshold. Dice and IoU at 0.5 binarise the sigmoid probability with ``p ≥ 0.5``.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = 256


def quantize_prediction(probability: np.ndarray) -> np.ndarray:
    """The uint8 map the reference test scripts save: min–max normalised, ×255, rounded.

    A constant map becomes all zeros (the references divide by ``max − min + 1e-8``).
    """
    p = np.asarray(probability, dtype=np.float64)
    low, high = p.min(), p.max()
    if high <= low:
        return np.zeros(p.shape, np.uint8)
    return np.round((p - low) / (high - low) * 255).astype(np.uint8)


def _scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU from counts; 0 where the intersection is empty (MATLAB rule)."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    nonzero = tp > 0
    dice = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=nonzero)
    iou = np.divide(tp, tp + fp + fn, out=np.zeros_like(tp), where=nonzero)
    return dice, iou


def threshold_curves(prediction: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of uint8 ``prediction`` against uint8 ``gt`` at t = k/255, k = 0…255."""
    prediction, gt = np.asarray(prediction), np.asarray(gt)
    if prediction.shape != gt.shape:
        raise ValueError(f"prediction {prediction.shape} and mask {gt.shape} differ in shape")
    if prediction.dtype != np.uint8 or gt.dtype != np.uint8:
        raise ValueError("threshold_curves takes uint8 prediction and mask")
    truth = gt > 128
    v = prediction.astype(np.int64)
    low, span = int(v.min()), int(v.max()) - int(v.min())
    # Thresholds passed are 0…last (pred ≥ k/255 is monotone in k), so histogram "last":
    # the pixels with last ≥ k are the positives at threshold k.
    # With span > 0, last is the largest k with (v − low)·255 ≥ k·span; mapminmax leaves
    # a constant map as it is, where v/255 ≥ k/255 ⇔ v ≥ k.
    last = (v - low) * 255 // span if span else v
    fg = np.bincount(last[truth], minlength=THRESHOLDS)
    bg = np.bincount(last[~truth], minlength=THRESHOLDS)
    tp = np.cumsum(fg[::-1])[::-1]  # positives at threshold k among foreground pixels
    fp = np.cumsum(bg[::-1])[::-1]
    fn = int(truth.sum()) - tp
    return _scores(tp, fp, fn)


def binary_scores(probability: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of ``probability ≥ 0.5`` against ``gt > 128``."""
    pred = np.asarray(probability) >= 0.5
    truth = np.asarray(gt) > 128
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and mask {truth.shape} differ in shape")
    tp = np.count_nonzero(pred & truth)
    dice, iou = _scores(tp, np.count_nonzero(pred & ~truth), np.count_nonzero(~pred & truth))
    return float(dice), float(iou)


def image_scores(probability: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Per-image ``mdice``, ``miou`` (threshold means) and ``dice``, ``iou`` at 0.5.

    ``probability`` is the sigmoid output (H×W, in [0, 1]) at the mask's size; ``gt`` is
    the uint8 mask.
    """
    dice_curve, iou_curve = threshold_curves(quantize_prediction(probability), gt)
    dice, iou = binary_scores(probability, gt)
    return {
        "mdice": float(dice_curve.mean()),
        "miou": float(iou_curve.mean()),
        "dice": dice,
        "iou": iou,
    }
