"""Report figures from logged numbers: generator loss curves and segmentation bars.

Loss curves read each trained branch folder's ``loss.csv`` (columns step, loss, and for
a branch with TAAM ``lambda_<block>``, drawn in a second panel; ``taam_lambda_table``
lists each block's λ at the start and end of training). The
segmentation chart reads the per-image metric Parquet files (columns model, setting,
seed, test_set, id and the metric): images are averaged per seed first, then seeds give
mean ± standard deviation, because the paper's gains are of the size of seed-to-seed
noise and the error bars show it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ccis.common.atomic import atomic_path, write_bytes_atomic
from ccis.config import STEP_MATCHED
from ccis.generator.registry import short_label

log = logging.getLogger(__name__)

SEGMENTATION_KEYS = ("model", "setting", "seed", "test_set", "id")
METRIC_LABELS = {"mdice": "mDice", "miou": "mIoU", "dice": "Dice@0.5", "iou": "IoU@0.5"}
# Settings without synthetic data go first: they are the baseline the others add to.
BASELINE_SETTINGS = ("real", "baseline", "none", "real_only")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white")
    _pyplot().close(fig)
    return out


def read_loss(path: str | os.PathLike) -> pd.DataFrame:
    """A branch's loss log: ``path`` is the branch folder or its ``loss.csv``."""
    path = Path(path)
    csv = path / "loss.csv" if path.is_dir() else path
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: loss log not found")
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv}: not a readable CSV ({err})") from err
    missing = [c for c in ("step", "loss") if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv}: loss log lacks columns {missing}")
    frame = frame[["step", "loss"]].apply(pd.to_numeric, errors="coerce").dropna()
    if frame.empty:
        raise ValueError(f"{csv}: loss log has no numeric rows")
    return frame.sort_values("step").reset_index(drop=True)


def read_lambdas(path: str | os.PathLike) -> pd.DataFrame:
    """TAAM's λ per block and step from a branch's loss log (no λ column: no rows)."""
    path = Path(path)
    csv = path / "loss.csv" if path.is_dir() else path
    frame = pd.read_csv(csv)
    columns = sorted(
        (c for c in frame.columns if c.startswith("lambda_")), key=lambda c: int(c.split("_")[1])
    )
    if not columns:
        return pd.DataFrame(columns=["step"])
    return frame[["step", *columns]].apply(pd.to_numeric, errors="coerce").dropna()


def taam_lambda_table(
    branches: Mapping[str, str | os.PathLike], out_md: str | os.PathLike, *, start: float
) -> Path:
    """Markdown table: each TAAM block's λ at the start and at the end of training."""
    rows, steps = [], {}
    for name, folder in branches.items():
        frame = read_lambdas(folder)
        if len(frame):
            steps[name] = int(frame["step"].iloc[-1])
        for column in frame.columns[1:]:
            end = float(frame[column].iloc[-1])
            rows.append(f"| {short_label(name)} | {column.split('_')[1]} | "
                        f"{start:.3f} | {end:.3f} | {end - start:+.3f} |")  # fmt: skip
    if not rows:
        raise ValueError("taam-lambda-table: no branch logged TAAM's λ (none has TAAM)")
    lines = [
        "| Generator | Block | λ at start | λ at end | change |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "λ weighs the text-aware key bias log(1 + λ·S) of each transformer block of the "
        "branch (down blocks, then the mid block); learned in its own optimiser group. "
        "End: after " + ", ".join(f"{short_label(n)} {s}" for n, s in steps.items()) + " steps.",
    ]
    out_md = Path(out_md)
    write_bytes_atomic(out_md, ("\n".join(lines) + "\n").encode())
    log.info("wrote %s (%d blocks)", out_md, len(rows))
    return out_md


def plot_losses(
    branches: Mapping[str, str | os.PathLike], out: str | os.PathLike, *, log_scale: bool = False
) -> Path:
    """All generators' training losses in one PNG: raw (faint) and a rolling mean; TAAM's λ
    per block in a second panel when a branch logged it."""
    if not branches:
        raise ValueError("figure-losses: give at least one --branch GEN=DIR")
    plt = _pyplot()
    lambdas = {name: read_lambdas(folder) for name, folder in branches.items()}
    with_lambda = {name: f for name, f in lambdas.items() if len(f.columns) > 1}
    if with_lambda:
        fig, (ax, lam) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    colours = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    for k, name in enumerate(branches):
        if name not in with_lambda:
            continue
        frame = with_lambda[name]
        for b, column in enumerate(frame.columns[1:]):
            label = f"{short_label(name)}, block {column.split('_')[1]}"
            lam.plot(frame["step"], frame[column], color=colours(k % 10),
                     linestyle=styles[b % len(styles)], label=label)  # fmt: skip
    if with_lambda:
        lam.set(xlabel="training step", ylabel="λ", title="TAAM λ per block")
        lam.grid(alpha=0.3)
        lam.legend(fontsize=7)
    for k, (name, folder) in enumerate(branches.items()):
        frame = read_loss(folder)
        # ~5% of the run per window: smooth enough to compare, short enough to show trends.
        window = max(1, len(frame) // 20)
        smooth = frame["loss"].rolling(window, min_periods=1).mean()
        colour = colours(k % 10)
        ax.plot(frame["step"], frame["loss"], color=colour, alpha=0.2, linewidth=0.8)
        label = f"{short_label(name)} (mean of {window})"
        ax.plot(frame["step"], smooth, color=colour, linewidth=1.8, label=label)
        log.info(
            "read %d loss values of %s from %s (last smoothed %.4g)",
            len(frame), name, folder, smooth.iloc[-1],
        )  # fmt: skip
    ax.set(xlabel="training step", ylabel="ε-prediction MSE", title="Generator training loss")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, Path(out))
    log.info("wrote %s", path)
    return path


