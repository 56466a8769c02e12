"""Command-line sub-commands of the generator stage (registered by ``ccis.cli``).

Options left out take the library's defaults, written once in ``BootstrapSettings``,
``TrainSettings``, the branch classes and ``synthesize`` (reading them here would import
torch at every start of ``ccis``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ccis.common.arguments import add_options, channels, given, names
from ccis.common.threads import use_threads

# choices= the registry itself: argparse checks membership when it parses, so an entry
# registered at run time is accepted too.
from ccis.generator.registry import REGISTRY

BOOTSTRAP_OPTIONS = (
    ("vae_steps", int, ""), ("unet_steps", int, ""), ("batch_size", int, ""),
    ("resolution", int, ""), ("checkpoint_every", int, ""),
    ("polyp_weight", float, "extra loss weight inside polyp masks"), ("seed", int, ""),
    ("latent_channels", int, "VAE latent channels"),
    ("texture_weight", float, "weight of the VAE's texture-energy term (0: off)"),
)  # fmt: skip
TRAIN_OPTIONS = (
    ("batch_size", int, ""), ("learning_rate", float, ""), ("gradient_accumulation", int, ""),
    ("checkpoint_every", int, ""),
    ("validate_every", int, "validation images every N steps (0: off)"),
    ("empty_prompt_probability", float, ""), ("resolution", int, ""),
    ("mixed_precision", ("no", "fp16", "bf16"), ""), ("seed", int, ""),
    ("blur_sigma", float, "BMWS blur σ (fraction of the side)"),
    ("taam_lambda", float, "TAAM's λ at the start"),
    ("lambda_learning_rate", float, "TAAM λ's learning rate"),
    ("max_grad_norm", float, "gradient-norm clip, 0: off"),
)  # fmt: skip
BRANCH_SHAPES = (
    ("conditioning_channels", channels, "CCIS/ControlNet mask encoder, e.g. 16,32,96,256"),
    ("extractor_channels", channels, "Uni-ControlNet extractor stem, e.g. 32,64,128"),
    ("inject_channels", channels, "Uni-ControlNet widths per level, e.g. 192,256,384,512"),
)  # fmt: skip
SYNTHESIS_OPTIONS = (
    ("steps", int, "DDIM steps"), ("guidance_scale", float, "classifier-free guidance"),
    ("resolution", int, ""), ("batch_size", int, ""), ("seed", int, ""),
)  # fmt: skip


def _cmd_bootstrap(args: argparse.Namespace) -> None:
    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base

    use_threads(args.threads)
    settings = BootstrapSettings(**given(args, names(BOOTSTRAP_OPTIONS)))
    bootstrap_base(args.triplets, args.out, args.work, settings)


def _cmd_train_generator(args: argparse.Namespace) -> None:
    from ccis.generator.train import TrainSettings, train_branch

    use_threads(args.threads)
    settings = TrainSettings(
        steps=args.steps,
        gradient_checkpointing=args.gradient_checkpointing,
        **given(args, names(TRAIN_OPTIONS)),
    )
    shapes = given(args, names(BRANCH_SHAPES))
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
        **given(args, names(SYNTHESIS_OPTIONS)),
    )


def _cmd_make_sd15_shaped(args: argparse.Namespace) -> None:
    from ccis.diffusion.sd15 import save_sd15_shaped

    use_threads(args.threads)
    save_sd15_shaped(args.out, seed=args.seed)


def _generator_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, choices=REGISTRY)
    parser.add_argument("--triplets", required=True, type=Path)
    parser.add_argument(
        "--base", required=True, help="SD v1.5 folder, hub id, file, or bootstrap output"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    boot = sub.add_parser(
        "bootstrap",
        help="train the tiny preset's base text-to-image model from scratch",
        description="Options left out take BootstrapSettings' defaults.",
    )
    boot.add_argument("--triplets", required=True, type=Path)
    boot.add_argument("--out", required=True, type=Path, help="diffusers folder to write")
    boot.add_argument("--work", required=True, type=Path, help="checkpoint folder (resume)")
    add_options(boot, BOOTSTRAP_OPTIONS)
    boot.add_argument("--threads", type=int, default=None)
    boot.set_defaults(func=_cmd_bootstrap)

    tg = sub.add_parser(
        "train-generator",
        help="train a generator's branch on the frozen base (resumes from checkpoints)",
        description="Options left out take TrainSettings' defaults (paper: AdamW 1e-5, "
        "batch 4, 512²) and the branch class's SD v1.5 shapes. Multi-GPU: accelerate launch "
        "-m ccis.cli train-generator ...",
    )
    _generator_inputs(tg)
    tg.add_argument("--out", required=True, type=Path, help="diffusers folder for the branch")
    tg.add_argument("--work", required=True, type=Path, help="checkpoints, loss log, validation")
    tg.add_argument("--steps", type=int, required=True)
    add_options(tg, TRAIN_OPTIONS + BRANCH_SHAPES)
    tg.add_argument("--gradient-checkpointing", action="store_true")
    tg.add_argument("--threads", type=int, default=None)
    tg.set_defaults(func=_cmd_train_generator)

    syn = sub.add_parser(
        "synthesize",
        help="generate one synthetic image per training mask (one shard)",
        description="Options left out take synthesize()'s defaults (paper: DDIM 20, CFG 7).",
    )
    _generator_inputs(syn)
    syn.add_argument("--branch", required=True, type=Path, help="the trained branch folder")
    syn.add_argument("--out", required=True, type=Path, help="manifest part to write")
    syn.add_argument("--images", required=True, type=Path, help="folder for images/ and masks/")
    syn.add_argument("--shard", default="0/1")
    add_options(syn, SYNTHESIS_OPTIONS)
    syn.add_argument("--threads", type=int, default=None)
    syn.set_defaults(func=_cmd_synthesize)

    shaped = sub.add_parser(
        "make-sd15-shaped",
        help="write a random-weight Stable Diffusion v1.5-shaped base (rehearsals, no download)",
        description="Builds SD v1.5's UNet, VAE and CLIP ViT-L/14 text encoder from the "
        "configurations shipped with ccis, with random weights, and CLIP's tokenizer from "
        "open_clip's vocabulary file; writes OUT/diffusers (a diffusers folder) and "
        "OUT/sd15.safetensors (the same weights in the original single-file layout). Either "
        "can be a --base. About 4.3 GB each.",
    )
    shaped.add_argument("out", type=Path, help="folder to write")
    shaped.add_argument("--seed", type=int, default=0)
    shaped.add_argument("--threads", type=int, default=None)
    shaped.set_defaults(func=_cmd_make_sd15_shaped)
