"""The ``ccis`` command: one sub-command per workflow stage.

Each stage registers its sub-commands from its own ``commands`` module (``add_commands``).
They take explicit arguments (the Snakemake rules translate the config into them), log
what they read, did and wrote, and exit non-zero with a clear message on bad input.
Imports of torch and the models happen inside the command functions, so ``ccis`` starts
fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from ccis import __version__
from ccis.common.atomic import WriteFailed
from ccis.common.divergence import DIVERGED_EXIT, Diverged
from ccis.common.logs import setup_logging
from ccis.common.preemption import PREEMPTED_EXIT, Preempted

log = logging.getLogger("ccis")

# Exit codes besides 0 and 2 (bad input): 3 training diverged, 4 an output could not be
# written (disk full), 75 stopped on SIGTERM/SIGUSR1 with progress saved (re-run continues).
WRITE_FAILED_EXIT = 4

# The stages in workflow order; each module has ``add_commands(subparsers)``.
STAGES = (
    "ccis.data.commands",
    "ccis.caption.commands",
    "ccis.generator.commands",
    "ccis.segmentation.commands",
    "ccis.metrics.commands",
    "ccis.report.commands",
    "ccis.rating.commands",
    "ccis.common.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ccis`` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="ccis",
        description="Controlled colonoscopy image synthesis (CCIS-Diff) workflow stages.",
    )
    parser.add_argument("--version", action="version", version=f"ccis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        importlib.import_module(stage).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ccis`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except Diverged as err:
        # Names the step and the last good checkpoint; not bad input, so its own code.
        log.error("%s", err)
        return DIVERGED_EXIT
    except WriteFailed as err:
        # A full disk or quota: the message names the file and the free space.
        log.error("%s", err)
        return WRITE_FAILED_EXIT
    except Preempted:
        # Progress is saved (and logged); the scheduler or Snakemake re-runs the job.
        return PREEMPTED_EXIT
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear message (it already names the files), no traceback.
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
