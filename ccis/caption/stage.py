"""The caption stage: a split's manifest → image–mask–text triplets (Parquet).

Captioning is sharded: shard ``i`` of ``n`` takes every ``n``-th pair (by id), so shards
are balanced and independent, and ``gather_triplets`` joins them. Image and mask paths in
the triplets are relative to the triplets file's folder, like the manifests'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ccis.caption.attributes import measure_attributes
from ccis.caption.base import Captioner
from ccis.caption.tokens import CLIP_CONTEXT, TokenCounter, fit_caption
from ccis.common.atomic import atomic_path
from ccis.data.manifest import read_manifest

log = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0 ≤ I < N)."""
    index, sep, total = text.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"shard must read I/N with 0 <= I < N, got {text!r}")
    return i, n


def _write_table(frame: pd.DataFrame, out: Path) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def caption_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    captioner: Captioner,
    counter: TokenCounter,
    *,
    max_tokens: int = CLIP_CONTEXT,
    shard: tuple[int, int] = (0, 1),
    relative_to: str | os.PathLike | None = None,
) -> Path:
    """Measure and caption shard ``shard`` of ``manifest``'s pairs; write them to ``out``.

    ``relative_to`` is the folder the written paths are relative to (default: ``out``'s).
    """
    manifest, out = Path(manifest), Path(out)
    base = Path(relative_to) if relative_to else out.parent
    frame = read_manifest(manifest).sort_values("id").reset_index(drop=True)
    index, total = shard
    part = frame.iloc[index::total]
    log.info(
        "captioning shard %d/%d of %s: %d of %d pairs with %s (%s); tokens counted by %s",
        index, total, manifest, len(part), len(frame), captioner.name, captioner.version,
        counter.name,
    )  # fmt: skip
    rows = []
    cut = fallbacks = 0
    for row in tqdm(part.to_dict("records"), desc=f"caption {index}/{total}", unit="pair"):
        image_path = manifest.parent / row["image"]
        mask_path = manifest.parent / row["mask"]
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if bgr is None or mask is None:
            missing = image_path if bgr is None else mask_path
            raise FileNotFoundError(f"{missing}: listed in {manifest} but cannot be read")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        attributes = measure_attributes(image, mask)
        png = image_path.read_bytes() if getattr(captioner, "mmproj", None) else None
        caption, n_tokens, was_cut = fit_caption(
            lambda drop, a=attributes, pid=row["id"], p=png: captioner.caption(pid, a, p, drop),
            counter,
            max_tokens,
        )
        cut += was_cut
        fallbacks += caption.captioner != captioner.name
        record = {
            "id": row["id"],
            "source": row["source"],
            "split": row["split"],
            "image": os.path.relpath(image_path, base),
            "mask": os.path.relpath(mask_path, base),
            "caption": caption.text,
            "attributes": attributes.to_dict(),
            "captioner": caption.captioner,
            "captioner_version": captioner.version,
            "caption_tokens": n_tokens,
            "caption_cut": was_cut,
            "caption_notes": caption.notes or None,
        }
        if "truth" in row and row["truth"] is not None:
            record["truth"] = row["truth"]
        rows.append(record)
    if cut:
        log.warning("%d caption(s) had to be cut to %d tokens", cut, max_tokens)
    if fallbacks:
        log.warning("%d caption(s) fell back from %s to the template", fallbacks, captioner.name)
    _write_table(pd.DataFrame(rows), out)
    log.info("wrote %d triplets to %s", len(rows), out)
    return out


def gather_triplets(parts: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join caption shards into one triplets file (sorted by id, ids unique)."""
    frames = [pd.read_parquet(p) for p in parts]
    frame = pd.concat(frames, ignore_index=True).sort_values("id").reset_index(drop=True)
    dupes = frame["id"][frame["id"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"caption shards overlap: ids {dupes[:10]} appear more than once")
    out = _write_table(frame, Path(out))
    log.info("gathered %d shard(s), %d triplets, into %s", len(parts), len(frame), out)
    return out
