"""Mask fidelity: does a segmenter trained on real data find the polyp where the mask says?

For each synthetic image, the Dice between its conditioning mask and a real-data
segmenter's prediction (probability ≥ 0.5). It automates the paper's user-study column
"mask accuracy". An image whose mask and prediction are both empty scores 1 (they agree);
when only one is empty it scores 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ccis.common.images import read_rgb
from ccis.metrics.base import Computed, NotComputed, Result, read_mask

log = logging.getLogger(__name__)

Segment = Callable[[list[np.ndarray]], list[np.ndarray]]
THRESHOLD = 0.5


def dice(mask: np.ndarray, probability: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Dice of a 0/255 (or boolean) ``mask`` and ``probability ≥ threshold``; 1 if both empty."""
    if probability.shape != mask.shape:
        # Segmenters may predict at their own resolution: compare at the mask's.
        h, w = mask.shape
        probability = cv2.resize(probability.astype(np.float32), (w, h), cv2.INTER_LINEAR)
    truth = mask > 0
    predicted = probability >= threshold
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((truth & predicted).sum()) / total


def mask_fidelity(
    images: Sequence[Path],
    masks: Sequence[Path],
    segment: Segment,
    *,
    batch_size: int = 8,
    threshold: float = THRESHOLD,
    segmenter: str = "custom",
) -> tuple[Result, list[float]]:
    """Mean Dice (percent) between each image's mask and ``segment``'s prediction on it.

    ``segment`` maps a list of RGB uint8 images to a list of probability maps in [0, 1].
    """
    if len(images) != len(masks):
        raise ValueError("images and masks must have the same length")
    scores: list[float] = []
    empty = 0
    for start in tqdm(range(0, len(images), batch_size), desc="mask fidelity", unit="batch"):
        batch = [read_rgb(p) for p in images[start : start + batch_size]]
        truths = [
            read_mask(p, image.shape[:2])
            for p, image in zip(masks[start : start + batch_size], batch, strict=True)
        ]
        probabilities = segment(batch)
        if len(probabilities) != len(batch):
            raise ValueError(
                f"the segmenter returned {len(probabilities)} maps for {len(batch)} images"
            )
        for truth, probability in zip(truths, probabilities, strict=True):
            empty += not truth.any()
            scores.append(dice(truth, np.asarray(probability, dtype=np.float32), threshold))
    value = 100.0 * float(np.mean(scores))
    log.info("mask fidelity (Dice at %.2f) = %.2f%% over %d images", threshold, value, len(scores))
    return Computed(
        value,
        {
            "unit": "%",
            "definition": (
                f"mean Dice between the conditioning mask and the segmenter's prediction "
                f"(probability >= {threshold}) on the synthetic image; both empty = 1"
            ),
            "segmenter": segmenter,
            "threshold": threshold,
            "std": 100.0 * float(np.std(scores)),
            "n": len(scores),
            "n_empty_masks": empty,
        },
    ), scores


def load_segment(
    folder: str | os.PathLike | None, *, device: str = "cpu", batch_size: int = 8
) -> Segment | NotComputed:
    """A ``segment`` callable from a trained segmenter folder (``ccis train-segmenter``).

    The network's input size is its training size, read from the folder's configuration
    by ``ccis.segmentation.predict.load_segmenter``.
    """
    if folder is None:
        return NotComputed("no real-data segmenter was given (--segmenter)")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such segmenter folder")
    from ccis.segmentation.predict import load_segmenter, predict_probabilities

    model = load_segmenter(folder, device)
    size = int(model.segmenter_config["size"])
    log.info("mask fidelity: segmenter %s at %d px on %s", folder, size, device)

    def segment(images: list[np.ndarray]) -> list[np.ndarray]:
        return predict_probabilities(model, images, size, batch_size)

    return segment
