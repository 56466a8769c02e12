# Shared set-up: validate the merged config before any job, expose helpers to rules.
import shlex
from pathlib import Path

from ccis.config import ConfigError, validate_config


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


wildcard_constraints:
    split="|".join(sorted(SPLITS)),


def all_manifests():
    """Manifests of every configured split."""
    return expand(f"{RESULTS}/data/{{split}}.parquet", split=sorted(SPLITS))


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
