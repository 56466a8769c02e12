"""Synthesize a data set: one image per original training mask, with its caption (§3.3).

Shard ``i`` of ``n`` takes every ``n``-th triplet and owns its image folder. Each image is
written (atomically) as soon as it exists, so a re-run after a kill generates only the
missing ones; a folder holding images of another model or setting is cleared first. Images
are generated at the model's resolution and resized to the original mask's size; the
mask is the original, so image and mask always match. Ids are
``synthetic-<generator>-<original id>``: they cannot clash with real ones.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ccis.common.atomic import write_bytes_atomic
from ccis.common.device import default_device
from ccis.common.hashing import sha256_bytes
from ccis.common.images import encode_png, read_gray
from ccis.common.preemption import stop_requests
from ccis.common.provenance import claim, fingerprint
from ccis.data.manifest import mask_statistics, write_manifest
from ccis.diffusion.pipeline import CCISPipeline
from ccis.diffusion.presets import load_sd15
from ccis.generator.registry import load_branch

log = logging.getLogger(__name__)


def condition_mask(
    path: Path, resolution: int, triplets: Path, pair_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """A triplet's mask, binary 0/255: as stored, and resized to the generation size."""
    original = read_gray(path, triplets)
    original = (original > 127).astype(np.uint8) * 255
    resized = cv2.resize(original, (resolution, resolution), interpolation=cv2.INTER_NEAREST)
    return original, resized


def load_pipeline(base: str | os.PathLike, branch: str | os.PathLike) -> CCISPipeline:
    """The base with a trained branch, on the GPU when there is one, no progress bars."""
    pipe = CCISPipeline(controlnet=load_branch(branch).eval(), **load_sd15(base))
    pipe.to(default_device())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synthesize(
    generator: str,
    base: str | os.PathLike,
    branch: str | os.PathLike,
    triplets: str | os.PathLike,
    manifest: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    steps: int = 20,
    guidance_scale: float = 7.0,
    resolution: int = 512,
    batch_size: int = 8,
    seed: int = 0,
) -> Path:
    """Generate shard ``shard`` of the synthetic set; write its manifest part to ``manifest``."""
    triplets, manifest, images_dir = Path(triplets), Path(manifest), Path(images_dir)
    frame = pd.read_parquet(triplets).sort_values("id").reset_index(drop=True)
    part = frame.iloc[shard[0] :: shard[1]].reset_index(drop=True)
    settings = {"generator": generator, "steps": steps, "guidance_scale": guidance_scale,
                "resolution": resolution, "seed": seed, "shards": shard[1]}  # fmt: skip
    stamp = fingerprint(settings, [Path(branch), Path(base), triplets])
    # Each shard owns its folder: images of another model or setting are cleared first.
    claim(images_dir, stamp)
    (images_dir / "images").mkdir(parents=True, exist_ok=True)
    (images_dir / "masks").mkdir(parents=True, exist_ok=True)
    ids = [f"synthetic-{generator}-{i}" for i in part["id"]]
    todo = [k for k, i in enumerate(ids) if not (images_dir / "images" / f"{i}.png").is_file()]
    log.info(
        "synthesizing shard %d/%d of %s with %s: %d images, %d done before (DDIM %d, CFG %g)",
        shard[0], shard[1], triplets, generator, len(part), len(part) - len(todo), steps,
        guidance_scale,
    )  # fmt: skip
    if todo:
        pipe = load_pipeline(base, branch)
        # SIGTERM/SIGUSR1 (preemption) lets the batch in hand finish and be written.
        with stop_requests() as stop:
            for start in tqdm(
                range(0, len(todo), batch_size), desc=f"synthesize {generator}", unit="batch"
            ):
                chunk = todo[start : start + batch_size]
                masks, originals = [], []
                for k in chunk:
                    original, mask = condition_mask(
                        triplets.parent / part.at[k, "mask"], resolution, triplets, part.at[k, "id"]
                    )
                    originals.append(original)
                    masks.append(mask)
                # The seed follows the image, not the batch: a resumed run draws the same images.
                seeds = [seed + shard[0] + k * shard[1] for k in chunk]
                began = time.perf_counter()
                with torch.no_grad():
                    prompts = [part.at[k, "caption"] for k in chunk]
                    images = pipe(
                        prompts, masks, num_inference_steps=steps, guidance_scale=guidance_scale,
                        seed=seeds, progress=False,
                    )  # fmt: skip
                seconds = time.perf_counter() - began
                log.info("generated %d image(s) in %.2f s (%.3f s per DDIM step, prompts and "
                         "decoding included)", len(chunk), seconds, seconds / steps)  # fmt: skip
                for k, image, original in zip(chunk, images, originals, strict=True):
                    h, w = original.shape
                    rgb = cv2.resize(
                        (image * 255).round().astype(np.uint8),
                        (w, h),
                        interpolation=cv2.INTER_CUBIC,
                    )
                    # Mask first: an image file present means its pair is complete.
                    write_bytes_atomic(images_dir / "masks" / f"{ids[k]}.png", encode_png(original))
                    write_bytes_atomic(images_dir / "images" / f"{ids[k]}.png", encode_png(rgb))
                written = start + len(chunk)
                if stop and written < len(todo):
                    raise stop.stop(
                        f"synthesis shard {shard[0]}/{shard[1]} ({written} of {len(todo)} "
                        f"images written to {images_dir})",
                        None,
                    )

    rows = []
    for k, pair_id in enumerate(ids):
        image_bytes = (images_dir / "images" / f"{pair_id}.png").read_bytes()
        mask_bytes = (images_dir / "masks" / f"{pair_id}.png").read_bytes()
        mask = cv2.imdecode(np.frombuffer(mask_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
        area, components = mask_statistics(mask)
        rows.append({
            "id": pair_id,
            "source": f"synthetic-{generator}",
            "split": "train",
            "image": os.path.relpath(images_dir / "images" / f"{pair_id}.png", manifest.parent),
            "mask": os.path.relpath(images_dir / "masks" / f"{pair_id}.png", manifest.parent),
            "width": int(mask.shape[1]),
            "height": int(mask.shape[0]),
            "area_fraction": area,
            "n_components": components,
            "image_sha256": sha256_bytes(image_bytes),
            "mask_sha256": sha256_bytes(mask_bytes),
            "original_image": None,
            "original_mask": None,
            "notes": None,
            "caption": part.at[k, "caption"],
            "real_id": part.at[k, "id"],
            "generator": generator,
        })  # fmt: skip
    write_manifest(rows, manifest)
    log.info("wrote %d synthetic pairs to %s (manifest %s)", len(rows), images_dir, manifest)
    return manifest
