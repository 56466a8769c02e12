"""Shared fixtures: tiny fake data sets written by the tests themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def frame(width: int = 48, height: int = 40, seed: int = 0) -> np.ndarray:
    """A small random RGB frame."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def disc_mask(
    width: int = 48, height: int = 40, cx: int = 20, cy: int = 18, r: int = 8
) -> np.ndarray:
    """A 0/255 mask with one disc."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, 255, 0).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Save ``array`` with Pillow (format from the suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_pairs(
    image_dir: Path,
    mask_dir: Path,
    stems: list[str],
    image_ext: str = ".png",
    mask_ext: str = ".png",
    mask_prefix: str = "",
    size: tuple[int, int] = (48, 40),
) -> None:
    """Write one random frame and one disc mask per stem."""
    for i, stem in enumerate(stems):
        save(image_dir / f"{stem}{image_ext}", frame(*size, seed=i))
        save(mask_dir / f"{mask_prefix}{stem}{mask_ext}", disc_mask(*size, cx=10 + 3 * i))


def run_env() -> dict:
    """Environment whose PATH finds this interpreter's ``ccis`` and ``snakemake``."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in ``workdir`` (which holds its config.yaml)."""
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=run_env(), timeout=900, cwd=workdir
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def micro_workdir(tmp_path: Path) -> Path:
    """A working folder with a micro phantom config (4 splits of a few small frames)."""
    (tmp_path / "config.yaml").write_text(
        "results: results\n"
        "data:\n"
        "  phantom: {seed: 3, width: 96, height: 80}\n"
        "  splits:\n"
        "    - {name: train, role: train, phantom: {count: 6, centre: 0}}\n"
        "    - {name: centre1, role: test, phantom: {count: 2, centre: 1}}\n"
        "    - {name: centre2, role: test, phantom: {count: 2, centre: 2}}\n"
        "    - {name: centre3, role: test, phantom: {count: 2, centre: 3}}\n"
        "caption: {shards: 2}\n"
        "model: {preset: tiny, resolution: 32, conditioning_channels: [4, 4, 4, 4], threads: 1}\n"
        "bootstrap: {vae_steps: 3, unet_steps: 3, batch_size: 2, checkpoint_every: 2}\n"
        "generators: [ccis, controlnet]\n"
        "train: {steps: 3, batch_size: 2, checkpoint_every: 2, validate_every: 3}\n"
        "synthesis: {steps: 2, shards: 2, batch_size: 4}\n"
        "segmentation:\n"
        "  {size: 64, batch_size: 4, seeds: [0], synthetic: [ccis],\n"
        "   pranet: {backbone: resnet10t, epochs: 1}, polyp_pvt: {backbone: pvt_v2_b0, epochs: 1}}\n"
        "report: {grid_masks: 2, grid_prompts: 2}\n"
        "resources: {prepare_threads: 1}\n"
    )
    return tmp_path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def phantom_triplets(root: Path, count: int) -> Path:
    """Triplets (template captions) of ``count`` small phantom frames under ``root``."""
    from ccis.caption.stage import caption_manifest
    from ccis.caption.template import TemplateCaptioner
    from ccis.caption.tokens import TokenCounter
    from ccis.data.prepare import PhantomSpec, prepare_split

    manifest = prepare_split("train", root / "data", phantom=PhantomSpec(count, 0, 2, 96, 80))
    out = root / "captions" / "train.parquet"
    return caption_manifest(manifest, out, TemplateCaptioner(), TokenCounter())


def tiny_base(triplets: Path, root: Path, steps: int) -> Path:
    """A tiny base bootstrapped for ``steps`` VAE and UNet steps (32 px)."""
    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base

    settings = BootstrapSettings(
        vae_steps=steps, unet_steps=steps, batch_size=2, resolution=32, checkpoint_every=2
    )
    return bootstrap_base(triplets, root / "base", root / "work", settings)
