"""Table 2 of the paper ("User study") from a study's ratings: CSV + Markdown.

Per generator (rows in the registry's order, named by its labels) and criterion: mean ±
sd over all ratings of the non-repeated groups, the number of raters and of ratings.
Under the table: inter-rater agreement (Krippendorff's α, ordinal, per criterion and
pooled), each rater's answers and consistency on the repeated groups, and with
``paper=True`` the paper's published means beside ours.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
from pathlib import Path

import pandas as pd

from ccis.common.atomic import atomic_path
from ccis.generator import REGISTRY
from ccis.rating.agreement import krippendorff_alpha
from ccis.rating.criteria import CRITERIA, PAPER_GROUPS, PAPER_RATERS, SCALE_NOTE
from ccis.rating.store import StudyError, connect

log = logging.getLogger(__name__)


def load_ratings(study: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, str], dict]:
    """Every rating joined with its image's generator and group; the study's generators
    (name → stored label, in order) and its meta data."""
    study = Path(study)
    if not study.is_file():
        raise FileNotFoundError(f"{study}: no such study file")
    with contextlib.closing(connect(study, readonly=True)) as conn:
        try:
            meta = {r["key"]: json.loads(r["value"]) for r in conn.execute("SELECT * FROM meta")}
            generators = {
                r["name"]: r["label"]
                for r in conn.execute("SELECT name, label FROM generators ORDER BY position")
            }
            frame = pd.read_sql_query(
                "SELECT x.rater_id AS rater, r.label AS rater_label, x.image_id AS image,"
                " i.group_id AS grp, g.repeat_of, i.generator, x.criterion, x.value"
                " FROM ratings x JOIN images i ON i.id = x.image_id"
                " JOIN groups g ON g.id = i.group_id JOIN raters r ON r.id = x.rater_id",
                conn,
            )
            raters = pd.read_sql_query("SELECT id AS rater, label FROM raters ORDER BY id", conn)
        except Exception as err:  # sqlite3 and pandas raise several types
            raise StudyError(f"{study}: not a rating study ({err})") from err
    meta["rater_labels"] = dict(zip(raters["rater"], raters["label"], strict=True))
    return frame, generators, meta


def _label(name: str, stored: dict[str, str]) -> str:
    return REGISTRY[name].label if name in REGISTRY else stored.get(name, name)


def agreement(frame: pd.DataFrame) -> dict[str, float]:
    """Krippendorff's α (ordinal) per criterion and pooled ("all"); units are images
    (pooled: image × criterion), repeated groups left out."""
    main = frame[frame["repeat_of"].isna()]
    out = {}
    for criterion in [c.key for c in CRITERIA] + ["all"]:
        part = main if criterion == "all" else main[main["criterion"] == criterion]
        if part.empty:
            out[criterion] = float("nan")
            continue
        units = part["image"] + "|" + part["criterion"]
        table = part.assign(unit=units).pivot(index="rater", columns="unit", values="value")
        out[criterion] = krippendorff_alpha(table.to_numpy(dtype=float), "ordinal")
    return out


def consistency(frame: pd.DataFrame) -> pd.DataFrame:
    """Per rater: answer pairs (repeated group vs its original, same generator and
    criterion), share identical, share within ±1, mean absolute difference."""
    repeats = frame[frame["repeat_of"].notna()]
    originals = frame[frame["repeat_of"].isna()]
    pairs = repeats.merge(
        originals,
        left_on=["rater", "repeat_of", "generator", "criterion"],
        right_on=["rater", "grp", "generator", "criterion"],
        suffixes=("", "_first"),
    )
    diff = (pairs["value"] - pairs["value_first"]).abs()
    return (
        pairs.assign(diff=diff, same=diff == 0, near=diff <= 1)
        .groupby("rater")
        .agg(
            pairs=("diff", "size"),
            identical=("same", "mean"),
            within_one=("near", "mean"),
            mean_abs_diff=("diff", "mean"),
        )  # fmt: skip
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a rater named "a|b" stays one cell)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(value: float, decimals: int = 2) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{decimals}f}")
    )


def table2(
    study: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    *,
    paper: bool = False,
) -> tuple[Path, Path]:
    """Write Table 2 (our clinicians' ratings per generator) as CSV and Markdown."""
    frame, generators, meta = load_ratings(study)
    if frame.empty:
        raise ValueError(f"{study}: no ratings yet (invite raters with ccis rating-invite)")
    main = frame[frame["repeat_of"].isna()]
    keys = [c.key for c in CRITERIA]

    header = ["generator", "method"]
    for key in keys:
        header += [f"{key}_mean", f"{key}_sd", f"{key}_n"]
    header += ["raters", "ratings"]
    if paper:
        header += [f"paper_{key}" for key in keys]
    md_header = ["Method"]
    for c in CRITERIA:
        md_header.append(f"{c.label} ↑")
        if paper:
            md_header.append(f"{c.label.split()[0]} (paper)")
    md_header += ["Raters", "Ratings"]

    csv_rows, md_rows = [], []
    for name in generators:
        part = main[main["generator"] == name]
        published = REGISTRY[name].paper_table2 if paper and name in REGISTRY else {}
        row: list = [name, _label(name, generators)]
        cells = [_label(name, generators)]
        counts = []
        for key in keys:
            values = part.loc[part["criterion"] == key, "value"].astype(float)
            mean = values.mean() if len(values) else float("nan")
            sd = values.std(ddof=1) if len(values) > 1 else float("nan")
            counts.append(len(values))
            row += [f"{mean:.6g}" if len(values) else "", f"{sd:.6g}" if len(values) > 1 else "",
                    len(values)]  # fmt: skip
            cells.append("not rated" if not len(values) else f"{_fmt(mean)} ± {_fmt(sd)}")
            if paper:
                cells.append(_fmt(published.get(key, float("nan")), 3))
        row += [part["rater"].nunique(), len(part)]
        if paper:
            row += [published.get(key, "") for key in keys]
        ratings = str(len(part)) if len(set(counts)) == 1 else " / ".join(map(str, counts))
        cells += [str(part["rater"].nunique()), ratings]
        csv_rows.append(row)
        md_rows.append(cells)

    alpha = agreement(frame)
    per_rater = consistency(frame)
    n_groups, n_repeats = int(meta.get("groups", 0)), int(meta.get("repeats", 0))
    raters = meta["rater_labels"]
    rated = frame.groupby("rater").size()
    total = len(keys) * len(generators) * (n_groups + n_repeats)
    unfinished = sum(int(rated.get(r, 0)) < total for r in raters)

    lines = [
        "| " + " | ".join(md_header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(md_header) - 1)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in md_rows),
        "",
        f"{SCALE_NOTE} Mean ± sd over all ratings of a method ({n_groups} groups, "
        f"{frame['rater'].nunique()} rater(s) with answers); the {n_repeats} repeated "
        "group(s) are left out here and measure each rater's consistency below. Images were "
        "blinded (opaque ids, no names) and shown in an order shuffled per rater and group.",
        "",
        "Inter-rater agreement, Krippendorff's α (ordinal; units: the rated images, each "
        "rated by at least two raters): "
        + ", ".join(f"{c.label} {_fmt(alpha[c.key])}" for c in CRITERIA)
        + f"; all criteria pooled {_fmt(alpha['all'])} (1: perfect agreement, 0: chance).",
    ]
    if unfinished:
        lines += ["", f"{unfinished} of {len(raters)} rater(s) have not finished; their "
                  "answers so far are included."]  # fmt: skip
    if paper:
        lines += [
            "",
            f"(paper): Table 2 of the CCIS-Diff paper (arXiv 2411.12198): {PAPER_GROUPS} groups, "
            f"{PAPER_RATERS} clinical experts, means only, as published; a dash where the "
            "paper has no such row.",
        ]
    lines += [
        "",
        "Each rater: answers saved (of the study's "
        f"{total}) and agreement with themselves on the repeated groups:",
        "",
        "| Rater | Answers | Repeat pairs | Identical | Within ±1 | Mean abs. difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rater_id, label in raters.items():
        stats = per_rater.loc[rater_id] if rater_id in per_rater.index else None
        if stats is None:
            tail = "0 | — | — | —"
        else:
            tail = (
                f"{int(stats['pairs'])} | {100 * stats['identical']:.0f} % | "
                f"{100 * stats['within_one']:.0f} % | {stats['mean_abs_diff']:.2f}"
            )
        lines.append(f"| {_cell(label)} | {int(rated.get(rater_id, 0))} | {tail} |")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(csv_rows)
    out_csv, out_md = Path(out_csv), Path(out_md)
    with atomic_path(out_csv) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    text = "\n".join(lines) + "\n"
    with atomic_path(out_md) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info(
        "Table 2 from %s: %d ratings by %d rater(s); α (ordinal) %s; wrote %s and %s", study,
        len(frame), frame["rater"].nunique(),
        ", ".join(f"{k} {_fmt(v)}" for k, v in alpha.items()), out_csv, out_md,
    )  # fmt: skip
    return out_csv, out_md
