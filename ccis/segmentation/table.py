"""The paper's Table 3 from our per-image metrics: mDice / mIoU, mean ± std over seeds."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import pandas as pd

from ccis.common.atomic import write_bytes_atomic
from ccis.config import STEP_MATCHED
from ccis.generator import REGISTRY
from ccis.segmentation.registry import REGISTRY as SEGMENTER_REGISTRY

log = logging.getLogger(__name__)

# Published Table 3 of the CCIS-Diff paper (arXiv 2411.12198, "Comparisons of different
# settings applied on two polyp segmentation baselines across three public datasets"),
# in percent: (model, setting) -> test set -> (mDice, mIoU). "real" is the baseline
# trained on real images only (from the segmenter registry); the others add that
# generator's synthetic images (from the generator registry).
PAPER_TABLE3: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    **{(m, "real"): s.paper_real for m, s in SEGMENTER_REGISTRY.items() if s.paper_real},
    **{(m, g): values for g, spec in REGISTRY.items() for m, values in spec.paper_table3.items()},
}
# Our test-set and setting names that mean the paper's columns and rows.
TEST_ALIASES = {
    "cvc300": "cvc300", "cvc-300": "cvc300", "endoscene": "cvc300",
    "clinicdb": "clinicdb", "cvc-clinicdb": "clinicdb", "cvcclinicdb": "clinicdb",
    "kvasir": "kvasir", "kvasir-seg": "kvasir",
}  # fmt: skip
SETTING_ALIASES = {"real": "real", "baseline": "real", "none": "real"}
TEST_LABELS = {"cvc300": "EndoScene", "clinicdb": "CVC-ClinicDB", "kvasir": "Kvasir"}
STEP_MATCHED_LABEL = "real ×2 (step-matched)"
DASH = "–"


def setting_key(setting: str) -> str:
    """``real`` or the generator whose synthetic set was added (workflow: ``real+<gen>``)."""
    setting = setting.lower()
    if setting.startswith("real+"):
        return setting.removeprefix("real+")
    return SETTING_ALIASES.get(setting, setting)


def paper_value(model: str, setting: str, test_set: str) -> tuple[float, float] | None:
    """The paper's (mDice, mIoU) in percent for our names, or None when it has none."""
    key = (model, setting_key(setting))
    return PAPER_TABLE3.get(key, {}).get(TEST_ALIASES.get(test_set.lower(), ""))


def _order(values, preferred: tuple[str, ...]) -> list[str]:
    rank = {v: i for i, v in enumerate(preferred)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, setting, test set): mean and std over seeds of the per-seed means (%)."""
    per_seed = (
        frame.groupby(["model", "setting", "test_set", "seed"])
        .agg(mdice=("mdice", "mean"), miou=("miou", "mean"), images=("id", "size"))
        .reset_index()
    )
    rows = []
    for (model, setting, test_set), group in per_seed.groupby(["model", "setting", "test_set"]):
        row = dict(model=model, setting=setting, test_set=test_set, seeds=len(group),
                   images=int(group["images"].iloc[0]))  # fmt: skip
        for metric in ("mdice", "miou"):
            values = 100 * group[metric]
            row[f"{metric}_mean"] = values.mean()
            # Sample std over seeds; undefined with one seed.
            row[f"{metric}_std"] = values.std(ddof=1) if len(group) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {DASH if pd.isna(std) else f'{std:.1f}'}"


def table3(
    per_image_parquets: list[str | os.PathLike],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    paper: bool = False,
    external: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Write Table 3 (CSV, long form; Markdown, shaped like the paper's) and return it.

    With ``paper``, the published numbers stand beside ours (CSV columns ``paper_mdice``
    and ``paper_miou``; in Markdown in parentheses) for the test sets and settings the
    paper has. ``external`` maps the names of external synthetic sets (settings
    ``real+<name>``) to their labels.
    """
    external = dict(external or {})
    if not per_image_parquets:
        raise ValueError("no per-image metrics given")
    frames = []
    for path in per_image_parquets:
        part = pd.read_parquet(path)
        missing = {"model", "setting", "seed", "test_set", "id", "mdice", "miou"} - set(part)
        if missing:
            raise ValueError(f"{path}: not per-image segmentation metrics, missing {missing}")
        frames.append(part)
    summary = summarize(pd.concat(frames, ignore_index=True))
    if paper:
        published = [paper_value(r.model, r.setting, r.test_set) for r in summary.itertuples()]
        summary["paper_mdice"] = [p[0] if p else float("nan") for p in published]
        summary["paper_miou"] = [p[1] if p else float("nan") for p in published]
    models = _order(summary["model"], tuple(SEGMENTER_REGISTRY))
    order = {key: i for i, key in enumerate(("real", STEP_MATCHED, *REGISTRY))}
    settings = sorted(
        set(summary["setting"]), key=lambda v: (order.get(setting_key(v), len(order)), v)
    )
    tests = _order(summary["test_set"], tuple(TEST_ALIASES))
    rank = [
        (models.index(m), settings.index(s), tests.index(t))
        for m, s, t in zip(summary["model"], summary["setting"], summary["test_set"], strict=True)
    ]
    summary = summary.iloc[sorted(range(len(summary)), key=rank.__getitem__)]
    summary = summary.reset_index(drop=True)

    csv_bytes = summary.to_csv(index=False, float_format="%.4f").encode()
    write_bytes_atomic(out_csv, csv_bytes)
    write_bytes_atomic(out_md, _markdown(summary, tests, paper, external).encode())
    log.info("wrote %s and %s (%d rows)", out_csv, out_md, len(summary))
    return summary


