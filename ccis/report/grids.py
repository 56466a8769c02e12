"""Qualitative grids in the style of the paper's Fig. 3 (generators) and Fig. 4 (ablations).

Rows are (training mask, prompt) pairs: each chosen mask with its own caption and a few
attribute-swapped variants of it ("a pale …" / "a red …", rough ↔ smooth, flat ↔
swollen); columns are the mask, the prompt and one image per generator. Every generator
draws the same noise for a given mask (seed ``seed + mask index``), so differences
between columns come from the generators and differences between rows of one mask
come from the prompt alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ccis.caption.phrases import COLOUR_WORDS, SWELLING_WORDS, TEXTURE_WORDS, polyp_clause
from ccis.common.atomic import atomic_path
from ccis.common.device import default_device
from ccis.common.images import read_gray
from ccis.generator.registry import short_label

log = logging.getLogger(__name__)

# Attribute swaps, in the order variants are offered: colour first (the paper's Fig. 3
# prompts differ mostly in colour), then texture, then swelling.
SWAPS: tuple[tuple[str, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]], ...] = (
    ("colour", COLOUR_WORDS, {k: (k,) for k in COLOUR_WORDS}),
    ("texture", TEXTURE_WORDS, {k: (k,) for k in TEXTURE_WORDS}),
    ("swelling", SWELLING_WORDS, {"flat": ("flat",), "significant": ("significantly swollen",)}),
)

# Layout in pixels (the figure is drawn at DPI dots per inch, so sizes are exact).
DPI = 100
PAD = 8
HEADER = 40  # room for two lines of column title
TITLE = 36


@dataclass(frozen=True)
class GridRow:
    """One row of the grid: a mask, a prompt and the seed all generators use for it."""

    mask_id: str
    mask: np.ndarray  # H×W uint8 0/255 at the generation resolution
    prompt: str
    variant: str  # "caption" or e.g. "colour=red"
    seed: int


def grid_size(n_rows: int, n_generators: int, tile: int, title: bool = False) -> tuple[int, int]:
    """Width and height in pixels of a grid of ``n_rows`` rows and ``n_generators`` columns."""
    text = _text_width(tile)
    width = PAD + (tile + PAD) + (text + PAD) + n_generators * (tile + PAD)
    height = (TITLE if title else 0) + HEADER + n_rows * (tile + PAD) + PAD
    return width, height


def _text_width(tile: int) -> int:
    # Captions run to ~40 words: give them room even when tiles are small.
    return max(2 * tile, 320)


def _swap_words(text: str, words: dict[str, tuple[str, ...]], target: str) -> str | None:
    """``text`` with the polyp clause's words of one attribute replaced by ``target``.

    Returns None when the polyp clause names no value of this attribute.
    """
    head = polyp_clause(text)
    vocabulary = sorted({w for options in words.values() for w in options}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in vocabulary) + r")\b", re.I)
    if not pattern.search(head):
        return None

    def keep_case(match: re.Match) -> str:
        word = match.group(0)
        return target[:1].upper() + target[1:] if word[:1].isupper() else target

    return pattern.sub(keep_case, head) + text[len(head) :]


def _template_variant(pair_id: str, attributes: Mapping, field: str, value: str) -> str | None:
    """The template captioner's caption of ``attributes`` with ``field`` set to ``value``."""
    from ccis.caption.attributes import Attributes
    from ccis.caption.template import TemplateCaptioner

    try:
        known = {f.name for f in dataclasses.fields(Attributes)}
        swapped = Attributes(**{k: v for k, v in attributes.items() if k in known})
        swapped = dataclasses.replace(swapped, **{field: value})
        return TemplateCaptioner().caption(pair_id, swapped).text
    except (TypeError, KeyError, ValueError):
        return None


