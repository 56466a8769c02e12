"""Training and inference images/s of the segmenters on CPU (demo backbones by default).

python benchmarks/segmentation_bench.py [--size 64 --scales 1 --threads 1] [--json FILE]

Defaults are the demo's settings (config.yaml: 64², one scale, batch 16).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ccis.segmentation.data import scale_sizes
from ccis.segmentation.loss import boundary_weights, structure_loss
from ccis.segmentation.models import build_segmenter
from ccis.segmentation.registry import REGISTRY
from ccis.segmentation.train import make_optimizer


def bench(model_name: str, backbone: str, size: int, batch: int, scales: list[float], steps: int):
    """(training images/s over the multi-scale steps, inference images/s at ``size``)."""
    torch.manual_seed(0)
    model = build_segmenter(model_name, backbone)
    optimizer = make_optimizer(model_name, model.parameters(), 1e-4, 0.0)
    masks = (torch.rand(batch, 1, size, size) > 0.7).float()
    images = torch.randn(batch, 3, size, size)
    sizes = scale_sizes(size, scales)
    model.train()
    seen, began = 0, 0.0
    for step in range(steps + 1):  # the first step warms up
        if step == 1:
            began, seen = time.perf_counter(), 0
        for s in sizes:
            x = torch.nn.functional.interpolate(images, size=(s, s), mode="bilinear")
            m = torch.nn.functional.interpolate(masks, size=(s, s), mode="bilinear")
            w = boundary_weights(m)
            loss = sum(structure_loss(o, m, w) for o in model(x))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
            optimizer.step()
            seen += batch
    train_rate = seen / (time.perf_counter() - began)
    model.eval()
    with torch.no_grad():
        model(images)
        began = time.perf_counter()
        for _ in range(steps):
            model.final_logits(model(images))
        infer_rate = steps * batch / (time.perf_counter() - began)
    return train_rate, infer_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scales", default="1")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone", action="append", help="MODEL=BACKBONE (default: demo)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = [(name, entry.demo_backbone) for name, entry in REGISTRY.items()]
    pairs = [tuple(b.split("=", 1)) for b in args.backbone or []] or demo
    scales = [float(s) for s in args.scales.split(",")]
    print(f"size {args.size}, batch {args.batch_size}, sizes {scale_sizes(args.size, scales)}, "
          f"{args.threads} thread(s)")  # fmt: skip
    numbers = {}
    for model_name, backbone in pairs:
        train_rate, infer_rate = bench(
            model_name, backbone, args.size, args.batch_size, scales, args.steps
        )
        numbers[model_name] = {
            "backbone": backbone, "size": args.size, "train_images_per_s": train_rate,
            "inference_images_per_s": infer_rate,
        }  # fmt: skip
        print(f"{model_name:10s} {backbone:12s} train {train_rate:7.1f} img/s (one image at one "
              f"scale = one image)   inference {infer_rate:7.1f} img/s")  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(numbers))


if __name__ == "__main__":
    main()
