"""Command-line sub-commands of this stage (registered by ``ccis.cli``).

Imports of torch and the models happen inside the command functions, so that ``ccis``
starts fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ccis.common.arguments import add_options, add_table_outputs, given, names, positive_list
from ccis.common.pairs import parse_pairs
from ccis.common.threads import use_threads
from ccis.segmentation.registry import LOSSES, REGISTRY

log = logging.getLogger(__name__)


# Options passed to train_segmenter only when given: its signature (and, for weight
# decay and drop-path, the segmenter registry) holds the defaults.
TRAIN_OPTIONS = (
    ("batch_size", int, ""), ("learning_rate", float, ""), ("weight_decay", float, ""),
    ("drop_path_rate", float, ""), ("size", int, "training size (square)"),
    ("scales", positive_list(float, "0.75,1,1.25"), ""), ("clip", float, "gradient clamp by value"),
    ("seed", int, ""), ("pretrained_file", Path, "local timm weights of the backbone"),
    ("loss", LOSSES, "structure loss: reference (the released code's) or weighted"),
    ("repeat", int, "list the training pairs this many times per epoch (step-matched)"),
)  # fmt: skip


def _cmd_train(args: argparse.Namespace) -> None:
    from ccis.segmentation.train import train_segmenter

    train_segmenter(
        args.model,
        args.backbone,
        args.train,
        args.out,
        args.work,
        epochs=args.epochs,
        threads=args.threads,
        soft_masks=not args.binary_masks,
        **given(args, names(TRAIN_OPTIONS)),
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ccis.segmentation.evaluate import evaluate_segmenter

    use_threads(args.threads)
    tests = {name: Path(path) for name, path in parse_pairs(args.test, "--test").items()}
    runs = (args.model_dir, args.out, args.setting, args.seed)
    if len({len(values) for values in runs}) != 1:
        raise ValueError(
            "evaluate-segmenter: give --model-dir, --out, --setting and --seed once per run, "
            f"in the same order (got {', '.join(str(len(v)) for v in runs)})"
        )
    # One process for every run: torch and timm are imported once, not once per run.
    for model_dir, out, setting, seed in zip(*runs, strict=True):
        evaluate_segmenter(model_dir, tests, out, args.model, setting, seed, args.batch_size)


def _cmd_table(args: argparse.Namespace) -> None:
    from ccis.segmentation.table import table3

    external = parse_pairs(args.external, "--external")
    table3(args.parquets, args.out_csv, args.out_md, paper=args.paper, external=external)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    train = sub.add_parser(
        "train-segmenter",
        help="train a segmenter (PraNet, Polyp-PVT, PVT-CASCADE) on real (+ synthetic) pairs "
        "(resumes from checkpoints)",
        description="Writes OUT/{model.safetensors,config.json,loss.csv}; WORK keeps the "
        "per-epoch checkpoints. Options left out take train_segmenter's defaults (the "
        "references' batch 16, lr 1e-4, 352², scales 0.75/1/1.25, clamp 0.5); weight decay "
        "and drop-path default to the model's reference values (ccis.segmentation.registry).",
    )
    train.add_argument("--model", required=True, choices=REGISTRY)
    train.add_argument("--backbone", required=True, help="timm model, e.g. res2net50d, pvt_v2_b2")
    train.add_argument(
        "--train", required=True, action="append", type=Path, metavar="MANIFEST",
        help="training manifest (repeatable: real, synthetic/<gen>.parquet)",
    )  # fmt: skip
    train.add_argument("--out", required=True, type=Path, help="model folder to write")
    train.add_argument("--work", required=True, type=Path, help="checkpoint folder (resume)")
    train.add_argument("--epochs", required=True, type=int)
    add_options(train, TRAIN_OPTIONS)
    train.add_argument(
        "--binary-masks", action="store_true",
        help="binarise resized training masks at 128 (default: soft, as the references)",
    )  # fmt: skip
    train.add_argument("--threads", type=int, default=None)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate-segmenter",
        help="per-image mDice/mIoU/Dice/IoU of one or several segmenter runs on test sets",
        description="Give --model-dir, --out, --setting and --seed once per run (repeat them "
        "in the same order to score several runs of one model in one process).",
    )
    ev.add_argument(
        "--model-dir", required=True, type=Path, action="append",
        help="train-segmenter output (repeatable: one per run)",
    )  # fmt: skip
    ev.add_argument(
        "--test", required=True, action="append",
        metavar="NAME=MANIFEST", help="test set (repeatable), e.g. kvasir=data/kvasir.parquet",
    )  # fmt: skip
    ev.add_argument(
        "--out", required=True, type=Path, action="append",
        help="per-image Parquet to write (one per --model-dir)",
    )  # fmt: skip
    ev.add_argument("--model", required=True, help="model label for the rows (e.g. pranet)")
    ev.add_argument(
        "--setting", required=True, action="append",
        help="training setting label (e.g. real, ccis; one per --model-dir)",
    )  # fmt: skip
    ev.add_argument(
        "--seed", required=True, type=int, action="append",
        help="training seed label (one per --model-dir)",
    )  # fmt: skip
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--threads", type=int, default=None)
    ev.set_defaults(func=_cmd_evaluate)

    tab = sub.add_parser(
        "segmentation-table", help="Table 3: mDice/mIoU per model × setting, mean ± std over seeds"
    )
    add_table_outputs(tab)
    tab.add_argument(
        "--external", action="append", default=[], metavar="NAME=LABEL",
        help="an external synthetic set (setting real+NAME) and its label (repeatable)",
    )  # fmt: skip
    tab.add_argument("parquets", nargs="+", type=Path, help="evaluate-segmenter outputs")
    tab.set_defaults(func=_cmd_table)
