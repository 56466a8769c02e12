"""Text adherence: does a generator's polyp turn paler when the prompt says "pale"?

For every training mask, the caption's colour phrase is replaced by "pale" in one prompt
and by "red" in the other; both images are drawn with the same seed, so the prompt is the
only difference. The polyp's colour is its median green/red ratio inside the mask (paler
tissue reflects more green; the captioner's colour measurement reads the same ratio). A
mask is a *win* when the "pale" polyp is paler. The rate of wins over every training mask
is the metric, with a 95 % bootstrap interval; 50 % is what a generator that ignores the
colour word gets by chance.

The same pairs give *colour localisation*: does the colour word change the polyp more
than the rest of the frame? Per mask, the mean absolute RGB change between the "pale" and
the "red" image inside the mask (``change_polyp``) and outside it (``change_background``);
the mask's score is ``change_polyp / (change_polyp + change_background)``. The metric is
its mean over masks (%), with a 95 % bootstrap interval: 50 % is a colour word that acts
on the whole frame alike, 100 % one that changes only the polyp.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ccis.caption.phrases import COLOUR_WORDS
from ccis.common.shards import write_table
from ccis.metrics.base import Computed, NotComputed, Result
from ccis.metrics.bootstrap import rate, rate_interval

log = logging.getLogger(__name__)

COLUMNS = ("real_id", "chroma_pale", "chroma_red", "text_win")
# Written since colour localisation was measured; a table without them is re-run.
LOCALISATION_COLUMNS = ("change_polyp", "change_background", "localisation")
_COLOUR = re.compile(
    r"\b("
    + "|".join(sorted((w for ws in COLOUR_WORDS.values() for w in ws), key=len, reverse=True))
    + r")\b"
)


def recolour(caption: str, colour: str) -> str:
    """The caption with its (first) polyp colour phrase replaced by ``colour``; a caption
    without one gets ``The polyp is <colour>.`` in front."""
    text, n = _COLOUR.subn(colour, caption, count=1)
    return text if n else f"The polyp is {colour}. {caption}"


def polyp_chroma(image: np.ndarray, mask: np.ndarray) -> float:
    """Median green/red ratio inside ``mask`` (> 0) of an RGB image (floats or uint8)."""
    region = np.asarray(image, dtype=float)[mask > 0]
    if region.size == 0:
        return float("nan")
    return float(np.median(region[:, 1]) / max(float(np.median(region[:, 0])), 1e-3))


def colour_change(pale: np.ndarray, red: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean absolute RGB change between two images of one mask, inside and outside it
    (NaN where a side has no pixels)."""
    change = np.abs(np.asarray(pale, dtype=float) - np.asarray(red, dtype=float)).mean(axis=-1)
    inside, outside = change[mask > 0], change[mask <= 0]
    return (
        float(inside.mean()) if inside.size else float("nan"),
        float(outside.mean()) if outside.size else float("nan"),
    )


def localisation(change_polyp: np.ndarray, change_background: np.ndarray) -> np.ndarray:
    """Share of the colour word's change that falls on the polyp, per pixel on each side:
    0.5 alike everywhere, 1 only the polyp; NaN where nothing changed or a side is empty."""
    total = np.asarray(change_polyp, float) + np.asarray(change_background, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.asarray(change_polyp, float) / total, np.nan)


