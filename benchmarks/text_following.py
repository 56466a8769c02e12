"""Does a trained generator follow the text? Pale versus red prompts on the same masks.

For each training mask, the caption's colour words are replaced by "pale" in one prompt
and by "red" in the other; both are generated with the same seed. The colour of the
generated polyp (median green/red chromaticity inside the mask, as the captioner
measures it) should be paler for "pale": the script prints, per generator, the share of
masks where it is. With ``--sheet`` it also writes a contact sheet (mask | caption |
one image per generator).

    python benchmarks/text_following.py [--count 40] [--sheet docs/demo_samples.png]
"""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from ccis.caption.phrases import COLOUR_WORDS
from ccis.diffusion.pipeline import CCISPipeline
from ccis.diffusion.presets import load_sd15
from ccis.generator.synthesize import load_branch

_COLOUR = re.compile(
    r"\b("
    + "|".join(sorted((w for ws in COLOUR_WORDS.values() for w in ws), key=len, reverse=True))
    + r")\b"
)


def recolour(caption: str, colour: str) -> str:
    """The caption with every polyp colour phrase replaced by ``colour``."""
    text, n = _COLOUR.subn(colour, caption, count=1)
    return text if n else f"The polyp is {colour}. {caption}"


def polyp_chroma(image: np.ndarray, mask: np.ndarray) -> float:
    """Median green/red ratio of the polyp region of an RGB float image."""
    region = image[mask > 0]
    return float(np.median(region[:, 1]) / max(float(np.median(region[:, 0])), 1e-3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--generators", default="ccis,controlnet,ccis_no_taam")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--sheet", type=Path, help="write a contact sheet here")
    args = parser.parse_args()
    triplets = pd.read_parquet(args.results / "captions" / f"{args.split}.parquet").head(args.count)
    masks, captions = [], []
    for row in triplets.itertuples():
        mask = cv2.imread(str(args.results / "captions" / row.mask), cv2.IMREAD_GRAYSCALE)
        masks.append(cv2.resize(mask, (args.resolution,) * 2, interpolation=cv2.INTER_NEAREST))
        captions.append(row.caption)
    base = load_sd15(args.results / "models" / "base")
    print(f"{len(masks)} training masks; prompts name 'pale' versus 'red'; same seed per mask")
    print(f"{'generator':<16}{'pale paler than red':>22}")
    samples = {}
    for generator in args.generators.split(","):
        folder = args.results / "models" / generator
        if not folder.is_dir():
            print(f"{generator:<16}{'not trained':>22}")
            continue
        pipe = CCISPipeline(controlnet=load_branch(folder).eval(), **base)
        seeds = list(range(len(masks)))
        with torch.no_grad():
            pale = pipe([recolour(c, "pale") for c in captions], masks, seed=seeds, progress=False)
            red = pipe([recolour(c, "red") for c in captions], masks, seed=seeds, progress=False)
            samples[generator] = pipe(captions, masks, seed=seeds, progress=False)
        wins = [
            polyp_chroma(p, m) > polyp_chroma(r, m)
            for p, r, m in zip(pale, red, masks, strict=True)
        ]
        print(f"{generator:<16}{np.mean(wins):>21.0%}")
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
