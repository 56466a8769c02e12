"""Workflow plumbing sub-commands: join sharded parts, check and record the config."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ccis.config import SCHEMA_PATH

log = logging.getLogger(__name__)


def _cmd_gather(args: argparse.Namespace) -> None:
    from ccis.common.shards import gather_parts

    gather_parts(args.parts, args.out)


def _cmd_check_config(args: argparse.Namespace) -> None:
    from ccis.config import load_config

    config = load_config(args.config, args.schema)
    splits = ", ".join(f"{s['name']} ({s['role']})" for s in config["data"]["splits"])
    print(f"{args.config}: valid; splits: {splits}")


def _cmd_effective_config(args: argparse.Namespace) -> None:
    import json

    import yaml

    from ccis.common.atomic import atomic_path

    config = json.loads(args.json)
    with atomic_path(args.out) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    log.info("wrote the effective workflow config to %s", args.out)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the plumbing sub-commands on the ``ccis`` parser."""
    gather = sub.add_parser("gather", help="join a sharded stage's Parquet parts into one file")
    gather.add_argument("--out", required=True, type=Path)
    gather.add_argument("parts", nargs="+", type=Path)
    gather.set_defaults(func=_cmd_gather)

    check = sub.add_parser("check-config", help="validate a workflow config file")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    check.set_defaults(func=_cmd_check_config)

    eff = sub.add_parser(
        "effective-config", help="write the merged, validated workflow config as YAML"
    )
    eff.add_argument("--json", required=True, help="the config as JSON (from Snakemake)")
    eff.add_argument("--out", required=True, type=Path)
    eff.set_defaults(func=_cmd_effective_config)
