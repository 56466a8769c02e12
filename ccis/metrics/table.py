"""Table 1 of the paper, from our generation-metric JSON files (CSV + Markdown).

Rows are the generators present, in the paper's order followed by the ablations;
columns FID, CLIP-score, CLIP-image and our automated user-study columns (text adherence,
colour localisation and attribute agreement with their 95 % bootstrap intervals, mask
fidelity).
A metric that was not computed shows as such, with its reason in a numbered note under
the Markdown table and in the CSV's ``<metric>_note`` column. With ``paper=True`` the
paper's published Table 1 values stand beside ours.

Under the table: what each ablation removes, and every generator's difference from
CCIS-Diff in text adherence, colour localisation and attribute agreement with a paired
bootstrap interval over the same training masks (from the per-image tables the JSON files
name), marked where the interval excludes zero.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ccis.common.atomic import write_bytes_atomic
from ccis.generator import REGISTRY
from ccis.generator.registry import label
from ccis.metrics.agreement import match_matrix
from ccis.metrics.base import COMPUTED, NOT_COMPUTED
from ccis.metrics.bootstrap import paired_difference

log = logging.getLogger(__name__)

# (metric key, column title, decimals)
COLUMNS = (
    ("fid", "FID ↓", 2),
    ("clip_score", "CLIP-score ↑", 2),
    ("clip_image", "CLIP-image ↑", 2),
    ("text_adherence", "Text adherence (%) ↑", 1),
    ("colour_localisation", "Colour localisation (%) ↑", 1),
    ("attribute_agreement", "Attribute agreement (%) ↑", 1),
    ("mask_fidelity", "Mask fidelity (Dice %) ↑", 1),
)
# Metrics whose per-image values give paired differences from CCIS-Diff.
PAIRED = ("text_adherence", "colour_localisation", "attribute_agreement")
# Metrics a file written by an earlier ccis may lack: read as not computed, with why.
ADDED_LATER = {
    "colour_localisation": "the metrics file predates colour localisation: re-run "
    "text_adherence and metrics_generation",
}
REFERENCE = "ccis"
# The paper's Table 1 (FID, CLIP-score, CLIP-image), from the generator registry: the
# paper reports neither the ablations nor our automated columns.
PAPER_TABLE1 = {name: spec.paper_table1 for name, spec in REGISTRY.items() if spec.paper_table1}
PAPER_METRICS = ("fid", "clip_score", "clip_image")


def read_metrics(path: str | os.PathLike) -> dict:
    """Read and check one ``ccis metrics-generation`` JSON file."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such metrics file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(report, dict) or not isinstance(report.get("generator"), str):
        raise ValueError(f"{path}: not a generation-metrics file (no generator)")
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a generation-metrics file (no metrics)")
    for key, _, _ in COLUMNS:
        entry = metrics.get(key)
        if entry is None and key in ADDED_LATER:
            metrics[key] = entry = {"status": NOT_COMPUTED, "reason": ADDED_LATER[key]}
        if not isinstance(entry, dict) or entry.get("status") not in (COMPUTED, NOT_COMPUTED):
            raise ValueError(f"{path}: metric {key} is missing or has no valid status")
        if entry["status"] == COMPUTED and not isinstance(entry.get("value"), int | float):
            raise ValueError(f"{path}: metric {key} is computed but has no numeric value")
    return report


def _method(report: dict, generator: str) -> str:
    """Table 1's name of a row: the generator's label, or an external set's, marked."""
    external = report.get("external")
    if isinstance(external, dict):
        return f"{external.get('label') or generator} (external)"
    return label(generator)


def _order(generators: list[str]) -> list[str]:
    known = [g for g in REGISTRY if g in generators]  # registry order: the paper's first
    return known + sorted(g for g in generators if g not in REGISTRY)


