"""Command-line sub-commands of this stage (registered by ``ccis.cli``).

Imports of torch and the models happen inside the command functions, so that ``ccis``
starts fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ccis.common.pairs import parse_pairs
from ccis.common.threads import use_threads

log = logging.getLogger(__name__)

SEGMENTERS = ("pranet", "polyp_pvt")


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must read like 0.75,1,1.25; got {text!r}")
    return scales


def _cmd_train(args: argparse.Namespace) -> None:
    from ccis.segmentation.train import train_segmenter

    train_segmenter(
        args.model,
        args.backbone,
        args.train,
        args.out,
        args.work,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        size=args.size,
        scales=args.scales,
        clip=args.clip,
        seed=args.seed,
        weight_decay=args.weight_decay,
        drop_path_rate=args.drop_path_rate,
        pretrained_file=args.pretrained_file,
        threads=args.threads,
        loss=args.loss,
        soft_masks=not args.binary_masks,
        repeat=args.repeat,
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ccis.segmentation.evaluate import evaluate_segmenter

    use_threads(args.threads)
    tests = {name: Path(path) for name, path in parse_pairs(args.test, "--test").items()}
    evaluate_segmenter(
        args.model_dir, tests, args.out, args.model, args.setting, args.seed, args.batch_size
    )


def _cmd_table(args: argparse.Namespace) -> None:
    from ccis.segmentation.table import table3

    table3(args.parquets, args.out_csv, args.out_md, paper=args.paper)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    train = sub.add_parser(
        "train-segmenter",
        help="train PraNet or Polyp-PVT on real (+ synthetic) pairs (resumes from checkpoints)",
        description="Writes OUT/{model.safetensors,config.json,loss.csv}; WORK keeps the "
        "per-epoch checkpoints. Weight decay and drop-path default to the model's reference "
        "values (PraNet: Adam, 0, 0; Polyp-PVT: AdamW, 1e-4, 0.1).",
    )
    train.add_argument("--model", required=True, choices=SEGMENTERS)
    train.add_argument("--backbone", required=True, help="timm model, e.g. res2net50d, pvt_v2_b2")
    train.add_argument("--pretrained-file", type=Path, help="local timm weights of the backbone")
    train.add_argument(
        "--train", required=True, action="append", type=Path, metavar="MANIFEST",
        help="training manifest (repeatable: real, synthetic/<gen>.parquet)",
    )  # fmt: skip
    train.add_argument("--out", required=True, type=Path, help="model folder to write")
    train.add_argument("--work", required=True, type=Path, help="checkpoint folder (resume)")
    train.add_argument("--epochs", required=True, type=int)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--drop-path-rate", type=float, default=None)
    train.add_argument("--size", type=int, default=352, help="training size (square)")
    train.add_argument("--scales", type=_scales, default=(0.75, 1.0, 1.25), help="0.75,1,1.25")
    train.add_argument("--clip", type=float, default=0.5, help="gradient clamp by value")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--loss", choices=("reference", "weighted"), default="reference",
        help="structure loss: reference (released code: unweighted BCE) or weighted",
    )  # fmt: skip
    train.add_argument(
        "--binary-masks", action="store_true",
        help="binarise resized training masks at 128 (default: soft, as the references)",
    )  # fmt: skip
    train.add_argument(
        "--repeat", type=int, default=1,
        help="list the training pairs this many times per epoch (step-matched control)",
    )  # fmt: skip
    train.add_argument("--threads", type=int, default=None)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate-segmenter", help="per-image mDice/mIoU/Dice/IoU of a segmenter on test sets"
    )
    ev.add_argument("--model-dir", required=True, type=Path, help="train-segmenter output")
    ev.add_argument(
        "--test", required=True, action="append",
        metavar="NAME=MANIFEST", help="test set (repeatable), e.g. kvasir=data/kvasir.parquet",
    )  # fmt: skip
    ev.add_argument("--out", required=True, type=Path, help="per-image Parquet to write")
    ev.add_argument("--model", required=True, help="model label for the rows (e.g. pranet)")
    ev.add_argument("--setting", required=True, help="training setting label (e.g. real, ccis)")
    ev.add_argument("--seed", required=True, type=int, help="training seed label")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--threads", type=int, default=None)
    ev.set_defaults(func=_cmd_evaluate)

    tab = sub.add_parser(
        "segmentation-table", help="Table 3: mDice/mIoU per model × setting, mean ± std over seeds"
    )
    tab.add_argument("--out-csv", required=True, type=Path)
    tab.add_argument("--out-md", required=True, type=Path)
    tab.add_argument("--paper", action="store_true", help="add the paper's published values")
    tab.add_argument("parquets", nargs="+", type=Path, help="evaluate-segmenter outputs")
    tab.set_defaults(func=_cmd_table)
