"""The ``ccis`` command: one sub-command per workflow stage.

Each sub-command takes explicit arguments (the Snakemake rules translate the config into
them), logs what it read, did and wrote, and exits non-zero with a clear message on bad
input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ccis import __version__
from ccis.common.logs import setup_logging
from ccis.common.threads import use_threads

log = logging.getLogger("ccis")


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
        max_pixels=args.max_pixels,
        workers=args.workers,
    )


def _cmd_caption(args: argparse.Namespace) -> None:
    from ccis.caption.stage import caption_manifest
    from ccis.caption.tokens import TokenCounter
    from ccis.common.shards import parse_shard

    shard = parse_shard(args.shard)
    if args.captioner == "llama":
        from ccis.caption.llama import LlamaCaptioner

        if args.llama_model is None:
            raise SystemExit("ccis caption: --captioner llama needs --llama-model PATH.gguf")
        captioner = LlamaCaptioner(
            args.llama_model,
            mmproj=args.llama_mmproj,
            n_ctx=args.llama_n_ctx,
            max_new_tokens=args.llama_max_new_tokens,
            temperature=args.llama_temperature,
            retries=args.llama_retries,
            seed=args.seed,
            threads=args.threads,
            cache_dir=args.llama_cache,
        )
    else:
        from ccis.caption.template import TemplateCaptioner

        captioner = TemplateCaptioner(args.seed)
    caption_manifest(
        args.manifest,
        args.out,
        captioner,
        TokenCounter(args.tokenizer),
        max_tokens=args.max_tokens,
        shard=shard,
    )


def _cmd_gather(args: argparse.Namespace) -> None:
    from ccis.common.shards import gather_parts

    gather_parts(args.parts, args.out)


def _cmd_bootstrap(args: argparse.Namespace) -> None:
    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base

    use_threads(args.threads)
    settings = BootstrapSettings(
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        checkpoint_every=args.checkpoint_every,
        polyp_weight=args.polyp_weight,
        seed=args.seed,
    )
    bootstrap_base(args.triplets, args.out, args.work, settings)


def _cmd_train_generator(args: argparse.Namespace) -> None:
    from ccis.generator.train import TrainSettings, train_branch

    use_threads(args.threads)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        gradient_accumulation=args.gradient_accumulation,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        empty_prompt_probability=args.empty_prompt_probability,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        blur_sigma=args.blur_sigma,
        # Options left out take TrainSettings' defaults (written once, there).
        **{
            key: getattr(args, key)
            for key in ("lambda_learning_rate", "max_grad_norm", "taam_lambda")
            if getattr(args, key) is not None
        },
    )
    shapes = {
        key: tuple(int(c) for c in getattr(args, key).split(","))
        for key in ("conditioning_channels", "extractor_channels", "inject_channels")
        if getattr(args, key)
    }
    train_branch(args.generator, args.triplets, args.base, args.out, args.work, settings, **shapes)


def _cmd_synthesize(args: argparse.Namespace) -> None:
    from ccis.common.shards import parse_shard
    from ccis.generator.synthesize import synthesize

    use_threads(args.threads)
    synthesize(
        args.generator,
        args.base,
        args.branch,
        args.triplets,
        args.out,
        args.images,
        shard=parse_shard(args.shard),
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        resolution=args.resolution,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def _cmd_tiny_gguf(args: argparse.Namespace) -> None:
    from ccis.caption.tiny_gguf import write_tiny_llama_gguf

    log.info("wrote %s", write_tiny_llama_gguf(args.out, seed=args.seed))


def _cmd_contact_sheet(args: argparse.Namespace) -> None:
    from ccis.data.sheet import contact_sheet

    out = contact_sheet(args.manifest, args.out, count=args.count, columns=args.columns)
    log.info("wrote %s", out)


def _cmd_check_config(args: argparse.Namespace) -> None:
    from ccis.config import load_config

    config = load_config(args.config, args.schema)
    splits = ", ".join(f"{s['name']} ({s['role']})" for s in config["data"]["splits"])
    print(f"{args.config}: valid; splits: {splits}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ccis`` and its sub-commands."""
    from ccis.data.layouts import LAYOUTS
    from ccis.data.prepare import EMPTY_MASKS, ON_BAD
    from ccis.data.readers import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="ccis",
        description="Controlled colonoscopy image synthesis (CCIS-Diff) workflow stages.",
    )
    parser.add_argument("--version", action="version", version=f"ccis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    ph.add_argument("--width", type=int, default=384, help="frame width (default 384)")
    ph.add_argument("--height", type=int, default=320, help="frame height (default 320)")
    real = prep.add_argument_group("real data")
    real.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="FORMAT[:NAME]=ROOT",
        help=f"data-set folder to import (repeatable); FORMAT one of {', '.join(LAYOUTS)}",
    )
    real.add_argument("--on-bad-pair", choices=ON_BAD, default="error")
    real.add_argument("--empty-masks", choices=EMPTY_MASKS, default="keep")
    real.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    prep.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    prep.set_defaults(func=_cmd_prepare)

    cap = sub.add_parser(
        "caption",
        help="measure attributes and caption a split's pairs (one shard)",
        description="Write image–mask–text triplets (Parquet) for shard I/N of a manifest.",
    )
    cap.add_argument("--manifest", required=True, type=Path, help="a split manifest (prepare)")
    cap.add_argument("--out", required=True, type=Path, help="triplets Parquet to write")
    cap.add_argument("--captioner", choices=("template", "llama"), default="template")
    cap.add_argument("--seed", type=int, default=0, help="phrase variation / sampling seed")
    cap.add_argument("--shard", default="0/1", help="I/N: caption every N-th pair from I")
    cap.add_argument("--max-tokens", type=int, default=77, help="text-encoder token budget")
    cap.add_argument(
        "--tokenizer", type=Path, help="Hugging Face tokenizer folder (default: CLIP BPE)"
    )
    cap.add_argument("--threads", type=int, default=None, help="LLaMA CPU threads")
    lam = cap.add_argument_group("llama captioner")
    lam.add_argument("--llama-model", type=Path, help="GGUF model file")
    lam.add_argument("--llama-mmproj", type=Path, help="vision projector GGUF (LLaVA-style)")
    lam.add_argument("--llama-n-ctx", type=int, default=2048)
    lam.add_argument("--llama-max-new-tokens", type=int, default=256)
    lam.add_argument("--llama-temperature", type=float, default=0.7)
    lam.add_argument("--llama-retries", type=int, default=3)
    lam.add_argument("--llama-cache", type=Path, help="folder caching answers by content hash")
    cap.set_defaults(func=_cmd_caption)

    gather = sub.add_parser("gather", help="join a sharded stage's Parquet parts into one file")
    gather.add_argument("--out", required=True, type=Path)
    gather.add_argument("parts", nargs="+", type=Path)
    gather.set_defaults(func=_cmd_gather)

    boot = sub.add_parser(
        "bootstrap", help="train the tiny preset's base text-to-image model from scratch"
    )
    boot.add_argument("--triplets", required=True, type=Path)
    boot.add_argument("--out", required=True, type=Path, help="diffusers folder to write")
    boot.add_argument("--work", required=True, type=Path, help="checkpoint folder (resume)")
    boot.add_argument("--vae-steps", type=int, default=600)
    boot.add_argument("--unet-steps", type=int, default=1500)
    boot.add_argument("--batch-size", type=int, default=16)
    boot.add_argument("--resolution", type=int, default=64)
    boot.add_argument("--checkpoint-every", type=int, default=250)
    boot.add_argument(
        "--polyp-weight", type=float, default=10.0, help="extra loss weight inside polyp masks"
    )
    boot.add_argument("--seed", type=int, default=0)
    boot.add_argument("--threads", type=int, default=None)
    boot.set_defaults(func=_cmd_bootstrap)

    from ccis.generator import GENERATORS

    tg = sub.add_parser(
        "train-generator",
        help="train a generator's branch on the frozen base (resumes from checkpoints)",
        description="Multi-GPU: accelerate launch -m ccis.cli train-generator ...",
    )
    tg.add_argument("--generator", required=True, choices=GENERATORS)
    tg.add_argument("--triplets", required=True, type=Path)
    tg.add_argument(
        "--base", required=True, help="SD v1.5 folder, hub id, file, or bootstrap output"
    )
    tg.add_argument("--out", required=True, type=Path, help="diffusers folder for the branch")
    tg.add_argument("--work", required=True, type=Path, help="checkpoints, loss log, validation")
    tg.add_argument("--steps", type=int, required=True)
    tg.add_argument("--batch-size", type=int, default=4)
    tg.add_argument("--learning-rate", type=float, default=1e-5)
    tg.add_argument("--gradient-accumulation", type=int, default=1)
    tg.add_argument("--checkpoint-every", type=int, default=100)
    tg.add_argument("--validate-every", type=int, default=0)
    tg.add_argument("--empty-prompt-probability", type=float, default=0.5)
    tg.add_argument("--resolution", type=int, default=512)
    tg.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    tg.add_argument("--gradient-checkpointing", action="store_true")
    tg.add_argument("--blur-sigma", type=float, default=0.03)
    tg.add_argument("--taam-lambda", type=float, help="TAAM's λ at the start (default 1)")
    tg.add_argument("--lambda-learning-rate", type=float, help="TAAM λ's learning rate (1e-3)")
    tg.add_argument("--max-grad-norm", type=float, help="gradient-norm clip, 0: off (1.0)")
    tg.add_argument("--conditioning-channels", help="CCIS/ControlNet mask encoder (16,32,96,256)")
    tg.add_argument("--extractor-channels", help="Uni-ControlNet extractor stem (32,64,128)")
    tg.add_argument("--inject-channels", help="Uni-ControlNet per level (192,256,384,512)")
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--threads", type=int, default=None)
    tg.set_defaults(func=_cmd_train_generator)

    syn = sub.add_parser(
        "synthesize", help="generate one synthetic image per training mask (one shard)"
    )
    syn.add_argument("--generator", required=True, choices=GENERATORS)
    syn.add_argument("--base", required=True)
    syn.add_argument("--branch", required=True, type=Path, help="the trained branch folder")
    syn.add_argument("--triplets", required=True, type=Path)
    syn.add_argument("--out", required=True, type=Path, help="manifest part to write")
    syn.add_argument("--images", required=True, type=Path, help="folder for images/ and masks/")
    syn.add_argument("--shard", default="0/1")
    syn.add_argument("--steps", type=int, default=20)
    syn.add_argument("--guidance-scale", type=float, default=7.0)
    syn.add_argument("--resolution", type=int, default=512)
    syn.add_argument("--batch-size", type=int, default=4)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--threads", type=int, default=None)
    syn.set_defaults(func=_cmd_synthesize)

    tiny = sub.add_parser(
        "tiny-gguf", help="write a tiny random-weight LLaMA GGUF (for trying the llama path)"
    )
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_gguf)

    sheet = sub.add_parser(
        "contact-sheet", help="draw a grid of a manifest's images with their mask outlines"
    )
    sheet.add_argument("manifest", type=Path)
    sheet.add_argument("out", type=Path, help="PNG to write")
    sheet.add_argument("--count", type=int, default=12)
    sheet.add_argument("--columns", type=int, default=3, help="pairs per row")
    sheet.set_defaults(func=_cmd_contact_sheet)

    check = sub.add_parser("check-config", help="validate a workflow config file")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"))
    check.set_defaults(func=_cmd_check_config)

    eff = sub.add_parser(
        "effective-config", help="write the merged, validated workflow config as YAML"
    )
    eff.add_argument("--json", required=True, help="the config as JSON (from Snakemake)")
    eff.add_argument("--out", required=True, type=Path)
    eff.set_defaults(func=_cmd_effective_config)

    # Later stages keep their sub-commands next to their code.
    from ccis.metrics import commands as metrics_commands
    from ccis.report import commands as report_commands
    from ccis.segmentation import commands as segmentation_commands

    for module in (segmentation_commands, metrics_commands, report_commands):
        module.add_commands(sub)
    return parser


def _cmd_effective_config(args: argparse.Namespace) -> None:
    import json

    import yaml

    from ccis.common.atomic import atomic_path

    config = json.loads(args.json)
    with atomic_path(args.out) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    log.info("wrote the effective workflow config to %s", args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ccis`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear message (it already names the files), no traceback.
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
