"""Does a trained generator follow the text? Pale versus red prompts on the same masks.

The workflow's text-adherence metric (``ccis text-adherence``, Table 1) run on the first
``--count`` training masks of a results folder, for several generators at once: for each
mask, the caption's colour words become "pale" in one prompt and "red" in the other, both
drawn with the same seed; it prints, per generator, the share of masks whose polyp is
paler for "pale", and its colour localisation (of the change between the two images, the
share on the polyp; 50 % a frame-wide change), each with a 95 % bootstrap interval. With
``--sheet`` it also writes a contact sheet (mask | caption | one image per generator).

    python benchmarks/text_following.py [--count 40] [--sheet docs/demo_samples.png]
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from ccis.diffusion.pipeline import CCISPipeline
from ccis.diffusion.presets import load_sd15
from ccis.generator.registry import load_branch
from ccis.generator.synthesize import condition_mask
from ccis.metrics.bootstrap import rate, rate_interval
from ccis.metrics.text_adherence import text_adherence_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--generators", default="ccis,controlnet,ccis_no_taam")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--sheet", type=Path, help="write a contact sheet here")
    args = parser.parse_args()
    path = args.results / "captions" / f"{args.split}.parquet"
    triplets = pd.read_parquet(path).sort_values("id").head(args.count)
    masks, captions = [], []
    for row in triplets.itertuples():
        masks.append(condition_mask(path.parent / row.mask, args.resolution, path, row.id)[1])
        captions.append(row.caption)
    base = load_sd15(args.results / "models" / "base")
    print(f"{len(masks)} training masks; prompts name 'pale' versus 'red'; same seed per mask")
    print(
        f"{'generator':<16}{'pale paler than red':>22}{'95 % interval':>18}"
        f"{'colour localisation':>22}{'95 % interval':>18}"
    )
    samples = {}
    seeds = list(range(len(masks)))
    for generator in args.generators.split(","):
        folder = args.results / "models" / generator
        if not folder.is_dir():
            print(f"{generator:<16}{'not trained':>22}")
            continue
        pipe = CCISPipeline(controlnet=load_branch(folder).eval(), **base)
        pairs = text_adherence_pairs(pipe, masks, captions, seeds)
        if args.sheet:  # the captions' own images, for the contact sheet only
            with torch.no_grad():
                samples[generator] = pipe(captions, masks, seed=seeds, progress=False)
        cells = []
        for values in (pairs["text_win"].astype(float), pairs["localisation"]):
            low, high = rate_interval(values)
            cells.append(f"{rate(values):>21.0f}%{f'[{low:.0f}, {high:.0f}] %':>18}")
        print(f"{generator:<16}{''.join(cells)}")
    if args.sheet:
        write_sheet(args.sheet, masks, captions, samples)
        print(f"wrote {args.sheet}")


def write_sheet(path: Path, masks, captions, samples: dict, rows: int = 6, tile: int = 160) -> None:
    """mask | caption | one image per generator, for the first ``rows`` pairs."""
    names = list(samples)
    lines = []
    header = np.full((28, tile * (2 + len(names)), 3), 255, np.uint8)
    for k, title in enumerate(["mask", "caption", *names]):
        cv2.putText(header, title, (k * tile + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    lines.append(header)
    for i in range(min(rows, len(masks))):
        cells = [
            cv2.resize(
                np.repeat(masks[i][..., None], 3, axis=2),
                (tile, tile),
                interpolation=cv2.INTER_NEAREST,
            )
        ]
        text = np.full((tile, tile, 3), 255, np.uint8)
        for j, line in enumerate(textwrap.wrap(captions[i], 26)[:11]):
            cv2.putText(text, line, (3, 12 + 13 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1)
        cells.append(text)
        for name in names:
            image = (samples[name][i] * 255).round().astype(np.uint8)
            cells.append(
                cv2.cvtColor(
                    cv2.resize(image, (tile, tile), interpolation=cv2.INTER_CUBIC),
                    cv2.COLOR_RGB2BGR,
                )
            )
        lines.append(np.hstack(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(lines))


if __name__ == "__main__":
    main()
