"""All generation metrics of one generator's synthetic set, written to one JSON file.

JSON layout (keys sorted, no timestamps, so equal inputs give equal bytes)::

    {"generator": "ccis", "synthetic": PATH, "real": PATH, "n_synthetic": N, "n_real": M,
     "per_image": FILE or null,
     "metrics": {"fid": {...}, "clip_score": {...}, "clip_image": {...},
                 "text_adherence": {...}, "colour_localisation": {...},
                 "attribute_agreement": {...},
                 "mask_fidelity": {...}}}

where each metric is ``{"status": "computed", "value": x, ...details}`` or
``{"status": "not computed", "reason": "..."}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ccis import __version__
from ccis.common.atomic import write_bytes_atomic
from ccis.common.device import default_device
from ccis.common.images import read_rgb
from ccis.common.shards import write_table
from ccis.metrics.agreement import SCORED_ATTRIBUTES, attribute_agreement
from ccis.metrics.base import NotComputed, Result, read_mask, read_pairs
from ccis.metrics.fidelity import Segment, load_segment, mask_fidelity
from ccis.metrics.text_adherence import (
    colour_localisation_result,
    read_text_adherence,
    text_adherence_result,
)

log = logging.getLogger(__name__)

METRICS = (
    "fid", "clip_score", "clip_image", "text_adherence", "colour_localisation",
    "attribute_agreement", "mask_fidelity",
)  # fmt: skip
# Why an external set (another tool's image–mask folder) has no value for these: they
# score an image against the prompt it was drawn for or the real pair it was drawn from,
# or draw new images. Captioning its images from their own pixels would score the image
# against a description of itself (attribute agreement would be ~100 % by construction).
EXTERNAL_REASONS = {
    "clip_score": "an imported set has no prompts (a caption measured from the image itself "
    "would score the image against its own description)",
    "clip_image": "an imported set has no real source image per synthetic image",
    "text_adherence": "an imported set has no generator to prompt",
    "colour_localisation": "an imported set has no generator to prompt",
    "attribute_agreement": "an imported set has no prompts to agree with",
}


def generation_metrics(
    generator: str,
    synthetic: str | os.PathLike,
    real: str | os.PathLike,
    out: str | os.PathLike,
    *,
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | os.PathLike | None = None,
    clip_cache: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    segment: Segment | None = None,
    inception_dir: str | os.PathLike | None = None,
    fid_feature_extractor: Callable | None = None,
    fid_mode: str = "clean",
    agreement_attributes: Sequence[str] = SCORED_ATTRIBUTES,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
    per_image: str | os.PathLike | None = None,
    text_adherence: str | os.PathLike | None = None,
    external: str | None = None,
) -> dict:
    """Compute FID, CLIP-score, CLIP-image, attribute agreement and mask fidelity.

    ``synthetic`` is the generator's manifest (``ccis synthesize``), ``real`` the training
    triplets it was conditioned on (``ccis caption``). Metrics whose weights are not
    available offline are recorded as not computed, with the reason. ``segment`` and
    ``fid_feature_extractor`` replace the segmenter folder and Inception (tests, custom
    networks). ``text_adherence`` is the generator's ``ccis text-adherence`` table (it
    draws its own images, so it is a job of its own). Writes ``out`` (JSON) and, if
    given, ``per_image`` (Parquet, one row per synthetic image), atomically.

    ``external`` (the set's label) scores a set made by another tool and imported with
    ``ccis prepare``: FID and mask fidelity as for ours; CLIP-score, CLIP-image, text
    adherence and attribute agreement are not computed (:data:`EXTERNAL_REASONS`).
    """
    from ccis.metrics.clip_scores import clip_scores, load_clip
    from ccis.metrics.fid import compute_fid

    out = Path(out)
    device = device or default_device()
    pairs = read_pairs(synthetic, real, external=external is not None)
    results: dict[str, Result] = {}
    if external is not None:
        results.update({k: NotComputed(reason) for k, reason in EXTERNAL_REASONS.items()})
    rows = pd.DataFrame({"id": pairs.ids, "real_id": pairs.real_ids or [None] * len(pairs.ids)})

    results["fid"] = compute_fid(
        pairs.images, pairs.all_real_images, feature_extractor=fid_feature_extractor,
        inception_dir=inception_dir, mode=fid_mode, batch_size=batch_size,
        num_workers=num_workers, device=device,
    )  # fmt: skip

    # An external set has neither prompts nor source images: its text metrics and
    # CLIP-image were set to not computed above.
    if external is None:
        clip = load_clip(clip_model, clip_pretrained, device=device, cache_dir=clip_cache)
        if isinstance(clip, NotComputed):
            log.warning("CLIP-score and CLIP-image not computed: %s", clip.reason)
            results["clip_score"] = results["clip_image"] = clip
        else:
            score, image, per_score, per_clip_image = clip_scores(
                clip, pairs.images, pairs.captions, pairs.real_images, batch_size=batch_size
            )
            results["clip_score"], results["clip_image"] = score, image
            rows["clip_score"], rows["clip_image"] = per_score, per_clip_image
            del clip  # free the model before the segmenter is loaded

        if text_adherence is None:
            results["text_adherence"] = NotComputed("no text-adherence table given")
            results["colour_localisation"] = results["text_adherence"]
        else:
            table = read_text_adherence(text_adherence)
            results["text_adherence"] = text_adherence_result(table)
            results["colour_localisation"] = colour_localisation_result(table)
            by_mask = table.set_index(table["real_id"].astype(str))
            real_ids = rows["real_id"].astype(str)
            rows["text_win"] = [by_mask["text_win"].get(r) for r in real_ids]
            if "localisation" in by_mask:
                rows["localisation"] = [by_mask["localisation"].get(r) for r in real_ids]

    def samples():
        for image_path, mask_path, prompt in zip(
            pairs.images, pairs.masks, pairs.prompt_attributes, strict=True
        ):
            image = read_rgb(image_path)
            yield image, read_mask(mask_path, image.shape[:2]), prompt

    if external is None:
        agreement, matches = attribute_agreement(
            samples(), scored=agreement_attributes, total=len(pairs.ids)
        )
        results["attribute_agreement"] = agreement
        rows = pd.concat([rows, pd.DataFrame(matches)], axis=1)

    name = "custom" if segment is not None else str(segmenter)
    if segment is None:
        segment = load_segment(segmenter, device=device, batch_size=batch_size)
    if isinstance(segment, NotComputed):
        log.warning("mask fidelity not computed: %s", segment.reason)
        results["mask_fidelity"] = segment
    else:
        fidelity, dices = mask_fidelity(
            pairs.images, pairs.masks, segment, batch_size=batch_size, segmenter=name
        )
        results["mask_fidelity"] = fidelity
        rows["dice"] = dices

    report = {
        "generator": generator,
        "synthetic": str(synthetic),
        "real": str(real),
        "n_synthetic": len(pairs.ids),
        "n_real": len(pairs.all_real_images),
        "per_image": (os.path.relpath(per_image, out.parent) if per_image is not None else None),
        "ccis_version": __version__,
        "metrics": {k: results[k].to_dict() for k in METRICS},
    }
    if external is not None:
        report["external"] = {"label": external}
    # allow_nan=False: a NaN would make the file unreadable by strict JSON parsers.
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    write_bytes_atomic(out, (text + "\n").encode())
    if per_image is not None:
        write_table(rows, per_image)
        log.info("wrote per-image metrics of %d images to %s", len(rows), per_image)
    summary = ", ".join(
        f"{k} {r.value:.3f}" if not isinstance(r, NotComputed) else f"{k} not computed"
        for k, r in results.items()
    )
    log.info("wrote %s: %s", out, summary)
    return report
