"""Shared fixtures: tiny fake data sets written by the tests themselves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist runs one worker per core (pyproject's addopts: -n auto). Each worker, and
# every ccis/snakemake process it starts, then uses one thread: two workers with two
# OpenMP threads each on two cores spin against each other and run slower than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# Snakemake's SLURM executor plugin runs `scontrol show config` when Snakemake starts. On a
# machine with slurm-client installed but no controller to reach (this CI machine), that
# call waits 9 s for a connection, and every snakemake run of the suite paid it (about a
# quarter of the suite's time). Outside the real-cluster test, a stand-in `scontrol` that
# fails at once gives the plugin the same answer (no configuration) without the wait.
if shutil.which("scontrol") and not os.environ.get("CCIS_SLURM_TEST"):
    _NO_CONTROLLER = tempfile.TemporaryDirectory(prefix="ccis-no-slurm-")  # removed at exit
    _stub = Path(_NO_CONTROLLER.name) / "scontrol"
    _stub.write_text("#!/bin/sh\necho 'no SLURM controller in the test suite' >&2\nexit 1\n")
    _stub.chmod(0o755)
    os.environ["PATH"] = _NO_CONTROLLER.name + os.pathsep + os.environ.get("PATH", "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``longest`` first. pytest-xdist's worksteal gives each worker a
    contiguous share of this order and lets an idle worker take from the end of the
    other's: the micro DAG (about 5 minutes) collected late left one worker running it
    alone at the end, 10 min in all instead of ~8."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # stable sort


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


def record_answers(captioner) -> list[str]:
    """Wrap ``captioner.answer`` so every raw model answer is kept, in order, in the list
    returned (the captioner behaves as before)."""
    answers: list[str] = []
    answer = captioner.answer

    def recording(*args):
        answers.append(answer(*args))
        return answers[-1]

    captioner.answer = recording
    return answers


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


def planned_jobs(log: str) -> list[dict]:
    """Every job a dry run's log plans: its rule, its wildcards (as keys, and as Snakemake
    printed them under ``wildcards``) and its scheduling priority (0 when not printed)."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", log):
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        priority = re.search(r"priority: (\d+)", block)
        printed = wildcards.group(1) if wildcards else ""
        found = dict(w.split("=", 1) for w in printed.split(", ")) if printed else {}
        jobs.append({"rule": head.group(1), **found, "wildcards": printed,
                     "priority": int(priority.group(1)) if priority else 0})  # fmt: skip
    return jobs


@pytest.fixture
def micro_workdir(tmp_path: Path) -> Path:
    """A working folder whose config.yaml is the micro config of ``.test/`` (4 splits of a
    few small frames), as ``snakemake --directory .test`` runs it."""
    shutil.copy(REPO / ".test" / "config.yaml", tmp_path / "config.yaml")
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


@pytest.fixture(scope="session")
def triplets(tmp_path_factory) -> Path:
    """Triplets of 8 small phantom frames, shared by the tests that need a tiny base."""
    return phantom_triplets(tmp_path_factory.mktemp("phantom"), 8)


@pytest.fixture(scope="session")
def base(triplets, tmp_path_factory) -> Path:
    """A tiny base bootstrapped on ``triplets`` for 2 steps (its weights barely matter)."""
    return tiny_base(triplets, tmp_path_factory.mktemp("base"), 2)
