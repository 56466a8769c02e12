"""The prepare stage: phantom or real pairs → normalised folders and a manifest.

Output for split ``S`` under ``out``: ``out/S/images/<id>.png``, ``out/S/masks/<id>.png``
and ``out/S.parquet``. The folder is built under a temporary name and renamed into place,
and the manifest is written last, also atomically, so a killed run leaves no manifest
and no half-filled folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ccis.common.atomic import atomic_dir, remove_stale_temporaries
from ccis.common.hashing import sha256_bytes
from ccis.common.images import encode_png
from ccis.data.layouts import Problem, RawPair, discover
from ccis.data.manifest import mask_statistics, mask_suspicions, write_manifest
from ccis.data.phantom import CENTRES, render_phantom
from ccis.data.readers import DEFAULT_MAX_PIXELS, PairError, read_image, read_mask

log = logging.getLogger(__name__)

ON_BAD = ("error", "skip")
EMPTY_MASKS = ("keep", "drop", "error")
SUSPICIOUS_MASKS = ("keep", "drop", "error")
SUSPICIOUS = "suspicious mask"  # the prefix of these notes in the manifest


class DatasetError(ValueError):
    """Problems with a data set, every offending file listed."""

    def __init__(
        self, split: str, problems: Sequence[Problem | str], duplicates_only: bool = False
    ):
        self.problems = [str(p) for p in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"split {split!r}: {len(self.problems)} problem(s) in the input data:\n{lines}\n"
            "Fix or remove these files"
            + (
                ""
                if duplicates_only
                else ", or set data.on_bad_pair: skip to leave them out (each is then logged)"
            )
            + "."
        )


@dataclass(frozen=True)
class SourceSpec:
    """One data-set folder to import: its layout name, root and optional id prefix."""

    format: str
    root: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """Parse ``FORMAT=ROOT`` or ``FORMAT:NAME=ROOT`` as given on the command line."""
        head, sep, root = text.partition("=")
        if not sep or not root:
            raise ValueError(f"source {text!r} must read FORMAT=ROOT or FORMAT:NAME=ROOT")
        fmt, _, name = head.partition(":")
        return cls(fmt, Path(root), name or None)


@dataclass(frozen=True)
class PhantomSpec:
    """Which phantom frames make a split."""

    count: int
    centre: int
    seed: int
    width: int
    height: int


def _write_pair(
    folder: Path, split: str, pair_id: str, image: np.ndarray, mask: np.ndarray
) -> dict:
    """Write one normalised pair into ``folder`` and return its manifest fields."""
    image_bytes, mask_bytes = encode_png(image), encode_png(mask)
    (folder / "images" / f"{pair_id}.png").write_bytes(image_bytes)
    (folder / "masks" / f"{pair_id}.png").write_bytes(mask_bytes)
    area, components = mask_statistics(mask)
    return {
        "id": pair_id,
        "split": split,
        "image": f"{split}/images/{pair_id}.png",
        "mask": f"{split}/masks/{pair_id}.png",
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "area_fraction": area,
        "n_components": components,
        "image_sha256": sha256_bytes(image_bytes),
        "mask_sha256": sha256_bytes(mask_bytes),
    }


def _phantom_job(args: tuple[PhantomSpec, int, str, str]) -> dict:
    spec, index, split, folder = args
    sample = render_phantom(spec.seed, spec.centre, index, spec.width, spec.height)
    pair_id = f"phantom-{split}-{index:05d}"
    row = _write_pair(Path(folder), split, pair_id, sample.image, sample.mask)
    row.update(source=f"phantom-{CENTRES[spec.centre].name}", truth=sample.truth.to_dict())
    return row


def _real_job(args: tuple[RawPair, str, str, int]) -> dict | Problem:
    pair, split, folder, max_pixels = args
    try:
        image = read_image(pair.image, max_pixels)
        mask = read_mask(pair.mask, max_pixels)
    except PairError as err:
        return Problem(err.path, err.reason)
    if image.array.shape[:2] != mask.array.shape[:2]:
        ih, iw = image.array.shape[:2]
        mh, mw = mask.array.shape[:2]
        return Problem(pair.mask, f"mask is {mw}×{mh} but its image {pair.image.name} is {iw}×{ih}")
    row = _write_pair(Path(folder), split, pair.id, image.array, mask.array)
    notes = [f"image: {n}" for n in image.notes] + [f"mask: {n}" for n in mask.notes]
    notes += [f"{SUSPICIOUS}: {n}" for n in mask_suspicions(mask.array)]
    row.update(
        source=pair.source,
        original_image=str(pair.image),
        original_mask=str(pair.mask),
        notes="; ".join(notes) or None,
    )
    return row


def _run(func, jobs: list, workers: int, desc: str) -> Iterator:
    """Map ``func`` over ``jobs`` in order, in ``workers`` processes, with a progress bar."""
    if workers <= 1 or len(jobs) < 2:
        results: Iterable = map(func, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(func, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    try:
        yield from tqdm(results, total=len(jobs), desc=desc, unit="pair", mininterval=1.0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _collect_real(split: str, sources: Sequence[SourceSpec]) -> tuple[list[RawPair], list[Problem]]:
    pairs: list[RawPair] = []
    problems: list[Problem] = []
    for spec in sources:
        found, issues = discover(spec.format, spec.root, spec.name)
        log.info(
            "read %s (%s): %d pairs, %d problems", spec.root, spec.format, len(found), len(issues)
        )
        pairs += found
        problems += issues
    seen: dict[str, RawPair] = {}
    unique: list[RawPair] = []
    for pair in pairs:
        if pair.id in seen:
            problems.append(
                Problem(pair.image, f"duplicate id {pair.id!r}, also used by {seen[pair.id].image}")
            )
        else:
            seen[pair.id] = pair
            unique.append(pair)
    return unique, problems


def prepare_split(
    split: str,
    out: str | os.PathLike,
    *,
    phantom: PhantomSpec | None = None,
    sources: Sequence[SourceSpec] = (),
    on_bad_pair: str = "error",
    empty_masks: str = "keep",
    suspicious_masks: str = "keep",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 1,
) -> Path:
    """Build split ``split`` under ``out`` and return the manifest path.

    Exactly one of ``phantom`` and ``sources`` is given. ``on_bad_pair`` is ``error``
    (stop, listing every bad file) or ``skip`` (leave them out, logged); ``empty_masks``
    is ``keep`` (polyp-free frames are valid negatives), ``drop`` or ``error``;
    ``suspicious_masks`` (whole-frame masks, specks, a region cut by all four borders:
    :func:`ccis.data.manifest.mask_suspicions`) is ``keep`` (flagged in the notes and the
    log), ``drop`` or ``error``.
    """
    if (phantom is None) == (not sources):
        raise ValueError("give either a phantom spec or at least one source")
    if on_bad_pair not in ON_BAD:
        raise ValueError(f"on_bad_pair must be one of {ON_BAD}, got {on_bad_pair!r}")
    if empty_masks not in EMPTY_MASKS:
        raise ValueError(f"empty_masks must be one of {EMPTY_MASKS}, got {empty_masks!r}")
    if suspicious_masks not in SUSPICIOUS_MASKS:
        raise ValueError(
            f"suspicious_masks must be one of {SUSPICIOUS_MASKS}, got {suspicious_masks!r}"
        )
    out = Path(out)
    manifest = out / f"{split}.parquet"
    for stale in remove_stale_temporaries(out, split) + remove_stale_temporaries(
        out, manifest.name
    ):
        log.warning("removed %s left by an interrupted run", stale)

    with atomic_dir(out / split) as folder:
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        problems: list[Problem] = []
        if phantom is not None:
            centre = CENTRES[phantom.centre].name
            size = f"{phantom.width}×{phantom.height}"
            log.info(
                "rendering %d phantom frames of %s (seed %d, %s)",
                phantom.count, centre, phantom.seed, size,
            )  # fmt: skip
            jobs = [(phantom, i, split, str(folder)) for i in range(phantom.count)]
            rows = list(_run(_phantom_job, jobs, workers, f"phantom {split}"))
        else:
            pairs, problems = _collect_real(split, sources)
            bad_files = {p.path for p in problems}
            pairs = [p for p in pairs if p.image not in bad_files and p.mask not in bad_files]
            jobs = [(p, split, str(folder), max_pixels) for p in pairs]
            rows = []
            for result in _run(_real_job, jobs, workers, f"import {split}"):
                if isinstance(result, Problem):
                    problems.append(result)
                else:
                    rows.append(result)
        duplicates = [p for p in problems if p.reason.startswith(("duplicate id", "several files"))]
        if problems and (on_bad_pair == "error" or duplicates):
            if on_bad_pair == "skip":
                raise DatasetError(split, duplicates, duplicates_only=True)
            raise DatasetError(split, problems)
        for problem in problems:
            log.warning("skipped %s", problem)

        empty = [r for r in rows if r["n_components"] == 0]
        if empty and empty_masks == "error":
            raise DatasetError(
                split, [f"{r['original_mask'] or r['id']}: mask is empty" for r in empty]
            )
        if empty:
            verb = "dropped" if empty_masks == "drop" else "kept as polyp-free frames"
            log.warning(
                "%d empty mask(s) %s: %s", len(empty), verb, ", ".join(r["id"] for r in empty)
            )
        if empty and empty_masks == "drop":
            rows = _drop_rows(rows, {r["id"] for r in empty}, folder)
        rows = _judge_suspicious(split, rows, suspicious_masks, folder)
        noted = [r for r in rows if r.get("notes")]
        for row in noted:
            log.info("%s: %s", row["id"], row["notes"])
        if not rows:
            raise DatasetError(split, ["no usable image–mask pairs"])
        rows.sort(key=lambda r: r["id"])
        # The old manifest goes before the new folder replaces the old one: a kill in
        # between leaves no manifest, never one describing other files.
        manifest.unlink(missing_ok=True)

    write_manifest(rows, manifest)
    log.info("wrote %d pairs to %s and %s", len(rows), out / split, manifest)
    return manifest


def _drop_rows(rows: list[dict], ids: set[str], folder: Path) -> list[dict]:
    """Remove the rows with an id in ``ids``, and their written files."""
    for pair_id in ids:
        (folder / "images" / f"{pair_id}.png").unlink(missing_ok=True)
        (folder / "masks" / f"{pair_id}.png").unlink(missing_ok=True)
    return [row for row in rows if row["id"] not in ids]


def _judge_suspicious(split: str, rows: list[dict], policy: str, folder: Path) -> list[dict]:
    """Apply ``data.suspicious_masks`` to the rows whose notes flag their mask."""
    flagged = {
        r["id"]: [n for n in r["notes"].split("; ") if n.startswith(SUSPICIOUS)]
        for r in rows
        if r.get("notes") and SUSPICIOUS in r["notes"]
    }
    if not flagged:
        return rows
    where = {r["id"]: r.get("original_mask") or r["id"] for r in rows}
    listed = [f"{where[i]}: {'; '.join(n[len(SUSPICIOUS) + 2 :] for n in notes)}"
              for i, notes in sorted(flagged.items())]  # fmt: skip
    if policy == "error":
        raise DatasetError(split, [f"{line} (data.suspicious_masks: error)" for line in listed])
    verb = "dropped" if policy == "drop" else "kept, flagged in the manifest notes"
    log.warning("%d suspicious mask(s) %s:\n  %s", len(flagged), verb, "\n  ".join(listed))
    return _drop_rows(rows, set(flagged), folder) if policy == "drop" else rows