def _row_label(model: str, setting: str, external: Mapping[str, str]) -> str:
    name = SEGMENTER_REGISTRY[model].label if model in SEGMENTER_REGISTRY else model
    key = setting_key(setting)
    if key == "real":
        return name
    if key == STEP_MATCHED:
        return f"{name} + {STEP_MATCHED_LABEL}"
    if key in external:
        return f"{name} + {external[key]} (external)"
    # The paper calls its own method "Ours" (the registry's Table 3 row names).
    return f"{name} + {REGISTRY[key].table3_row if key in REGISTRY else setting}"


def _markdown(
    summary: pd.DataFrame, tests: list[str], paper: bool, external: Mapping[str, str]
) -> str:
    heads = [TEST_LABELS.get(TEST_ALIASES.get(t.lower(), ""), t) for t in tests]
    lines = [
        "Table 3. Segmentation on each test set: mDice and mIoU (%), mean ± std over seeds"
        + (" (the paper's published value in parentheses)." if paper else "."),
        "",
        "| Settings | " + " | ".join(f"{h} mDice | {h} mIoU" for h in heads) + " |",
        "|---|" + "---:|" * (2 * len(tests)),
    ]
    seeds = sorted(set(summary["seeds"]))
    for (model, setting), group in summary.groupby(["model", "setting"], sort=False):
        by_test = {r.test_set: r for r in group.itertuples()}
        cells = []
        for test in tests:
            r = by_test.get(test)
            for metric in ("mdice", "miou"):
                if r is None:
                    cells.append(DASH)
                    continue
                text = _cell(getattr(r, f"{metric}_mean"), getattr(r, f"{metric}_std"))
                published = getattr(r, f"paper_{metric}", float("nan")) if paper else None
                if published is not None and not pd.isna(published):
                    text += f" ({published:.1f})"
                cells.append(text)
        lines.append(f"| {_row_label(model, setting, external)} | " + " | ".join(cells) + " |")
    lines += ["", f"Seeds per row: {', '.join(map(str, seeds))}."]
    if paper:
        # Where each segmenter's published values come from: not all from the CCIS-Diff
        # paper (a segmenter it did not run has its own paper's real-data numbers).
        sources = {
            SEGMENTER_REGISTRY[m].label: SEGMENTER_REGISTRY[m].paper_source
            for m in dict.fromkeys(summary["model"])
            if any(key[0] == m for key in PAPER_TABLE3)
        }
        if sources:
            lines += ["", "Published values from " + "; ".join(
                f"{name}: {source}" for name, source in sources.items()) + "."]  # fmt: skip
    shown = [key for key in dict.fromkeys(map(setting_key, summary["setting"])) if key in external]
    if shown:
        lines += [
            "",
            "(external): a synthetic set made by another tool and imported with `ccis prepare` "
            "(config external_synthetic: " + ", ".join(external[k] for k in shown) + "), added "
            "to the real training set as our generators' sets are.",
        ]
    if any(setting_key(s) == STEP_MATCHED for s in summary["setting"]):
        lines += [
            "",
            "real ×2 (step-matched): the real set listed twice per epoch, as many optimiser "
            "steps as real + one synthetic set; a gain of real + synthetic over real that "
            "real ×2 also shows comes from the extra steps, not from the synthetic images.",
        ]
    return "\n".join(lines) + "\n"