def prompt_variants(
    caption: str, attributes: Mapping | None = None, pair_id: str = "", count: int = 3
) -> list[tuple[str, str]]:
    """Up to ``count`` (variant name, prompt) pairs: the caption, then attribute swaps.

    A swap edits the caption's own words where the polyp clause names the attribute (so
    only that attribute changes); otherwise, given the measured ``attributes``, the
    template captioner re-phrases them with the attribute swapped.
    """
    out = [("caption", caption)]
    attributes = dict(attributes) if attributes is not None else None
    for field, words, targets in SWAPS:
        current = attributes.get(field) if attributes else None
        for value, (target,) in targets.items():
            if len(out) >= count:
                return out
            if value == current:
                continue
            prompt = _swap_words(caption, words, target)
            if prompt is None and attributes:
                prompt = _template_variant(pair_id, attributes, field, value)
            if prompt is not None and prompt not in {p for _, p in out}:
                out.append((f"{field}={value}", prompt))
    return out[:count]


def choose_rows(
    triplets: str | os.PathLike,
    n_masks: int,
    prompts_per_mask: int,
    resolution: int,
    seed: int,
) -> list[GridRow]:
    """Pick ``n_masks`` training masks spread over the id-sorted triplets; give each its
    caption and attribute-swapped prompts."""
    triplets = Path(triplets)
    if not triplets.is_file():
        raise FileNotFoundError(f"{triplets}: triplets Parquet not found")
    frame = pd.read_parquet(triplets)
    missing = [c for c in ("id", "mask", "caption") if c not in frame.columns]
    if missing:
        raise ValueError(f"{triplets}: not a triplets table, missing columns {missing}")
    frame = frame.sort_values("id").reset_index(drop=True)
    if "attributes" in frame.columns:
        # Frames without a polyp have nothing for a prompt to steer.
        has_polyp = frame["attributes"].map(lambda a: a is None or a.get("n_polyps", 1) > 0)
        frame = frame[has_polyp.astype(bool)].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{triplets}: no triplet with a polyp to draw")
    if n_masks < 1 or prompts_per_mask < 1:
        raise ValueError("--masks and --prompts-per-mask must be at least 1")
    picks = np.unique(np.linspace(0, len(frame) - 1, min(n_masks, len(frame))).round().astype(int))
    rows = []
    for k, index in enumerate(picks):
        record = frame.iloc[int(index)]
        path = triplets.parent / record["mask"]
        mask = read_gray(path, triplets)
        mask = cv2.resize(
            ((mask > 127) * 255).astype(np.uint8), (resolution, resolution),
            interpolation=cv2.INTER_NEAREST,
        )  # fmt: skip
        attributes = record["attributes"] if "attributes" in frame.columns else None
        variants = prompt_variants(record["caption"], attributes, record["id"], prompts_per_mask)
        if len(variants) < prompts_per_mask:
            log.warning("%s: only %d prompt variant(s) could be built", record["id"], len(variants))
        for name, prompt in variants:
            rows.append(GridRow(record["id"], mask, prompt, name, seed + k))
    return rows


def generate_columns(
    base: str | os.PathLike,
    branches: Mapping[str, str | os.PathLike],
    rows: Sequence[GridRow],
    *,
    steps: int = 20,
    guidance_scale: float = 7.0,
    batch_size: int = 4,
) -> dict[str, np.ndarray]:
    """Images (N×H×W×3 floats in [0, 1]) for every row, one array per generator."""
    from ccis.diffusion.pipeline import CCISPipeline
    from ccis.diffusion.presets import load_sd15
    from ccis.generator.registry import load_branch

    device = default_device()
    parts = load_sd15(base)
    columns = {}
    for name, folder in branches.items():
        log.info("generating %d images with %s from %s on %s", len(rows), name, folder, device)
        pipe = CCISPipeline(controlnet=load_branch(folder).eval(), **parts)
        pipe.to(device)
        images = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            images.append(
                pipe(
                    [r.prompt for r in chunk],
                    [r.mask for r in chunk],
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    seed=[r.seed for r in chunk],
                    progress=False,
                )  # fmt: skip
            )
        columns[name] = np.concatenate(images)
        # The next branch shares the base: only the branch is dropped.
        del pipe
    return columns