def read_segmentation(parquets: Sequence[str | os.PathLike], metric: str) -> pd.DataFrame:
    """Concatenate per-image metric files; check columns and that no image repeats."""
    if not parquets:
        raise ValueError("figure-segmentation: give at least one per-image metrics Parquet")
    frames = []
    for path in map(Path, parquets):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: per-image metrics Parquet not found")
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for broken files
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
        missing = [c for c in (*SEGMENTATION_KEYS, metric) if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: per-image metrics lack columns {missing}")
        frame = frame[[*SEGMENTATION_KEYS, metric]].copy()
        frame["file"] = str(path)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    if data[metric].isna().any():
        bad = data[data[metric].isna()].iloc[0]
        raise ValueError(f"{bad['file']}: {metric} of image {bad['id']} is not a number")
    twice = data.duplicated(list(SEGMENTATION_KEYS), keep=False)
    if twice.any():
        first = data[twice].iloc[0]
        files = sorted(set(data[twice]["file"]))
        raise ValueError(
            f"image {first['id']} of {first['model']}/{first['setting']}/seed {first['seed']}/"
            f"{first['test_set']} appears more than once (in {', '.join(files)})"
        )
    return data


def summarise_segmentation(data: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over images per seed, then mean, std (ddof 1; 0 for one seed) and seed count."""
    per_seed = data.groupby(["test_set", "model", "setting", "seed"], as_index=False)[metric].mean()
    summary = per_seed.groupby(["test_set", "model", "setting"], as_index=False)[metric].agg(
        mean="mean", std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0, seeds="count"
    )
    return summary


def _setting_order(settings) -> list[str]:
    # Baseline first, then the step-matched control, then real + each synthetic set.
    return sorted(set(settings), key=lambda s: (s not in BASELINE_SETTINGS, s != STEP_MATCHED, s))


def plot_segmentation(
    parquets: Sequence[str | os.PathLike], out: str | os.PathLike, *, metric: str = "mdice"
) -> pd.DataFrame:
    """Grouped bars: test sets on the x axis, one bar per model × setting, seed error bars.

    Returns the plotted summary (test_set, model, setting, mean, std, seeds).
    """
    data = read_segmentation(parquets, metric)
    summary = summarise_segmentation(data, metric)
    # Fractions are shown as percentages, as the paper's tables are.
    scale = 100.0 if data[metric].abs().max() <= 1.0 else 1.0
    test_sets = sorted(summary["test_set"].unique())
    models = sorted(summary["model"].unique())
    settings = _setting_order(summary["setting"])
    bars = [(m, s) for m in models for s in settings
            if ((summary["model"] == m) & (summary["setting"] == s)).any()]  # fmt: skip
    seeds = sorted(int(s) for s in data["seed"].unique())
    log.info(
        "read %d per-image rows from %d file(s): %d test sets, %d model×setting bars, seeds %s",
        len(data), len(parquets), len(test_sets), len(bars), seeds,
    )  # fmt: skip

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.5, 3.0 + 0.45 * len(bars) * len(test_sets)), 4.8))
    fig.set_dpi(100)
    colours = plt.get_cmap("tab10")
    hatches = ("", "//", "..", "xx", "\\\\", "++")
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(test_sets))
    for k, (model, setting) in enumerate(bars):
        part = summary[(summary["model"] == model) & (summary["setting"] == setting)]
        part = part.set_index("test_set").reindex(test_sets)
        ax.bar(
            x - 0.4 + width * (k + 0.5), part["mean"] * scale, width,
            yerr=part["std"] * scale, capsize=3,
            color=colours(settings.index(setting) % 10),
            hatch=hatches[models.index(model) % len(hatches)], edgecolor="black", linewidth=0.5,
            label=f"{model} + {short_label(setting)}",
        )  # fmt: skip
    counts = summary["seeds"]
    seed_note = (
        f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}–{counts.max()}"
    )
    label = METRIC_LABELS.get(metric, metric) + (" (%)" if scale == 100 else "")
    ax.set(
        xticks=x, xticklabels=test_sets, ylabel=label,
        title=f"Segmentation {label}: mean ± std over {seed_note} seed(s) (axis not from 0)",
    )  # fmt: skip
    low = float((summary["mean"] - summary["std"]).min() * scale)
    high = float((summary["mean"] + summary["std"]).max() * scale)
    # Differences are a few points: zoom to the data's range instead of starting at 0.
    margin = max(1.0, 0.1 * (high - low))
    ax.set_ylim(max(0.0, low - margin), high + margin)
    ax.grid(axis="y", alpha=0.3)
    # Outside the axes: inside, it would hide the bars of the last test set.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model + setting")
    fig.tight_layout()
    path = _save(fig, Path(out))
    log.info("wrote %s", path)
    return summary
