"""Evaluate a trained segmenter on test manifests: one Parquet row per test image."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ccis.common.device import default_device
from ccis.common.images import read_gray, read_rgb
from ccis.common.shards import write_table
from ccis.segmentation.data import manifest_pairs
from ccis.segmentation.metrics import image_scores
from ccis.segmentation.predict import load_segmenter, predict_probabilities

log = logging.getLogger(__name__)

COLUMNS = ("model", "setting", "seed", "test_set", "id", "mdice", "miou", "dice", "iou")


def evaluate_segmenter(
    model_dir: str | os.PathLike,
    tests: dict[str, str | os.PathLike],
    out_parquet: str | os.PathLike,
    model_name: str,
    setting: str,
    seed: int,
    batch_size: int = 8,
) -> Path:
    """Score the segmenter in ``model_dir`` on each test manifest; write per-image rows.

    Columns: model, setting, seed, test_set, id, mdice, miou (per-image means over the
    256 thresholds), dice, iou (at probability 0.5).
    """
    if not tests:
        raise ValueError("no test set given")
    # The GPU when there is one (the rule declares it), else the CPU.
    model = load_segmenter(model_dir, default_device())
    size = int(model.segmenter_config["size"])
    rows = []
    for name, manifest in tests.items():
        pairs = manifest_pairs(manifest)
        if not pairs:
            raise ValueError(f"{manifest}: test set {name} has no pairs")
        scores = []
        for begin in tqdm(range(0, len(pairs), batch_size), desc=f"evaluate {name}"):
            chunk = pairs[begin : begin + batch_size]
            images = [read_rgb(image) for _, image, _ in chunk]
            masks = [read_gray(mask) for _, _, mask in chunk]
            for (_, image_path, mask_path), image, mask in zip(chunk, images, masks, strict=True):
                if image.shape[:2] != mask.shape:
                    raise ValueError(f"{mask_path}: size differs from its image {image_path}")
            probabilities = predict_probabilities(model, images, size, batch_size)
            for (pair_id, _, _), prob, mask in zip(chunk, probabilities, masks, strict=True):
                scores.append(image_scores(prob, mask))
                rows.append(dict(model=model_name, setting=setting, seed=seed, test_set=name,
                                 id=pair_id, **scores[-1]))  # fmt: skip
        frame = pd.DataFrame(scores)
        log.info(
            "%s %s seed %d on %s (%d images): mDice %.4f mIoU %.4f Dice@0.5 %.4f IoU@0.5 %.4f",
            model_name, setting, seed, name, len(frame), frame["mdice"].mean(),
            frame["miou"].mean(), frame["dice"].mean(), frame["iou"].mean(),
        )  # fmt: skip
    out = write_table(pd.DataFrame(rows, columns=list(COLUMNS)), out_parquet)
    log.info("wrote %s (%d rows)", out, len(rows))
    return out
