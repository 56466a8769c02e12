# Shared set-up: validate the merged config before any job, expose helpers to rules.
import shlex
from pathlib import Path

from ccis.config import ConfigError, train_split, validate_config


try:
    validate_config(
        config,
        Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml",
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = config["results"]
DATA = config["data"]
SPLITS = {split["name"]: split for split in DATA["splits"]}
TRAIN = train_split(config)
CAPTION = config["caption"]
MODEL = config["model"]
GENERATORS = config["generators"]


wildcard_constraints:
    split="|".join(sorted(SPLITS)),
    shard=r"\d+",
    generator="|".join(["ccis", "controlnet", "unicontrolnet", "ccis_no_bmws", "ccis_no_taam"]),


def all_manifests():
    """Manifests of every configured split."""
    return expand(f"{RESULTS}/data/{{split}}.parquet", split=sorted(SPLITS))


def caption_args():
    """Command-line arguments of `ccis caption` (all but manifest, output and shard)."""
    args = [
        "--captioner", CAPTION["captioner"],
        "--seed", CAPTION["seed"],
        "--max-tokens", CAPTION["max_tokens"],
    ]
    if CAPTION["tokenizer"]:
        args += ["--tokenizer", CAPTION["tokenizer"]]
    if CAPTION["captioner"] == "llama":
        llama = CAPTION["llama"]
        args += [
            "--llama-model", llama["model"],
            "--llama-n-ctx", llama["n_ctx"],
            "--llama-max-new-tokens", llama["max_new_tokens"],
            "--llama-temperature", llama["temperature"],
            "--llama-retries", llama["retries"],
            "--llama-cache", f"{RESULTS}/cache/llama",
        ]
        if llama["mmproj"]:
            args += ["--llama-mmproj", llama["mmproj"]]
    return " ".join(shlex.quote(str(a)) for a in args)


def caption_model_inputs():
    """Model files the captioner reads: a new model means new captions."""
    if CAPTION["captioner"] != "llama":
        return []
    llama = CAPTION["llama"]
    return [path for path in (llama["model"], llama["mmproj"]) if path]


def base_model():
    """The frozen base: the bootstrap output (tiny) or your SD v1.5 (sd15)."""
    if MODEL["preset"] == "tiny":
        return f"{RESULTS}/models/base"
    return MODEL["sd15"]


def base_inputs():
    """The base as a DAG input when the workflow makes it (tiny) or it is a local path."""
    if MODEL["preset"] == "tiny" or Path(str(MODEL["sd15"])).exists():
        return [base_model()]
    return []  # a hub id in the local cache


def model_args():
    return f"--resolution {MODEL['resolution']}"


def train_args():
    train = config["train"]
    args = [
        "--steps", train["steps"],
        "--batch-size", train["batch_size"],
        "--learning-rate", train["learning_rate"],
        "--gradient-accumulation", train["gradient_accumulation"],
        "--checkpoint-every", train["checkpoint_every"],
        "--validate-every", train["validate_every"],
        "--empty-prompt-probability", train["empty_prompt_probability"],
        "--mixed-precision", train["mixed_precision"],
        "--blur-sigma", train["blur_sigma"],
        "--seed", train["seed"],
        "--conditioning-channels", ",".join(str(c) for c in MODEL["conditioning_channels"]),
    ]
    if train["gradient_checkpointing"]:
        args.append("--gradient-checkpointing")
    return " ".join(shlex.quote(str(a)) for a in args)


def synthesis_args():
    synthesis = config["synthesis"]
    args = [
        "--steps", synthesis["steps"],
        "--guidance-scale", synthesis["guidance_scale"],
        "--batch-size", synthesis["batch_size"],
        "--seed", synthesis["seed"],
    ]
    return " ".join(shlex.quote(str(a)) for a in args)


def prepare_args(split):
    """Command-line arguments of `ccis prepare` for one split (explicit, no config)."""
    spec = SPLITS[split]
    if "phantom" in spec:
        phantom = DATA["phantom"]
        args = [
            "--phantom-count", spec["phantom"]["count"],
            "--centre", spec["phantom"]["centre"],
            "--seed", phantom["seed"],
            "--width", phantom["width"],
            "--height", phantom["height"],
        ]
    else:
        args = []
        for source in spec["sources"]:
            head = source["format"] + (f":{source['name']}" if "name" in source else "")
            args += ["--source", f"{head}={source['root']}"]
        args += [
            "--on-bad-pair", DATA["on_bad_pair"],
            "--empty-masks", DATA["empty_masks"],
            "--max-pixels", DATA["max_pixels"],
        ]
    return " ".join(shlex.quote(str(a)) for a in args)