def text_adherence_pairs(
    pipe,
    masks: list[np.ndarray],
    captions: list[str],
    seeds: list[int],
    *,
    steps: int = 20,
    guidance_scale: float = 7.0,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per mask (same seed for its two prompts): the polyp chroma of the "pale" and the
    "red" image and whether "pale" won (``text_win``), how much the pair differs inside
    and outside the mask and the share of that on the polyp (``localisation``)."""
    keys = ("chroma_pale", "chroma_red", "change_polyp", "change_background")
    out = {key: np.full(len(masks), np.nan) for key in keys}
    for start in tqdm(range(0, len(masks), batch_size), desc="text adherence", unit="batch"):
        chunk = range(start, min(start + batch_size, len(masks)))
        prompts = [recolour(captions[i], "pale") for i in chunk]
        prompts += [recolour(captions[i], "red") for i in chunk]
        chunk_masks = [masks[i] for i in chunk]
        chunk_seeds = [seeds[i] for i in chunk]
        with torch.no_grad():
            images = pipe(
                prompts, chunk_masks * 2, num_inference_steps=steps,
                guidance_scale=guidance_scale, seed=chunk_seeds * 2, progress=False,
            )  # fmt: skip
        half = len(chunk)
        for k, i in enumerate(chunk):
            out["chroma_pale"][i] = polyp_chroma(images[k], masks[i])
            out["chroma_red"][i] = polyp_chroma(images[half + k], masks[i])
            out["change_polyp"][i], out["change_background"][i] = colour_change(
                images[k], images[half + k], masks[i]
            )
    out["text_win"] = out["chroma_pale"] > out["chroma_red"]
    out["localisation"] = localisation(out["change_polyp"], out["change_background"])
    return out


def text_adherence(
    base: str | os.PathLike,
    branch: str | os.PathLike,
    triplets: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int = 20,
    guidance_scale: float = 7.0,
    resolution: int = 512,
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Run the pale-versus-red test on every triplet; write one row per mask to ``out``.

    Mask ``k`` (triplets sorted by id) uses seed ``seed + k`` for both of its prompts.
    Masks without polyp pixels have no colour to compare and are left out (logged).
    """
    from ccis.generator.synthesize import condition_mask, load_pipeline

    triplets = Path(triplets)
    frame = pd.read_parquet(triplets).sort_values("id").reset_index(drop=True)
    masks, captions, ids, seeds = [], [], [], []
    for k, row in enumerate(frame.itertuples(index=False)):
        _, mask = condition_mask(triplets.parent / row.mask, resolution, triplets, row.id)
        if not mask.any():
            continue
        masks.append(mask)
        captions.append(row.caption)
        ids.append(str(row.id))
        seeds.append(seed + k)
    left_out = len(frame) - len(ids)
    log.info(
        "text adherence of %s on %d masks of %s (%d without a polyp left out): DDIM %d, CFG %g",
        branch, len(ids), triplets, left_out, steps, guidance_scale,
    )  # fmt: skip
    if not ids:
        raise ValueError(f"{triplets}: no mask with a polyp, nothing to recolour")
    pipe = load_pipeline(base, branch)
    pairs = text_adherence_pairs(
        pipe, masks, captions, seeds, steps=steps, guidance_scale=guidance_scale,
        batch_size=batch_size,
    )  # fmt: skip
    rows = pd.DataFrame({"real_id": ids, **pairs})
    write_table(rows, out)
    log.info("wrote %s: pale paler than red on %.1f%% of %d masks; colour localisation "
             "%.1f%%", out, 100 * rows["text_win"].mean(), len(rows),
             100 * rows["localisation"].mean())  # fmt: skip
    return rows


def read_text_adherence(path: str | os.PathLike) -> pd.DataFrame:
    """A ``ccis text-adherence`` table, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no text-adherence table")
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a text-adherence table, missing columns {missing}")
    return frame


def _over_masks(values: np.ndarray, definition: str) -> Computed:
    """A per-mask rate (%) with its bootstrap interval; chance is 50 % for both metrics."""
    low, high = rate_interval(values)
    return Computed(
        rate(values),
        {
            "unit": "%",
            "ci95": [low, high],
            "interval": "95 % percentile bootstrap over masks",
            "n": int(np.isfinite(values).sum()),
            "chance": 50.0,
            "definition": definition,
        },
    )


def text_adherence_result(frame: pd.DataFrame) -> Result:
    """The metric: rate of wins (%) with its bootstrap interval."""
    if frame.empty:
        return NotComputed("no mask with a polyp to recolour")
    return _over_masks(
        frame["text_win"].astype(float).to_numpy(),
        "share of training masks whose polyp is paler (median G/R) when the prompt says "
        "'pale' than when it says 'red', same seed",
    )


def colour_localisation_result(frame: pd.DataFrame) -> Result:
    """The metric: mean share (%) of the colour word's change that falls on the polyp,
    with its bootstrap interval."""
    if not set(LOCALISATION_COLUMNS) <= set(frame.columns):
        return NotComputed(
            "the text-adherence table predates colour localisation: re-run text_adherence"
        )
    shares = frame["localisation"].to_numpy(float)
    if not np.isfinite(shares).any():
        return NotComputed("no mask whose pale and red images differ on both sides")
    return _over_masks(
        shares,
        "mean over training masks of change inside / (inside + outside), the mean absolute "
        "RGB change between the 'pale' and the 'red' image on each side of the mask: 50 = "
        "the colour word changes the whole frame alike, 100 = only the polyp",
    )
