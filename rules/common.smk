# Shared set-up: validate the merged config before any job, name the config's cross-stage
# values and the wildcards, and the few helpers several stages use (shell words, the
# launcher, optional file inputs, the base path, branch options). Each stage's own
# options are built next to its rules (rules/<stage>.smk, included in DAG order).
import shlex
from pathlib import Path

from ccis.config import ConfigError, train_split, validate_config
from ccis.data.listing import listing_fingerprint
from ccis.generator import GENERATORS as ALL_GENERATORS
from ccis.segmentation.registry import SEGMENTERS


try:
    validate_config(
        config,
        Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml",
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = config["results"]
SPLITS = {split["name"]: split for split in config["data"]["splits"]}
TRAIN = train_split(config)  # the one split with role "train"
TESTS = [name for name, split in SPLITS.items() if split["role"] == "test"]
MODEL = config["model"]
GENERATORS = config["generators"]
# Synthetic sets made by other tools, imported like a real split (name -> its entry).
EXTERNAL = {entry["name"]: entry for entry in config["external_synthetic"]}

# Scheduling on few cores: the DAG's longest chain goes first (the training split's
# triplets -> the base -> each generator whose synthetic set trains segmenters -> its
# synthesis -> those segmenters -> their scores), and the run that judges mask fidelity
# with it; the real-data runs, the test splits and the other generators have slack.
CHAIN = 10
SYNTHETIC_SETTINGS = config["segmentation"]["synthetic"]
SEGMENTED = set(GENERATORS if SYNTHETIC_SETTINGS is None else SYNTHETIC_SETTINGS)
JUDGE = config["metrics"]["fidelity_segmenter"]
JUDGE_RUN = (JUDGE["model"], JUDGE["setting"], str(JUDGE["seed"]))  # as wildcards spell it


def generator_priority(wildcards):
    """CHAIN for a generator whose synthetic set trains segmenters, else 0."""
    return CHAIN if wildcards.generator in SEGMENTED else 0


def segmenter_priority(wildcards):
    """CHAIN for a run on synthetic data and for the mask-fidelity judge, else 0."""
    run = (wildcards.model, wildcards.setting, wildcards.seed)
    return CHAIN if "+" in wildcards.setting or run == JUDGE_RUN else 0


wildcard_constraints:
    split="|".join(sorted(SPLITS)),
    shard=r"\d+",
    generator="|".join(ALL_GENERATORS),
    model="|".join(SEGMENTERS),
    external="|".join(EXTERNAL) or "(?!)",  # (?!) matches nothing: no external set
    setting=r"real(_x2|\+[a-z][a-z0-9_]*)?",
    seed=r"\d+",


def quoted(args):
    """Shell words of ``args``, each quoted."""
    return " ".join(shlex.quote(str(a)) for a in args)


def launcher(command, gpus):
    """`ccis <command>`, or through `accelerate launch` with one process per GPU.

    `exec` replaces the job's shell, so a scheduler's SIGTERM or SIGUSR1 reaches the
    trainer (which checkpoints and exits 75) instead of killing the shell under it.
    """
    if gpus > 1:
        return f"exec accelerate launch --multi_gpu --num_processes {gpus} -m ccis.cli {command}"
    return f"exec ccis {command}"


def local_file(path):
    """``[path]`` when a configured file exists here (a DAG input), else ``[]``."""
    return [path] if path and Path(str(path)).exists() else []


def base_path(wildcards, input):
    """The frozen base as the commands take it: its DAG input, else your SD v1.5 hub id."""
    return input.base[0] if input.base else MODEL["sd15"]


def branch_args(folders):
    """`--branch <gen>=<folder>` for each trained branch folder."""
    return " ".join(f"--branch {Path(folder).name}={folder}" for folder in folders)


def source_listing(wildcards):
    """Fingerprint of a real split's folders (names, sizes, mtimes; ccis.data.listing): a
    param, so an edited, added or removed file re-runs this split's prepare (Snakemake
    re-runs jobs whose params changed) and what depends on it."""
    spec = SPLITS[wildcards.split]
    return listing_fingerprint(s["root"] for s in spec.get("sources", []))


def synthetic_manifest(wildcards):
    """The synthetic set that setting real+<name> adds to the real one: the generator's
    gathered manifest, or the external set's imported one (none for real and real_x2)."""
    if "+" not in wildcards.setting:
        return []
    name = wildcards.setting.split("+", 1)[1]
    if name in EXTERNAL:
        return expand(rules.prepare_external.output.manifest, external=name)
    return expand(rules.gather_synthetic.output[0], generator=name)


def external_labels():
    """`--external <name>=<label>` for each external synthetic set (Tables 1 and 3)."""
    return quoted(
        arg
        for name, entry in EXTERNAL.items()
        for arg in ("--external", f"{name}={entry.get('label', name)}")
    )
