"""Attribute agreement: does the generated polyp look the way its prompt says?

Each synthetic image is measured with the captioner's own measurement
(``ccis.caption.attributes.measure_attributes``, on the image and its conditioning mask)
and compared with the attributes the source caption was grounded in (the triplet's
``attributes`` struct). This automates the paper's user-study column "text accuracy".

Which attributes say something about the generator: colour and texture are read from the
pixels and appear in every template caption, so they form the score. Size, location and
shape are read from the mask alone, and the conditioning mask *is* the source mask, so
their agreement is a sanity check of the pipeline, not of the generator; swelling is
measured from shading and agrees with the phantom ground truth only ~60% of the time
(benchmarks/caption_bench.py), too noisy to score. All are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ccis.metrics.base import Computed, NotComputed, Result
from ccis.metrics.bootstrap import rate_interval

log = logging.getLogger(__name__)

SCORED_ATTRIBUTES = ("colour", "texture")
REPORTED_ATTRIBUTES = ("colour", "texture", "swelling", "size", "location", "shape")
MASK_DERIVED = ("size", "location", "shape")


def attribute_agreement(
    samples: Iterable[tuple[np.ndarray, np.ndarray, Mapping]],
    *,
    scored: Sequence[str] = SCORED_ATTRIBUTES,
    reported: Sequence[str] = REPORTED_ATTRIBUTES,
    total: int | None = None,
) -> tuple[Result, list[dict]]:
    """Agreement of measured with prompted attributes over ``(image, mask, prompt)`` samples.

    ``image`` is RGB uint8, ``mask`` 0/255, ``prompt`` the source's attribute mapping. An
    attribute the prompt does not state (missing, or "none": no polyp) is not compared.
    The value is the mean over ``scored`` of the per-attribute agreement rates, in percent.
    Returns the result and, per sample, a dict of ``<attribute>_match`` (True/False/None).
    """
    from ccis.caption.attributes import measure_attributes

    if not scored:
        raise ValueError("attribute agreement needs at least one scored attribute")
    unknown = sorted(set(scored) - set(reported))
    if unknown:
        raise ValueError(f"scored attributes {unknown} are not among {list(reported)}")
    matches: dict[str, list[bool]] = {a: [] for a in reported}
    confusion: dict[str, dict[str, dict[str, int]]] = {a: {} for a in reported}
    per_sample: list[dict] = []
    for image, mask, prompt in tqdm(samples, desc="attribute agreement", unit="img", total=total):
        measured = measure_attributes(image, mask).to_dict()
        row: dict = {}
        for attribute in reported:
            wanted = prompt.get(attribute)
            if wanted is None or wanted == "none":
                row[f"{attribute}_match"] = None
                continue
            got = measured[attribute]
            hit = bool(got == wanted)
            matches[attribute].append(hit)
            cell = confusion[attribute].setdefault(str(wanted), {})
            cell[str(got)] = cell.get(str(got), 0) + 1
            row[f"{attribute}_match"] = hit
        per_sample.append(row)
    rates = {a: 100.0 * float(np.mean(m)) if m else None for a, m in matches.items()}
    scored_rates = [rates[a] for a in scored if rates[a] is not None]
    if not scored_rates:
        return NotComputed(
            f"no synthetic image's prompt states any of {list(scored)} (no polyp in the masks?)"
        ), per_sample
    details = {
        "unit": "%",
        "scored_attributes": list(scored),
        "per_attribute": {a: rates[a] for a in reported},
        "compared": {a: len(matches[a]) for a in reported},
        "mask_derived_attributes": [a for a in reported if a in MASK_DERIVED],
        "confusion": {a: _sorted(c) for a, c in confusion.items()},
        "definition": (
            "mean over the scored attributes of the share of synthetic images whose "
            "re-measured attribute equals the source caption's"
        ),
        "n": len(per_sample),
    }
    value = float(np.mean(scored_rates))
    low, high = rate_interval(match_matrix(per_sample, scored))
    details["ci95"] = [low, high]
    details["interval"] = "95 % percentile bootstrap over images"
    log.info(
        "attribute agreement = %.1f%% [%.1f, %.1f] (%s)", value, low, high,
        ", ".join(f"{a} {r:.1f}%" for a, r in rates.items() if r is not None),
    )  # fmt: skip
    return Computed(value, details), per_sample


def match_matrix(rows: Sequence[Mapping], attributes: Sequence[str]) -> np.ndarray:
    """Images × attributes of 1 (match), 0 (no match) or NaN (not stated), from the
    per-sample ``<attribute>_match`` dicts (or a per-image table's records)."""
    out = np.full((len(rows), len(attributes)), np.nan)
    for i, row in enumerate(rows):
        for j, attribute in enumerate(attributes):
            hit = row.get(f"{attribute}_match")
            if hit is not None and not (isinstance(hit, float) and np.isnan(hit)):
                out[i, j] = float(bool(hit))
    return out


def _sorted(confusion: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Prompted → measured counts with sorted keys (stable JSON)."""
    return {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())}
