"""Benchmark attribute measurement and template captioning on the phantom training split.

Prints, for the phantom training split rendered at 352×352 (centre 0, the default
config's seed): how often each measured attribute agrees with the generator's ground
truth, and the pairs per second of measurement + template captioning (token count
included) on one CPU core, images already in memory.

    python benchmarks/caption_bench.py [--count 160] [--seed 2024] [--size 352]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# One core: keep OpenCV and the BLAS libraries from spreading over more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402

from ccis.caption.attributes import measure_attributes  # noqa: E402
from ccis.caption.template import TemplateCaptioner  # noqa: E402
from ccis.caption.tokens import TokenCounter, fit_caption  # noqa: E402
from ccis.data.phantom import render_phantom  # noqa: E402

ATTRIBUTES = ("colour", "size", "location", "n_polyps", "shape", "texture", "swelling",
              "debris", "highlights", "folds")  # fmt: skip
TARGETS = {"colour": 0.9, "size": 0.9, "location": 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=160, help="training pairs (default 160)")
    parser.add_argument("--seed", type=int, default=2024, help="phantom seed (config.yaml's)")
    parser.add_argument("--size", type=int, default=352, help="frame side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    samples = [render_phantom(args.seed, 0, i, args.size, args.size) for i in range(args.count)]
    captioner = TemplateCaptioner(seed=0)
    counter = TokenCounter()

    def run_once() -> tuple[list, float]:
        start = time.perf_counter()
        out = []
        for i, s in enumerate(samples):
            a = measure_attributes(s.image, s.mask)
            fit_caption(lambda d, a=a, i=i: captioner.caption(f"p{i}", a, None, d), counter)
            out.append(a)
        return out, time.perf_counter() - start

    runs = [run_once() for _ in range(args.repeats)]
    measured = runs[0][0]
    best = min(t for _, t in runs)

    print(
        f"phantom training split: {args.count} pairs at {args.size}×{args.size}, seed {args.seed}"
    )
    print(f"{'attribute':<12}{'agreement':>10}  target")
    failed = False
    agreement = {}
    for key in ATTRIBUTES:
        rate = sum(
            getattr(a, key) == getattr(s.truth, key) for a, s in zip(measured, samples, strict=True)
        )
        rate /= len(samples)
        agreement[key] = rate
        target = TARGETS.get(key)
        mark = (
            "" if target is None else (f"≥ {target:.0%} " + ("ok" if rate >= target else "MISSED"))
        )
        failed |= target is not None and rate < target
        print(f"{key:<12}{rate:>10.1%}  {mark}")
    rate = args.count / best
    print(f"measurement + template caption: {rate:.0f} pairs/s on one core "
          f"(target ≥ 100: {'ok' if rate >= 100 else 'MISSED'})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"pairs_per_s": rate, "agreement": agreement}))
    raise SystemExit(1 if failed or rate < 100 else 0)


if __name__ == "__main__":
    main()