def _formatted(entry: dict, decimals: int) -> str:
    text = f"{entry['value']:.{decimals}f}"
    interval = entry.get("ci95")
    if isinstance(interval, list) and len(interval) == 2 and None not in interval:
        text += f" [{interval[0]:.{decimals}f}, {interval[1]:.{decimals}f}]"
    return text


def per_image_values(report: dict, source: Path, metric: str) -> pd.Series | None:
    """Per training mask (``real_id``), the images × columns hit matrix of ``metric`` from
    the per-image table ``report`` names; None when there is none."""
    name = report.get("per_image")
    entry = report["metrics"].get(metric, {})
    if not name or entry.get("status") != COMPUTED:
        return None
    path = source.parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{source}: its per-image table {path} does not exist")
    frame = pd.read_parquet(path)
    if metric == "text_adherence":  # one column of wins; NaN where the mask had no polyp
        matrix = frame["text_win"].map({True: 1.0, False: 0.0}).to_numpy(float)[:, None]
    elif metric == "colour_localisation":  # one column of shares in [0, 1]
        matrix = frame["localisation"].to_numpy(float)[:, None]
    else:
        matrix = match_matrix(frame.to_dict("records"), entry.get("scored_attributes", []))
    return pd.Series(list(matrix), index=frame["real_id"].astype(str))


def differences(
    reports: dict[str, dict], sources: dict[str, Path], order: list[str]
) -> list[tuple[str, str, float, float, float, int]]:
    """(generator, metric, Δ, low, high, masks) of CCIS-Diff minus each other generator,
    paired over the training masks both were measured on."""
    if REFERENCE not in reports:
        return []
    out = []
    for metric in PAIRED:
        reference = per_image_values(reports[REFERENCE], sources[REFERENCE], metric)
        if reference is None:
            continue
        for generator in order:
            if generator == REFERENCE:
                continue
            other = per_image_values(reports[generator], sources[generator], metric)
            if other is None:
                continue
            shared = sorted(set(reference.index) & set(other.index))
            if not shared:
                continue
            a = np.stack(reference.loc[shared].to_list())
            b = np.stack(other.loc[shared].to_list())
            delta, low, high = paired_difference(a, b)
            out.append((generator, metric, delta, low, high, len(shared)))
    return out


