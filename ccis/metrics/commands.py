"""Command-line sub-commands of this stage (registered by ``ccis.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccis.common.arguments import add_table_outputs, pick
from ccis.common.threads import use_threads


def _cmd_metrics_generation(args: argparse.Namespace) -> None:
    from ccis.metrics.evaluate import generation_metrics

    use_threads(args.threads)
    attributes = tuple(a.strip() for a in args.agreement_attributes.split(",") if a.strip())
    options = (
        "clip_model", "clip_pretrained", "clip_cache", "segmenter", "inception_dir", "fid_mode",
        "batch_size", "device", "per_image", "text_adherence", "external",
    )  # fmt: skip
    generation_metrics(
        args.generator, args.synthetic, args.real, args.out, agreement_attributes=attributes,
        **pick(args, options),
    )  # fmt: skip


def _cmd_text_adherence(args: argparse.Namespace) -> None:
    from ccis.metrics.text_adherence import text_adherence

    use_threads(args.threads)
    options = ("steps", "guidance_scale", "resolution", "seed", "batch_size")
    text_adherence(args.base, args.branch, args.triplets, args.out, **pick(args, options))


def _cmd_generation_table(args: argparse.Namespace) -> None:
    from ccis.metrics.table import table1

    table1(args.metrics, args.out_csv, args.out_md, paper=args.paper)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    from ccis.metrics.agreement import SCORED_ATTRIBUTES
    from ccis.metrics.fid import FID_MODES

    gen = sub.add_parser(
        "metrics-generation",
        help="FID, CLIP-score, CLIP-image, attribute agreement, mask fidelity of a synthetic set",
        description=(
            "Compare a generator's synthetic set with the real training triplets and write one "
            "JSON file. Metrics whose weights are not available locally are written as "
            '{"status": "not computed", "reason": ...}; nothing is ever downloaded.'
        ),
    )
    gen.add_argument("--generator", required=True, help="generator name (row of Table 1)")
    gen.add_argument(
        "--synthetic",
        required=True,
        type=Path,
        help="synthetic manifest (ccis synthesize; with --external: ccis prepare)",
    )
    gen.add_argument(
        "--real", required=True, type=Path, help="real training triplets (ccis caption)"
    )
    gen.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    gen.add_argument(
        "--clip-model",
        default="ViT-B-32",
        help="open_clip model name, model-config JSON file, or local-dir:FOLDER (default ViT-B-32)",
    )
    gen.add_argument(
        "--clip-pretrained",
        default=None,
        help="CLIP checkpoint file, or open_clip pretrained tag found in the local cache "
        "(none: CLIP metrics not computed)",
    )
    gen.add_argument("--clip-cache", type=Path, help="open_clip/Hugging Face cache folder")
    gen.add_argument(
        "--segmenter", type=Path, help="trained real-data segmenter folder (mask fidelity)"
    )
    gen.add_argument(
        "--inception-dir",
        type=Path,
        help="folder holding clean-fid's inception-2015-12-05.pt (default: clean-fid's, /tmp; "
        "legacy_pytorch: the torch hub folder)",
    )
    gen.add_argument("--fid-mode", choices=FID_MODES, default="clean")
    gen.add_argument(
        "--agreement-attributes",
        default=",".join(SCORED_ATTRIBUTES),
        help=f"attributes scored by attribute agreement (default {','.join(SCORED_ATTRIBUTES)})",
    )
    gen.add_argument("--batch-size", type=int, default=32)
    gen.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--per-image", type=Path, help="also write per-image values (Parquet)")
    gen.add_argument(
        "--text-adherence", type=Path, help="the generator's ccis text-adherence table (Parquet)"
    )
    gen.add_argument(
        "--external", metavar="LABEL",
        help="the set was made by another tool and imported with ccis prepare (--synthetic is "
        "its manifest): FID and mask fidelity only; LABEL names it in Table 1",
    )  # fmt: skip
    gen.add_argument("--threads", type=int, default=None, help="CPU threads for torch/OpenCV")
    gen.set_defaults(func=_cmd_metrics_generation)

    text = sub.add_parser(
        "text-adherence",
        help="pale-versus-red prompts on every training mask (same seed): text adherence",
        description=(
            "For every training mask, draw one image with the caption's colour set to 'pale' "
            "and one with 'red', same seed; a win is a paler polyp for 'pale'. Writes one row "
            "per mask (Parquet)."
        ),
    )
    text.add_argument("--base", required=True, help="base model folder (SD v1.5 or bootstrap)")
    text.add_argument("--branch", required=True, type=Path, help="the trained branch folder")
    text.add_argument("--triplets", required=True, type=Path, help="captions/train.parquet")
    text.add_argument("--out", required=True, type=Path, help="Parquet to write")
    text.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    text.add_argument("--guidance-scale", type=float, default=7.0)
    text.add_argument("--resolution", type=int, default=512, help="generation size in pixels")
    text.add_argument("--seed", type=int, default=0, help="mask k uses seed + k")
    text.add_argument("--batch-size", type=int, default=16, help="masks per batch (×2 images)")
    text.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    text.set_defaults(func=_cmd_text_adherence)

    table = sub.add_parser(
        "generation-table",
        help="Table 1 (generation metrics per generator) as CSV and Markdown",
    )
    add_table_outputs(table)
    table.add_argument("metrics", nargs="+", type=Path, help="metrics-generation JSON files")
    table.set_defaults(func=_cmd_generation_table)
