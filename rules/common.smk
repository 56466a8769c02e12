# Shared set-up: validate the merged config before any job, expose helpers to rules.
import json
import shlex
from pathlib import Path

from ccis.config import (
    ConfigError,
    segmentation_settings,
    setting_repeat,
    train_split,
    validate_config,
)
from ccis.generator import ABLATIONS, GENERATORS as ALL_GENERATORS, REGISTRY


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
TESTS = [split["name"] for split in DATA["splits"] if split["role"] == "test"]
SEGMENTATION = config["segmentation"]
SETTINGS = segmentation_settings(config)
METRICS = config["metrics"]
REPORT = config["report"]


wildcard_constraints:
    split="|".join(sorted(SPLITS)),
    shard=r"\d+",
    generator="|".join(ALL_GENERATORS),
    model="pranet|polyp_pvt",
    setting=r"real(_x2|\+[a-z_]+)?",
    seed=r"\d+",


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
    return quoted(args)


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
        "--taam-lambda", train["taam_lambda"],
        "--lambda-learning-rate", train["lambda_learning_rate"],
        "--max-grad-norm", train["max_grad_norm"],
        "--seed", train["seed"],
        "--conditioning-channels", ",".join(str(c) for c in MODEL["conditioning_channels"]),
        "--extractor-channels",
        ",".join(str(c) for c in MODEL["unicontrolnet"]["extractor_channels"]),
        "--inject-channels", ",".join(str(c) for c in MODEL["unicontrolnet"]["inject_channels"]),
    ]
    if train["gradient_checkpointing"]:
        args.append("--gradient-checkpointing")
    return quoted(args)


def synthesis_args():
    synthesis = config["synthesis"]
    args = [
        "--steps", synthesis["steps"],
        "--guidance-scale", synthesis["guidance_scale"],
        "--batch-size", synthesis["batch_size"],
        "--seed", synthesis["seed"],
    ]
    return quoted(args)


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
    return quoted(args)


def local_file(path):
    """``[path]`` when a configured file exists here (a DAG input), else ``[]``."""
    return [path] if path and Path(str(path)).exists() else []


def quoted(args):
    """Shell words of ``args``, each quoted."""
    return " ".join(shlex.quote(str(a)) for a in args)


def base_path(wildcards, input):
    """The base folder for the command (its DAG input), else your SD v1.5 id."""
    return input.base[0] if input.base else base_model()


def branch_args(folders):
    """`--branch <gen>=<folder>` for each trained branch folder."""
    return " ".join(f"--branch {Path(folder).name}={folder}" for folder in folders)


def launcher(command, gpus):
    """`ccis <command>`, or through `accelerate launch` with one process per GPU."""
    if gpus > 1:
        return f"accelerate launch --multi_gpu --num_processes {gpus} -m ccis.cli {command}"
    return f"ccis {command}"


def segmentation_args(model, setting):
    """Command-line arguments of `ccis train-segmenter` for one model and training setting
    (explicit, no config)."""
    seg, net = SEGMENTATION, SEGMENTATION[model]
    args = [
        "--repeat", setting_repeat(setting),
        "--loss", seg["loss"],
        "--backbone", net["backbone"],
        "--epochs", net["epochs"],
        "--learning-rate", net["learning_rate"],
        "--weight-decay", net["weight_decay"],
        "--drop-path-rate", net["drop_path_rate"],
        "--batch-size", seg["batch_size"],
        "--size", seg["size"],
        "--scales", ",".join(str(s) for s in seg["scales"]),
        "--clip", seg["clip"],
    ]
    if net["pretrained_file"]:
        args += ["--pretrained-file", net["pretrained_file"]]
    if not seg["soft_masks"]:
        args.append("--binary-masks")
    return quoted(args)


def segmentation_runs(suffix):
    """Every Table 3 run's file ``suffix`` (model × setting × seed)."""
    return expand(
        f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/{suffix}",
        model=SEGMENTATION["models"],
        setting=SETTINGS,
        seed=SEGMENTATION["seeds"],
    )


def fidelity_segmenter():
    """The real-data segmenter that judges the mask fidelity of synthetic images."""
    judge = METRICS["fidelity_segmenter"]
    return f"{RESULTS}/segmentation/{judge['model']}/real/seed{judge['seed']}/model"


def taam_generators():
    """Configured generators whose branch has TAAM (they log λ per block)."""
    return [g for g in GENERATORS if REGISTRY[g].switches.get("taam")]


def ablation_generators():
    """Generators of the Fig. 4 ablation grid (CCIS-Diff and its ablations present)."""
    return [g for g in ("ccis", *ABLATIONS) if g in GENERATORS]


def report_caption(name):
    """The text of a figure's caption (shared with `snakemake --report`), one paragraph."""
    path = Path(workflow.basedir) / "workflow" / "report" / f"{name}.rst"
    return " ".join(path.read_text().split()).replace("**", "")
