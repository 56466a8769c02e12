"""The caption stage: a split's manifest → image–mask–text triplets (Parquet).

Captioning is sharded: shard ``i`` of ``n`` takes every ``n``-th pair (by id), so shards
are balanced and independent, and ``ccis gather`` joins them. Image and mask paths in
the triplets are relative to the triplets file's folder, like the manifests'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ccis.caption.attributes import measure_attributes
from ccis.caption.base import Captioner
from ccis.caption.tokens import CLIP_CONTEXT, TokenCounter, fit_caption
from ccis.common.images import read_gray, read_rgb
from ccis.common.shards import write_table
from ccis.data.manifest import read_manifest

log = logging.getLogger(__name__)


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
        image = read_rgb(image_path, manifest)
        mask = read_gray(mask_path, manifest)
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
    write_table(pd.DataFrame(rows), out)
    log.info("wrote %d triplets to %s", len(rows), out)
    return out
