"""Create a rating study from the workflow's outputs (paper Table 2: 30 groups).

A group is one training mask with its caption and one synthetic image per generator,
all drawn for that mask (the workflow's synthesis seeds each image by its mask, so the
generators share the seed). Groups are sampled from the masks every synthetic set
covers; ``repeats`` of them are shown a second time to measure each rater's
consistency. Every file a rater sees is copied under ``<study folder>/media/``, named by
its content hash, and served by an opaque random id: neither a URL nor a file name tells
the generator. The study file records the unblinding key.

Re-running with the same inputs keeps the study file, and with it every rater and
rating. A study that differs and already has raters or ratings is never replaced
silently: that is an error, or with ``replace=True`` the old file is archived first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import random
import secrets
import shutil
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image as PILImage

from ccis.common.atomic import atomic_path, write_bytes_atomic
from ccis.generator import REGISTRY
from ccis.rating.store import Store, StudyError, connect, create_schema, now

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRIPLET_COLUMNS = ("id", "mask", "caption")
SYNTHETIC_COLUMNS = ("id", "image", "real_id", "caption")
MEDIA_DIR = "media"
OUTLINE_RGB = (255, 230, 0)  # a yellow line (with a dark edge) reads on pink mucosa


@dataclass(frozen=True)
class Source:
    """One file a group shows: where it came from and its bytes' hash."""

    path: Path
    sha256: str


