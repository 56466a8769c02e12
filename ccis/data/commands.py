"""Command-line sub-commands of the data stage (registered by ``ccis.cli``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ccis.common.arguments import defaults_of

log = logging.getLogger(__name__)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ccis.data.prepare import PhantomSpec, SourceSpec, prepare_split

    phantom = None
    if args.phantom_count is not None:
        phantom = PhantomSpec(args.phantom_count, args.centre, args.seed, args.width, args.height)
    sources = [SourceSpec.parse(s) for s in args.source]
    if (phantom is None) == (not sources):
        raise SystemExit("ccis prepare: give either --phantom-count or at least one --source")
    prepare_split(
        args.split,
        args.out,
        phantom=phantom,
        sources=sources,
        on_bad_pair=args.on_bad_pair,
        empty_masks=args.empty_masks,
        suspicious_masks=args.suspicious_masks,
        max_pixels=args.max_pixels,
        workers=args.workers,
    )


def _cmd_contact_sheet(args: argparse.Namespace) -> None:
    from ccis.data.sheet import contact_sheet

    out = contact_sheet(args.manifest, args.out, count=args.count, columns=args.columns)
    log.info("wrote %s", out)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    from ccis.data.layouts import LAYOUTS
    from ccis.data.phantom import render_phantom
    from ccis.data.prepare import EMPTY_MASKS, ON_BAD, SUSPICIOUS_MASKS, prepare_split
    from ccis.data.sheet import contact_sheet

    split = defaults_of(prepare_split)
    frames = defaults_of(render_phantom)
    prep = sub.add_parser(
        "prepare",
        help="render phantom pairs or import a real data set into the normalised layout",
        description=(
            "Write OUT/SPLIT/{images,masks}/<id>.png and the manifest OUT/SPLIT.parquet. "
            "Formats: " + "; ".join(f"{k}: {v.description}" for k, v in LAYOUTS.items())
        ),
    )
    prep.add_argument("--split", required=True, help="split name (output folder and manifest name)")
    prep.add_argument(
        "--out", required=True, type=Path, help="folder for the split and its manifest"
    )
    ph = prep.add_argument_group("phantom data")
    ph.add_argument("--phantom-count", type=int, help="number of phantom frames to render")
    ph.add_argument("--centre", type=int, default=0, help="phantom centre 0-3 (default 0)")
    ph.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    ph.add_argument("--width", type=int, default=frames["width"], help="frame width (%(default)s)")
    ph.add_argument(
        "--height", type=int, default=frames["height"], help="frame height (%(default)s)"
    )
    real = prep.add_argument_group("real data")
    real.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="FORMAT[:NAME]=ROOT",
        help=f"data-set folder to import (repeatable); FORMAT one of {', '.join(LAYOUTS)}",
    )
    real.add_argument("--on-bad-pair", choices=ON_BAD, default=split["on_bad_pair"])
    real.add_argument("--empty-masks", choices=EMPTY_MASKS, default=split["empty_masks"])
    real.add_argument(
        "--suspicious-masks",
        choices=SUSPICIOUS_MASKS,
        default=split["suspicious_masks"],
        help="masks covering ≥90%% of the frame, specks < 0.1%%, or cut by all four borders",
    )
    real.add_argument("--max-pixels", type=int, default=split["max_pixels"])
    prep.add_argument(
        "--workers", type=int, default=split["workers"], help="worker processes (%(default)s)"
    )
    prep.set_defaults(func=_cmd_prepare)

    sheet_defaults = defaults_of(contact_sheet)
    sheet = sub.add_parser(
        "contact-sheet", help="draw a grid of a manifest's images with their mask outlines"
    )
    sheet.add_argument("manifest", type=Path)
    sheet.add_argument("out", type=Path, help="PNG to write")
    sheet.add_argument("--count", type=int, default=sheet_defaults["count"])
    sheet.add_argument(
        "--columns", type=int, default=sheet_defaults["columns"], help="pairs per row"
    )
    sheet.set_defaults(func=_cmd_contact_sheet)
