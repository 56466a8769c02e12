"""Table 1 of the paper, from our generation-metric JSON files (CSV + Markdown).

Rows are the generators present, in the paper's order followed by the ablations;
columns FID, CLIP-score, CLIP-image and our two automated user-study columns. A metric
that was not computed shows as such, with its reason in a numbered note under the
Markdown table and in the CSV's ``<metric>_note`` column. With ``paper=True`` the
paper's published Table 1 values stand beside ours.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ccis.common.atomic import write_bytes_atomic
from ccis.metrics.base import COMPUTED, NOT_COMPUTED

log = logging.getLogger(__name__)

GENERATOR_ORDER = ("ccis", "controlnet", "unicontrolnet", "ccis_no_bmws", "ccis_no_taam")
GENERATOR_NAMES = {
    "ccis": "CCIS-Diff (ours)",
    "controlnet": "ControlNet",
    "unicontrolnet": "Uni-ControlNet",
    "ccis_no_bmws": "CCIS-Diff w/o BMWS",
    "ccis_no_taam": "CCIS-Diff w/o TAAM",
}
# (metric key, column title, decimals)
COLUMNS = (
    ("fid", "FID ↓", 2),
    ("clip_score", "CLIP-score ↑", 2),
    ("clip_image", "CLIP-image ↑", 2),
    ("attribute_agreement", "Attribute agreement (%) ↑", 1),
    ("mask_fidelity", "Mask fidelity (Dice %) ↑", 1),
)
# The paper's Table 1 ("The quantitative results of the colonoscopy image synthesis",
# arXiv 2411.12198, §3.3): FID, CLIP-score, CLIP-image for the three methods it compares.
# It reports neither the ablations nor our two automated columns.
PAPER_TABLE1 = {
    "controlnet": {"fid": 87.32, "clip_score": 30.78, "clip_image": 87.09},
    "unicontrolnet": {"fid": 92.74, "clip_score": 30.57, "clip_image": 86.46},
    "ccis": {"fid": 71.73, "clip_score": 31.96, "clip_image": 88.70},
}
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
        if not isinstance(entry, dict) or entry.get("status") not in (COMPUTED, NOT_COMPUTED):
            raise ValueError(f"{path}: metric {key} is missing or has no valid status")
        if entry["status"] == COMPUTED and not isinstance(entry.get("value"), int | float):
            raise ValueError(f"{path}: metric {key} is computed but has no numeric value")
    return report


def _order(generators: list[str]) -> list[str]:
    known = [g for g in GENERATOR_ORDER if g in generators]
    return known + sorted(g for g in generators if g not in GENERATOR_ORDER)


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
        method = GENERATOR_NAMES.get(generator, generator)
        row: list = [generator, method]
        cells = [method]
        for key, _, decimals in COLUMNS:
            entry = metrics[key]
            published = PAPER_TABLE1.get(generator, {}).get(key) if paper else None
            if entry["status"] == COMPUTED:
                row += [f"{entry['value']:.6g}", ""]
                cells.append(f"{entry['value']:.{decimals}f}")
            else:
                reason = str(entry.get("reason", "no reason given"))
                row += ["", f"{NOT_COMPUTED}: {reason}"]
                cells.append(f"not computed [{note(reason)}]")
            if paper and key in PAPER_METRICS:
                cells.append("—" if published is None else f"{published:.2f}")
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
        "Attribute agreement: share of re-measured polyp attributes equal to the caption's. "
        "Mask fidelity: Dice of a real-data segmenter's prediction with the conditioning mask.",
    ]
    if paper:
        lines += [
            "",
            "(paper): Table 1 of the CCIS-Diff paper (arXiv 2411.12198), as published; it "
            "has no ablation rows and no attribute-agreement or mask-fidelity columns.",
        ]
    if notes:
        lines += ["", "Not computed:", ""]
        lines += [f"- [{k}] {reason}" for k, reason in enumerate(notes, 1)]
    out_csv, out_md = Path(out_csv), Path(out_md)
    write_bytes_atomic(out_csv, buffer.getvalue().encode())
    write_bytes_atomic(out_md, ("\n".join(lines).rstrip() + "\n").encode())
    log.info(
        "wrote Table 1 (%d generators: %s) to %s and %s",
        len(order), ", ".join(order), out_csv, out_md,
    )  # fmt: skip
    return out_csv, out_md