def table1(
    metric_jsons: Sequence[str | os.PathLike],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    *,
    paper: bool = False,
) -> tuple[Path, Path]:
    """Write Table 1 (our metrics per generator) as CSV and Markdown, atomically."""
    if not metric_jsons:
        raise ValueError("no metrics files given")
    reports: dict[str, dict] = {}
    sources: dict[str, Path] = {}
    for path in metric_jsons:
        report = read_metrics(path)
        name = report["generator"]
        if name in reports:
            raise ValueError(f"{path}: generator {name} already read from {sources[name]}")
        reports[name], sources[name] = report, Path(path)
    order = _order(list(reports))

    notes: list[str] = []  # unique reasons, numbered in order of appearance

    def note(reason: str) -> int:
        if reason not in notes:
            notes.append(reason)
        return notes.index(reason) + 1

    header = ["generator", "method"]
    for key, _, _ in COLUMNS:
        header += [key, f"{key}_note"]
    header += [f"{key}_ci95_{end}" for key in PAIRED for end in ("low", "high")]
    if paper:
        header += [f"paper_{key}" for key in PAPER_METRICS]
    md_header = ["Method"]
    for key, title, _ in COLUMNS:
        md_header.append(title)
        if paper and key in PAPER_METRICS:
            md_header.append(f"{title.split()[0]} (paper)")
    csv_rows, md_rows = [], []
    for generator in order:
        metrics = reports[generator]["metrics"]
        method = _method(reports[generator], generator)
        row: list = [generator, method]
        cells = [method]
        for key, _, decimals in COLUMNS:
            entry = metrics[key]
            published = PAPER_TABLE1.get(generator, {}).get(key) if paper else None
            if entry["status"] == COMPUTED:
                row += [f"{entry['value']:.6g}", ""]
                cells.append(_formatted(entry, decimals))
            else:
                reason = str(entry.get("reason", "no reason given"))
                row += ["", f"{NOT_COMPUTED}: {reason}"]
                cells.append(f"not computed [{note(reason)}]")
            if paper and key in PAPER_METRICS:
                cells.append("—" if published is None else f"{published:.2f}")
        for key in PAIRED:
            interval = metrics.get(key, {}).get("ci95") or ["", ""]
            row += [f"{v:.6g}" if isinstance(v, float | int) else "" for v in interval]
        if paper:
            row += [PAPER_TABLE1.get(generator, {}).get(k, "") for k in PAPER_METRICS]
        csv_rows.append(row)
        md_rows.append(cells)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(csv_rows)
    lines = [
        "| " + " | ".join(md_header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(md_header) - 1)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in md_rows),
    ]
    lines += [
        "",
        "FID: clean-fid (mode clean) against the real training images. CLIP-score: "
        "100·max(cos(image, caption), 0); CLIP-image: 100·cos(synthetic, its real source). "
        "Text adherence: share of training masks whose polyp is paler for a 'pale' prompt "
        "than for a 'red' one (same seed; chance 50 %). "
        "Colour localisation: of the change between those two images, the share on the "
        "polyp, per pixel on each side of the mask (50 %: the colour word changes the whole "
        "frame alike; 100 %: only the polyp). "
        "Attribute agreement: share of re-measured polyp attributes equal to the caption's. "
        "Mask fidelity: Dice of a real-data segmenter's prediction with the conditioning mask. "
        "[a, b]: 95 % bootstrap interval over images.",
    ]
    external = [g for g in order if "external" in reports[g]]
    if external:
        names = ", ".join(reports[g]["external"].get("label") or g for g in external)
        lines += [
            "",
            f"(external): a set made by another tool ({names}), imported with `ccis prepare` "
            "(config external_synthetic) and scored by the same code. It has no prompts and "
            "no real source pair per image, so only FID and mask fidelity apply.",
        ]
    ablations = [g for g in order if REGISTRY.get(g) and REGISTRY[g].removes]
    if ablations:
        lines += ["", "Each ablation removes one thing from CCIS-Diff:", ""]
        lines += [f"- {label(g)}: {REGISTRY[g].removes}" for g in ablations]
    if paper:
        lines += [
            "",
            "(paper): Table 1 of the CCIS-Diff paper (arXiv 2411.12198), as published; it "
            "has no ablation rows and none of our automated columns.",
        ]
    if notes:
        lines += ["", "Not computed:", ""]
        lines += [f"- [{k}] {reason}" for k, reason in enumerate(notes, 1)]
    # Last: the paired differences, a table of their own under the notes of Table 1.
    found = differences(reports, sources, order)
    if found:
        lines += [
            "",
            f"Differences from {label(REFERENCE)} (percentage points; 95 % paired bootstrap "
            "over the same training masks; * where the interval excludes 0):",
            "",
            "| Compared with | Metric | CCIS-Diff − it | 95 % interval | Masks |",
            "|---|---|---:|---:|---:|",
        ]
        titles = {key: title.split(" (")[0] for key, title, _ in COLUMNS}
        for generator, metric, delta, low, high, n in found:
            mark = " *" if low > 0 or high < 0 else ""
            lines.append(
                f"| {label(generator)} | {titles[metric]} | {delta:+.1f}{mark} | "
                f"[{low:+.1f}, {high:+.1f}] | {n} |"
            )
    out_csv, out_md = Path(out_csv), Path(out_md)
    write_bytes_atomic(out_csv, buffer.getvalue().encode())
    write_bytes_atomic(out_md, ("\n".join(lines).rstrip() + "\n").encode())
    log.info(
        "wrote Table 1 (%d generators: %s) to %s and %s",
        len(order), ", ".join(order), out_csv, out_md,
    )  # fmt: skip
    return out_csv, out_md
