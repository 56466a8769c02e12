"""Command-line sub-commands of the caption stage (registered by ``ccis.cli``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ccis.common.arguments import given

log = logging.getLogger(__name__)

# `--llama-<key>` options, passed to LlamaCaptioner only when given (its defaults apply).
LLAMA_OPTIONS = ("prompt", "n_ctx", "max_new_tokens", "temperature", "retries")


def _cmd_caption(args: argparse.Namespace) -> None:
    from ccis.caption.stage import caption_manifest
    from ccis.caption.tokens import TokenCounter
    from ccis.common.shards import parse_shard

    shard = parse_shard(args.shard)
    if args.captioner == "llama":
        from ccis.caption.llama import LlamaCaptioner

        if args.llama_model is None:
            raise SystemExit("ccis caption: --captioner llama needs --llama-model PATH.gguf")
        options = given(args, [f"llama_{k}" for k in LLAMA_OPTIONS])
        captioner = LlamaCaptioner(
            args.llama_model,
            mmproj=args.llama_mmproj,
            seed=args.seed,
            threads=args.threads,
            cache_dir=args.llama_cache,
            **{key.removeprefix("llama_"): value for key, value in options.items()},
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


def _cmd_tiny_gguf(args: argparse.Namespace) -> None:
    from ccis.caption.tiny_gguf import write_tiny_llama_gguf

    log.info("wrote %s", write_tiny_llama_gguf(args.out, seed=args.seed))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this stage's sub-commands on the ``ccis`` parser."""
    # caption_manifest's default budget, without importing the stage (pandas, OpenCV)
    # at every start of `ccis`.
    from ccis.caption.tokens import CLIP_CONTEXT

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
    cap.add_argument(
        "--max-tokens", type=int, default=CLIP_CONTEXT,
        help="text-encoder token budget (%(default)s)",
    )  # fmt: skip
    cap.add_argument(
        "--tokenizer", type=Path, help="Hugging Face tokenizer folder (default: CLIP BPE)"
    )
    cap.add_argument("--threads", type=int, default=None, help="LLaMA CPU threads")
    lam = cap.add_argument_group("llama captioner (options left out take its defaults)")
    lam.add_argument("--llama-model", type=Path, help="GGUF model file")
    lam.add_argument("--llama-mmproj", type=Path, help="vision projector GGUF (LLaVA-style)")
    lam.add_argument(
        "--llama-prompt", choices=("auto", "chat", "completion"),
        help="chat template (instruction models) or few-shot completion (base models); "
        "auto: chat when the GGUF has a chat template",
    )  # fmt: skip
    lam.add_argument("--llama-n-ctx", type=int)
    lam.add_argument("--llama-max-new-tokens", type=int)
    lam.add_argument("--llama-temperature", type=float)
    lam.add_argument("--llama-retries", type=int)
    lam.add_argument("--llama-cache", type=Path, help="folder caching answers by content hash")
    cap.set_defaults(func=_cmd_caption)

    tiny = sub.add_parser(
        "tiny-gguf", help="write a tiny random-weight LLaMA GGUF (for trying the llama path)"
    )
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_gguf)
