"""Contact sheets: a grid of a manifest's frames with their mask outlines drawn on."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ccis.common.atomic import atomic_path
from ccis.common.images import read_bgr, read_gray
from ccis.data.manifest import read_manifest


def contact_sheet(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    count: int = 12,
    columns: int = 3,
    tile: tuple[int, int] = (288, 240),
) -> Path:
    """Write a PNG grid of the first ``count`` pairs of ``manifest``; return its path."""
    manifest = Path(manifest)
    frame = read_manifest(manifest).head(count)
    tiles = []
    for row in frame.itertuples():
        image = read_bgr(manifest.parent / row.image, manifest)
        mask = read_gray(manifest.parent / row.mask, manifest)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outlined = image.copy()
        cv2.drawContours(outlined, contours, -1, (80, 255, 80), max(1, image.shape[1] // 250))
        pair = np.hstack([cv2.resize(image, tile), cv2.resize(outlined, tile)])
        tiles.append(pair)
    if not tiles:
        raise ValueError(f"{manifest}: no pairs to draw")
    blank = np.zeros_like(tiles[0])
    while len(tiles) % columns:
        tiles.append(blank)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    ok, buf = cv2.imencode(".png", np.vstack(rows))
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.tobytes())
    return out
