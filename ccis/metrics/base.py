"""Metric results and the inputs every generation metric reads.

A metric is either computed (a value plus details) or not computed, with the reason: a
missing weight file offline is reported as such, never replaced by a made-up number.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ccis.common.images import read_gray

log = logging.getLogger(__name__)

NOT_COMPUTED = "not computed"
COMPUTED = "computed"

SYNTHETIC_COLUMNS = ("id", "image", "mask", "caption", "real_id")
# An external set (another tool's folder, imported by ``ccis prepare``) has neither the
# prompts nor the real source pair of each image.
EXTERNAL_COLUMNS = ("id", "image", "mask")
TRIPLET_COLUMNS = ("id", "image", "mask", "caption", "attributes")


@dataclass(frozen=True)
class Computed:
    """A computed metric: its value and the details needed to read it."""

    value: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"status": COMPUTED, "value": float(self.value), **self.details}


@dataclass(frozen=True)
class NotComputed:
    """A metric that could not be computed, and why (shown in the report)."""

    reason: str

    def to_dict(self) -> dict:
        return {"status": NOT_COMPUTED, "reason": self.reason}


Result = Computed | NotComputed


def finite(value: float, what: str, details: dict | None = None) -> Result:
    """``Computed(value)`` when finite; a NaN/inf is reported, not written into the JSON."""
    if not math.isfinite(value):
        return NotComputed(f"{what} is not finite ({value})")
    return Computed(float(value), details or {})


@dataclass(frozen=True)
class SyntheticPairs:
    """The synthetic set joined to its real sources (one entry per synthetic image).

    For an external set (``external``) the per-image prompt and source lists are empty:
    only its images, masks and the real reference set are known.
    """

    ids: list[str]
    images: list[Path]
    masks: list[Path]
    captions: list[str]
    real_ids: list[str]
    real_images: list[Path]  # the real source image of each synthetic one
    prompt_attributes: list[Mapping]  # the attributes the source caption was grounded in
    all_real_images: list[Path]  # every real training image (FID reference set)
    external: bool = False


def _require(frame: pd.DataFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a {what}, missing columns {missing}")


def _paths(frame: pd.DataFrame, column: str, manifest: Path) -> list[Path]:
    """Absolute paths of ``column`` (stored relative to the manifest's folder)."""
    paths = [manifest.parent / str(p) for p in frame[column]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {manifest} ({column}) but missing")
    return paths


def read_pairs(
    synthetic: str | os.PathLike, real: str | os.PathLike, external: bool = False
) -> SyntheticPairs:
    """Read a synthetic manifest and the real triplets it was generated from.

    Rows are sorted by synthetic id so every metric (and the per-image table) is in one
    deterministic order. Every listed file must exist; every ``real_id`` must be a triplet.
    With ``external``, ``synthetic`` is an imported manifest (``ccis prepare`` of another
    tool's folder): images and masks only, compared with the real set as a whole.
    """
    synthetic, real = Path(synthetic), Path(real)
    for path in (synthetic, real):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such manifest")
    syn = pd.read_parquet(synthetic)
    tri = pd.read_parquet(real)
    if external:
        _require(syn, EXTERNAL_COLUMNS, synthetic, "manifest of an imported set (ccis prepare)")
    else:
        _require(syn, SYNTHETIC_COLUMNS, synthetic, "synthetic manifest (ccis synthesize)")
    _require(tri, TRIPLET_COLUMNS, real, "triplets file (ccis caption)")
    if syn.empty:
        raise ValueError(f"{synthetic}: the synthetic manifest has no rows")
    if tri.empty:
        raise ValueError(f"{real}: the triplets file has no rows")
    for frame, path in ((syn, synthetic), (tri, real)):
        dupes = frame["id"][frame["id"].duplicated()].tolist()
        if dupes:
            raise ValueError(f"{path}: duplicate ids {dupes[:5]}")
    syn = syn.sort_values("id").reset_index(drop=True)
    tri = tri.sort_values("id").reset_index(drop=True)
    if external:
        pairs = SyntheticPairs(
            ids=[str(i) for i in syn["id"]], images=_paths(syn, "image", synthetic),
            masks=_paths(syn, "mask", synthetic), captions=[], real_ids=[], real_images=[],
            prompt_attributes=[], all_real_images=_paths(tri, "image", real), external=True,
        )  # fmt: skip
        log.info(
            "read %d imported pairs from %s and %d real triplets from %s",
            len(pairs.ids), synthetic, len(pairs.all_real_images), real,
        )  # fmt: skip
        return pairs
    by_id = tri.set_index("id")
    unknown = sorted(str(i) for i in set(syn["real_id"]) - set(by_id.index))
    if unknown:
        raise ValueError(f"{synthetic}: real_id(s) {unknown[:5]} are not in the triplets {real}")
    sources = by_id.loc[syn["real_id"]].reset_index()
    attributes = [dict(a) if isinstance(a, Mapping) else {} for a in sources["attributes"]]
    pairs = SyntheticPairs(
        ids=[str(i) for i in syn["id"]],
        images=_paths(syn, "image", synthetic),
        masks=_paths(syn, "mask", synthetic),
        captions=["" if c is None else str(c) for c in syn["caption"]],
        real_ids=[str(i) for i in syn["real_id"]],
        real_images=_paths(sources, "image", real),
        prompt_attributes=attributes,
        all_real_images=_paths(tri, "image", real),
    )
    log.info(
        "read %d synthetic pairs from %s and %d real triplets from %s",
        len(pairs.ids), synthetic, len(pairs.all_real_images), real,
    )  # fmt: skip
    return pairs


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as 0/255 uint8 (threshold 127), checked against the image ``shape``."""
    mask = read_gray(path)
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"{path}: mask size {mask.shape} differs from its image's {shape}")
    return np.where(mask > 127, 255, 0).astype(np.uint8)