def draw_grid(
    rows: Sequence[GridRow],
    columns: Mapping[str, np.ndarray],
    out: str | os.PathLike,
    *,
    tile: int = 192,
    title: str | None = None,
) -> Path:
    """Draw mask | prompt | one image per generator, one line per row; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    width, height = grid_size(len(rows), len(columns), tile, title=bool(title))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.patch.set_facecolor("white")
    text_w = _text_width(tile)
    font = 9 if tile >= 128 else 7  # points
    em = font * DPI / 72  # pixels
    # DejaVu Sans averages ~0.6 em per character; wrap a little short of the column.
    chars = max(20, int(0.95 * text_w / (0.6 * em)))
    max_lines = max(2, int(tile / (1.25 * em)))

    def axes(x: int, y: int, w: int, h: int):
        # Pixel box (x, y from the top-left) → figure fractions.
        return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))

    top = TITLE if title else 0
    if title:
        fig.text(0.5, 1 - (TITLE / 2) / height, title, ha="center", va="center", fontsize=12)
    x_mask, x_text = PAD, PAD + tile + PAD
    x_gen = [x_text + text_w + PAD + k * (tile + PAD) for k in range(len(columns))]
    headers = [(x_mask, tile, "mask"), (x_text, text_w, "prompt")]
    headers += [(x, tile, short_label(n)) for x, n in zip(x_gen, columns, strict=True)]
    head_font = 10 if tile >= 128 else 7
    for x, w, label in headers:
        # Long method names wrap onto a second line rather than run into the next column.
        fitted = "\n".join(textwrap.wrap(label, max(6, int(w / (0.62 * head_font * DPI / 72)))))
        fig.text((x + w / 2) / width, 1 - (top + HEADER / 2) / height, fitted,
                 ha="center", va="center", fontsize=head_font, weight="bold")  # fmt: skip
    for i, row in enumerate(rows):
        y = top + HEADER + i * (tile + PAD)
        ax = axes(x_mask, y, tile, tile)
        ax.imshow(row.mask, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        ax = axes(x_text, y, text_w, tile)
        ax.set_axis_off()
        lines = textwrap.wrap(row.prompt, chars)
        if row.variant != "caption":
            lines.insert(0, f"[{row.variant}]")
        if len(lines) > max_lines:
            # The log lists every prompt in full; the figure shows what fits.
            lines = lines[: max_lines - 1] + [lines[max_lines - 1][: chars - 1] + "…"]
        body = "\n".join(lines)
        ax.text(0.0, 0.5, body, ha="left", va="center", fontsize=font, wrap=False,
                transform=ax.transAxes, family="DejaVu Sans")  # fmt: skip
        for x, images in zip(x_gen, columns.values(), strict=True):
            ax = axes(x, y, tile, tile)
            ax.imshow(np.clip(images[i], 0, 1), interpolation="antialiased")
            ax.set_axis_off()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return out


def figure_grid(
    base: str | os.PathLike,
    branches: Mapping[str, str | os.PathLike],
    triplets: str | os.PathLike,
    out: str | os.PathLike,
    *,
    masks: int = 3,
    prompts_per_mask: int = 3,
    steps: int = 20,
    guidance_scale: float = 7.0,
    resolution: int = 512,
    seed: int = 0,
    batch_size: int = 4,
    tile: int = 192,
    title: str | None = None,
) -> Path:
    """Fig. 3/4-style grid: chosen masks × prompt variants × generators, written as a PNG."""
    if not branches:
        raise ValueError("figure-grid: give at least one --branch GEN=DIR")
    for name, folder in branches.items():
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: branch {name!r} is not a trained branch folder")
    rows = choose_rows(triplets, masks, prompts_per_mask, resolution, seed)
    log.info(
        "grid of %d rows (%d masks of %s) × %d generators (%s): DDIM %d, CFG %g, %d px, seed %d",
        len(rows), len({r.mask_id for r in rows}), triplets, len(branches),
        ", ".join(branches), steps, guidance_scale, resolution, seed,
    )  # fmt: skip
    for row in rows:
        log.info("  %s seed %d [%s]: %s", row.mask_id, row.seed, row.variant, row.prompt)
    columns = generate_columns(
        base, branches, rows, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size
    )
    path = draw_grid(rows, columns, out, tile=tile, title=title)
    log.info("wrote %s", path)
    return path
