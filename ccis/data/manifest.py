"""The per-split manifest: one Parquet row per normalised image–mask pair."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ccis.common.shards import write_table

# Columns every manifest has, in order (the README, "Data"). Phantom manifests add ``truth``.
COLUMNS = (
    "id",
    "source",
    "split",
    "image",
    "mask",
    "width",
    "height",
    "area_fraction",
    "n_components",
    "image_sha256",
    "mask_sha256",
    "original_image",
    "original_mask",
    "notes",
)


def mask_statistics(mask: np.ndarray) -> tuple[float, int]:
    """Polyp area fraction and number of 8-connected polyp components of a 0/255 mask."""
    binary = (mask > 0).astype(np.uint8)
    n_labels, _ = cv2.connectedComponents(binary, connectivity=8)
    return float(binary.mean()), int(n_labels - 1)


# Suspicious masks (data.suspicious_masks): a "polyp" over this share of the frame is more
# likely an inverted or all-white mask; components under SPECK_FRACTION of the frame are
# annotation specks (the captioner's polyp count ignores them too).
FULL_FRAME_FRACTION = 0.9
SPECK_FRACTION = 0.001


def mask_suspicions(mask: np.ndarray) -> list[str]:
    """Why a 0/255 mask looks wrong, if it does: (nearly) the whole frame, specks, or a
    region cut by the frame border on all four sides. Empty masks are not judged here."""
    binary = (mask > 0).astype(np.uint8)
    height, width = binary.shape
    area = float(binary.mean())
    if area == 0:
        return []
    found = []
    if area >= FULL_FRAME_FRACTION:
        found.append(f"covers {area:.1%} of the frame (inverted or all-foreground?)")
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    pixels = stats[1:, cv2.CC_STAT_AREA]
    specks = int((pixels < SPECK_FRACTION * height * width).sum())
    if specks:
        found.append(
            f"{specks} speck(s) below {SPECK_FRACTION:.1%} of the frame "
            f"(smallest {int(pixels.min())} px)"
        )
    for x, y, w, h in stats[1:, :4]:
        if x == 0 and y == 0 and x + w == width and y + h == height:
            found.append("a region touches all four frame borders (cut by the border)")
            break
    return found


def write_manifest(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write manifest ``rows`` to ``path`` atomically and return the path."""
    path = Path(path)
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    extra = [c for c in frame.columns if c not in COLUMNS]
    frame = frame[list(COLUMNS) + extra]
    return write_table(frame, path)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest and check it has the required columns."""
    path = Path(path)
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a ccis manifest, missing columns {missing}")
    return frame