def _read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise ValueError(f"{path}: not a readable Parquet {what} ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: {what} lacks columns {missing}")
    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: ids listed twice: {duplicated[:5]}")
    return frame


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png(path: Path, what: str) -> tuple[bytes, int, int]:
    """A PNG file's bytes and size; a clear error for anything else."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read {what} ({err.strerror})") from err
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{path}: {what} is not a PNG file")
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except Exception as err:  # Pillow raises several types for a damaged file
        raise ValueError(f"{path}: {what} cannot be decoded ({err})") from err
    return data, width, height


def outline_png(mask: np.ndarray) -> bytes:
    """A transparent RGBA PNG of the mask's outline (a bright line with a dark edge)."""
    height, width = mask.shape
    contours, _ = cv2.findContours(
        (mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    thickness = max(1, round(min(height, width) / 160))
    canvas = np.zeros((height, width, 4), np.uint8)
    cv2.drawContours(canvas, contours, -1, (0, 0, 0, 200), thickness + 2, cv2.LINE_AA)
    cv2.drawContours(canvas, contours, -1, (*OUTLINE_RGB, 255), thickness, cv2.LINE_AA)
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError("cannot encode the outline PNG")
    return buffer.tobytes()


def _binary_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{path}: cannot read the mask")
    return np.where(mask > 127, 255, 0).astype(np.uint8)


def sample_groups(
    candidates: list[str], groups: int, repeats: int, seed: int
) -> tuple[list[str], list[int]]:
    """Choose ``groups`` mask ids and which ``repeats`` of them are shown twice."""
    if groups < 1:
        raise ValueError(f"groups must be at least 1, got {groups}")
    if not 0 <= repeats <= groups:
        raise ValueError(f"repeats must be between 0 and groups ({groups}), got {repeats}")
    if groups > len(candidates):
        raise ValueError(
            f"{groups} groups asked for, but only {len(candidates)} training masks have an "
            "image from every generator"
        )
    rng = random.Random(seed)
    chosen = rng.sample(sorted(candidates), groups)
    repeated = sorted(rng.sample(range(groups), repeats))
    return chosen, repeated


def _inputs(
    triplets: Path, synthetic: Mapping[str, Path]
) -> tuple[dict[str, tuple[Path, str]], dict[str, dict[str, tuple[Path, str | None, str]]]]:
    """Masks and captions by id; per generator, (image, sha256 or None, synthetic id) by id."""
    frame = _read_table(triplets, TRIPLET_COLUMNS, "triplets file")
    masks = {str(r.id): (triplets.parent / str(r.mask), str(r.caption)) for r in frame.itertuples()}
    images: dict[str, dict[str, tuple[Path, str | None, str]]] = {}
    for generator, path in synthetic.items():
        part = _read_table(path, SYNTHETIC_COLUMNS, f"synthetic manifest of {generator}")
        if "generator" in part.columns:
            others = sorted(set(part["generator"].astype(str)) - {generator})
            if others:
                raise ValueError(f"{path}: given as {generator}'s images but made by {others}")
        if part["real_id"].duplicated().any():
            twice = part["real_id"][part["real_id"].duplicated()].tolist()[:5]
            raise ValueError(f"{path}: several images for one training mask: {twice}")
        stale = [
            str(r.real_id)
            for r in part.itertuples()
            if str(r.real_id) in masks and str(r.caption) != masks[str(r.real_id)][1]
        ]
        if stale:
            raise ValueError(
                f"{path}: {len(stale)} image(s) were drawn for other captions than "
                f"{triplets} now holds (a stale synthetic set?), e.g. {stale[:5]}"
            )
        sha = part["image_sha256"] if "image_sha256" in part.columns else [None] * len(part)
        images[generator] = {
            str(r.real_id): (path.parent / str(r.image), s, str(r.id))
            for r, s in zip(part.itertuples(), sha, strict=True)
        }
    return masks, images


def create_study(
    triplets: str | os.PathLike,
    synthetic: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    groups: int = 30,
    repeats: int = 0,
    seed: int = 0,
    spec: str | os.PathLike | None = None,
    title: str = "Colonoscopy image rating",
    replace: bool = False,
) -> Path:
    """Create (or keep, when unchanged) the study file ``out``; return its path.

    ``synthetic``: generator name → its synthetic manifest. ``spec``: a JSON file with
    the study's definition (groups, captions, images and their generators) to write.
    """
    triplets, out = Path(triplets), Path(out)
    paths = {name: Path(p) for name, p in synthetic.items()}
    if not paths:
        raise ValueError("give at least one generator's synthetic manifest")
    unknown = [name for name in paths if name not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; known: {', '.join(REGISTRY)}")
    masks, images = _inputs(triplets, paths)
    covered = set(masks).intersection(*(set(by_id) for by_id in images.values()))
    for name, by_id in images.items():
        if len(by_id) != len(covered):
            log.info("%s: %d of its %d images have a mask in every set", name, len(covered),
                     len(by_id))  # fmt: skip
    chosen, repeated = sample_groups(sorted(covered), groups, repeats, seed)
    order = sorted(paths, key=lambda name: list(REGISTRY).index(name))

    # Read and check every file before anything is written.
    files: dict[tuple[str, str], tuple[bytes, int, int]] = {}
    definition: list[dict] = []
    for real_id in chosen:
        mask_path, caption = masks[real_id]
        mask = _binary_mask(mask_path)
        ok, encoded = cv2.imencode(".png", mask)
        if not ok:
            raise ValueError(f"{mask_path}: cannot encode the mask as PNG")
        files[(real_id, "mask")] = (encoded.tobytes(), mask.shape[1], mask.shape[0])
        files[(real_id, "outline")] = (outline_png(mask), mask.shape[1], mask.shape[0])
        entry = {
            "real_id": real_id,
            "caption": caption,
            "mask_sha256": _sha256(encoded),
            "images": {},
        }
        for name in order:
            path, expected, synthetic_id = images[name][real_id]
            data, width, height = _png(path, f"{name}'s image for {real_id}")
            digest = _sha256(data)
            if expected is not None and expected != digest:
                raise ValueError(
                    f"{path}: changed since its manifest {paths[name]} was written "
                    f"(sha256 {digest[:12]}…, manifest says {str(expected)[:12]}…)"
                )
            if (width, height) != (mask.shape[1], mask.shape[0]):
                log.warning("%s: %d×%d image for a %d×%d mask (%s)", path, width, height,
                            mask.shape[1], mask.shape[0], real_id)  # fmt: skip
            files[(real_id, name)] = (data, width, height)
            entry["images"][name] = {"source": synthetic_id, "sha256": digest}
        definition.append(entry)
    key = {"seed": seed, "generators": order, "groups": definition, "repeated": repeated}
    fingerprint = _sha256(json.dumps(key, sort_keys=True).encode())

    if out.exists() and _keep_or_archive(out, fingerprint, replace):
        # The title is no part of the study's identity: a new one is simply shown.
        with contextlib.closing(connect(out)) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'title'", (json.dumps(title),))
        _write_spec(spec, out)
        return out

    for suffix in ("-wal", "-shm"):
        # A WAL left by a deleted study file must never meet the new one (SQLite would
        # replay it into it).
        leftover = Path(f"{out}{suffix}")
        if leftover.exists():
            log.warning("removing %s, left by an earlier study file", leftover)
            leftover.unlink()
    media = out.parent / MEDIA_DIR
    stored: dict[tuple[str, str], str] = {}
    for ident, (data, _, _) in files.items():
        name = f"{_sha256(data)}.png"
        # Content-addressed: unchanged files are not rewritten, and an archived study
        # still finds its own files.
        if not (media / name).is_file():
            write_bytes_atomic(media / name, data)
        stored[ident] = f"{MEDIA_DIR}/{name}"

    meta = {
        "title": title, "seed": seed, "groups": groups, "repeats": repeats,
        "fingerprint": fingerprint, "created": now(), "generators": order,
        "triplets": str(triplets), "synthetic": {k: str(v) for k, v in paths.items()},
    }  # fmt: skip
    with atomic_path(out) as tmp:
        tmp.unlink()
        _write_database(tmp, meta, definition, repeated, files, stored, order)
    log.info(
        "created %s: %d groups (+%d repeated) × %d generators (%s), seed %d, media in %s",
        out, groups, repeats, len(order), ", ".join(order), seed, media,
    )  # fmt: skip
    _write_spec(spec, out)
    return out


def _write_database(
    path: Path,
    meta: dict,
    definition: list[dict],
    repeated: list[int],
    files: dict[tuple[str, str], tuple[bytes, int, int]],
    stored: dict[tuple[str, str], str],
    order: list[str],
) -> None:
    """Write a new study file at ``path`` (rollback journal; the server switches to WAL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        create_schema(conn, meta)  # executescript commits by itself
        conn.execute("BEGIN")  # the rows in one transaction (a temporary file until renamed)
        conn.executemany(
            "INSERT INTO generators (name, label, position) VALUES (?, ?, ?)",
            [(name, REGISTRY[name].label, k) for k, name in enumerate(order)],
        )

        def add_media(ident: tuple[str, str], kind: str) -> str:
            # A fresh random id per appearance: a repeated group's URLs differ too.
            media_id = secrets.token_hex(8)
            data, width, height = files[ident]
            conn.execute(
                "INSERT INTO media (id, path, kind, sha256, width, height) VALUES (?,?,?,?,?,?)",
                (media_id, stored[ident], kind, _sha256(data), width, height),
            )
            return media_id

        shown = [(k, None) for k in range(len(definition))]
        shown += [(k, k + 1) for k in repeated]  # (index, group id it repeats)
        for group_id, (k, repeat_of) in enumerate(shown, start=1):
            entry = definition[k]
            real_id = entry["real_id"]
            conn.execute(
                "INSERT INTO groups (id, real_id, caption, mask, outline, repeat_of)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (group_id, real_id, entry["caption"], add_media((real_id, "mask"), "mask"),
                 add_media((real_id, "outline"), "outline"), repeat_of),
            )  # fmt: skip
            for name in order:
                image_id = add_media((real_id, name), "image")
                conn.execute(
                    "INSERT INTO images (id, group_id, generator, source_id) VALUES (?,?,?,?)",
                    (image_id, group_id, name, entry["images"][name]["source"]),
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _keep_or_archive(out: Path, fingerprint: str, replace: bool) -> bool:
    """True when ``out`` already is this study (kept as is); otherwise make way for a new
    one: a study without raters or ratings is replaced, one with them is an error unless
    ``replace`` (then it is archived)."""
    try:
        store = Store(out)
    except StudyError as err:
        raise ValueError(f"{err}; move it away to create a study there") from err
    if store.meta.get("fingerprint") == fingerprint:
        log.info("%s already holds this study: kept with %d rater(s) and their %d rating(s)",
                 out, len(store.raters()), _ratings(store))  # fmt: skip
        return True
    raters, ratings = len(store.raters()), _ratings(store)
    # Fold the WAL into the main file, so that the file alone is the whole study.
    store.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.conn().close()
    if raters or ratings:
        if not replace:
            raise ValueError(
                f"{out} holds another study (other inputs or settings) with {raters} rater(s) "
                f"and {ratings} rating(s); it is not replaced. Move it away, or pass --replace "
                "to archive it under archive/ beside it."
            )
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        archive = out.parent / "archive" / stamp
        archive.mkdir(parents=True, exist_ok=False)
        shutil.move(out, archive / out.name)
        log.warning("archived the previous study (%d raters, %d ratings) as %s", raters,
                    ratings, archive / out.name)  # fmt: skip
    else:
        log.info("%s: an earlier study without raters or ratings, replaced", out)
    return False


def _ratings(store: Store) -> int:
    return int(store.conn().execute("SELECT COUNT(*) FROM ratings").fetchone()[0])


def _write_spec(spec: str | os.PathLike | None, out: Path) -> None:
    """The study's definition as JSON: groups in id order with the unblinding key."""
    if spec is None:
        return
    with contextlib.closing(connect(out, readonly=True)) as conn:
        meta = {r["key"]: json.loads(r["value"]) for r in conn.execute("SELECT * FROM meta")}
        groups = []
        for g in conn.execute("SELECT * FROM groups ORDER BY id").fetchall():
            rows = conn.execute(
                "SELECT i.generator, i.source_id, m.sha256, m.path FROM images i"
                " JOIN media m ON m.id = i.id WHERE i.group_id = ?",
                (g["id"],),
            ).fetchall()
            groups.append({
                "group": g["id"], "real_id": g["real_id"], "caption": g["caption"],
                "repeat_of": g["repeat_of"],
                "images": {r["generator"]: {"source": r["source_id"], "sha256": r["sha256"],
                                            "file": r["path"]} for r in rows},
            })  # fmt: skip
    document = {"study": str(out), "meta": meta, "groups": groups}
    with atomic_path(spec) as tmp:
        tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("wrote the study's definition to %s", spec)
