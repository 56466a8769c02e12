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


wildcard_constraints:
    split="|".join(sorted(SPLITS)),
    shard=r"\d+",


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
