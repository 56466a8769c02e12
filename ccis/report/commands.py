"""Command-line sub-commands of this stage (registered by ``ccis.cli``).

``figure-grid`` (Fig. 3/4-style samples), ``figure-losses``, ``figure-segmentation`` and
``report`` (the self-contained ``index.html``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccis.common.arguments import pick
from ccis.common.pairs import parse_pairs
from ccis.common.threads import use_threads

GRID_OPTIONS = (
    "masks", "prompts_per_mask", "steps", "guidance_scale", "resolution", "seed", "batch_size",
    "tile", "title",
)  # fmt: skip


def _cmd_figure_grid(args: argparse.Namespace) -> None:
    from ccis.report.grids import figure_grid

    use_threads(args.threads)
    figure_grid(
        args.base,
        parse_pairs(args.branch, "--branch"),
        args.triplets,
        args.out,
        **pick(args, GRID_OPTIONS),
    )


def _cmd_figure_losses(args: argparse.Namespace) -> None:
    from ccis.report.figures import plot_losses

    plot_losses(parse_pairs(args.branch, "--branch"), args.out, log_scale=args.log_scale)


def _cmd_taam_lambda_table(args: argparse.Namespace) -> None:
    from ccis.report.figures import taam_lambda_table

    taam_lambda_table(parse_pairs(args.branch, "--branch"), args.out_md, start=args.start)


def _cmd_figure_segmentation(args: argparse.Namespace) -> None:
    from ccis.report.figures import plot_segmentation

    plot_segmentation(args.parquets, args.out, metric=args.metric)


def _cmd_report(args: argparse.Namespace) -> None:
    from ccis.report.html import build_report

    tables = list(parse_pairs(args.table, "--table").items())
    captions = parse_pairs(args.caption, "--caption")
    figures = parse_pairs(args.figure, "--figure")
    unknown = sorted(set(captions) - set(figures))
    if unknown:
        raise ValueError(f"--caption for figures not given with --figure: {', '.join(unknown)}")
    build_report(
        args.out,
        tables,
        [(name, path, captions.get(name, "")) for name, path in figures.items()],
        args.config,
        title=args.title,
    )


def _add_loss_logs(parser: argparse.ArgumentParser) -> None:
    """``--branch GEN=DIR`` (repeatable): the trained branches whose loss logs are read."""
    parser.add_argument(
        "--branch", action="append", required=True, metavar="GEN=DIR",
        help="a trained branch folder holding loss.csv (or the CSV itself); repeatable",
    )  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    grid = sub.add_parser(
        "figure-grid",
        help="Fig. 3/4-style grid: training masks × prompt variants × generators",
        description=(
            "Rows: each chosen training mask with its caption and attribute-swapped prompts; "
            "columns: mask, prompt, one image per generator (same noise for all generators)."
        ),
    )
    grid.add_argument("--base", required=True, help="base model folder (SD v1.5 or bootstrap)")
    grid.add_argument(
        "--branch", action="append", required=True, metavar="GEN=DIR",
        help="a generator's trained branch folder (repeatable; columns in this order)",
    )  # fmt: skip
    grid.add_argument("--triplets", required=True, type=Path, help="captions/train.parquet")
    grid.add_argument("--out", required=True, type=Path, help="PNG to write")
    grid.add_argument("--masks", type=int, default=3, help="training masks (default 3)")
    grid.add_argument("--prompts-per-mask", type=int, default=3, help="prompts per mask")
    grid.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    grid.add_argument("--guidance-scale", type=float, default=7.0)
    grid.add_argument("--resolution", type=int, default=512, help="generation size in pixels")
    grid.add_argument("--seed", type=int, default=0, help="mask k uses seed + k")
    grid.add_argument("--batch-size", type=int, default=4)
    grid.add_argument("--tile", type=int, default=192, help="drawn image size in pixels")
    grid.add_argument("--title", default=None, help="title above the grid")
    grid.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    grid.set_defaults(func=_cmd_figure_grid)

    losses = sub.add_parser("figure-losses", help="all generators' training loss curves")
    _add_loss_logs(losses)
    losses.add_argument("--out", required=True, type=Path, help="PNG to write")
    losses.add_argument("--log-scale", action="store_true", help="logarithmic loss axis")
    losses.set_defaults(func=_cmd_figure_losses)

    lam = sub.add_parser("taam-lambda-table", help="TAAM's λ per block at start and end")
    _add_loss_logs(lam)
    lam.add_argument("--out-md", required=True, type=Path, help="Markdown table to write")
    lam.add_argument("--start", type=float, required=True, help="λ at the start (taam_lambda)")
    lam.set_defaults(func=_cmd_taam_lambda_table)

    seg = sub.add_parser(
        "figure-segmentation",
        help="segmentation bars per test set, model and setting, mean ± std over seeds",
    )
    seg.add_argument("--out", required=True, type=Path, help="PNG to write")
    seg.add_argument("--metric", default="mdice", choices=("mdice", "miou", "dice", "iou"))
    seg.add_argument("parquets", nargs="+", type=Path, help="per-image metrics Parquet files")
    seg.set_defaults(func=_cmd_figure_segmentation)

    rep = sub.add_parser("report", help="write one self-contained index.html")
    rep.add_argument("--out", required=True, type=Path, help="folder for index.html")
    rep.add_argument(
        "--table", action="append", default=[], metavar="TITLE=PATH",
        help="a table CSV (footnotes from the .md beside it) or .md; repeatable",
    )  # fmt: skip
    rep.add_argument(
        "--figure", action="append", default=[], metavar="TITLE=PATH",
        help="a PNG figure; repeatable",
    )  # fmt: skip
    rep.add_argument(
        "--caption", action="append", default=[], metavar="TITLE=TEXT",
        help="caption of the figure TITLE; repeatable",
    )  # fmt: skip
    rep.add_argument("--config", type=Path, default=None, help="the workflow config used")
    rep.add_argument("--title", default="CCIS-Diff reproduction report")
    rep.set_defaults(func=_cmd_report)
