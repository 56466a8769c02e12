"""Training checkpoints that survive a SIGKILL, and the resume logic.

A checkpoint is written to a temporary folder and renamed to ``checkpoint-<step>`` once
complete (with a ``complete`` marker inside), so a kill mid-save leaves only a temporary
folder, never a half checkpoint under the real name. Resuming picks the newest complete
checkpoint; one that is complete but cannot be loaded is an error, not a silent restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ccis.common.atomic import WriteFailed, is_write_error, write_failed

log = logging.getLogger(__name__)

MARKER = "complete"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (bad input to the resumed run)."""


def complete_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match and (path / MARKER).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    folder: str | os.PathLike, step: int, write: Callable[[Path], None], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` with ``write(tmp_folder)``; keep the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step}"
    tmp = folder / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"step": step}))
    except Exception as err:
        # A full disk mid-save: drop the partial folder now (older checkpoints stay whole).
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, WriteFailed) or not is_write_error(err, tmp):
            raise
        raise write_failed(final, err, "checkpoint") from err
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for step_old, old in complete_checkpoints(folder)[:-keep]:
        # Rename first: a kill during the deletion must not leave a "complete" checkpoint
        # with missing files (resume_from removes leftover temporaries).
        doomed = folder / f".checkpoint-{step_old}.tmp"
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def resume_from(folder: str | os.PathLike, load: Callable[[Path], None]) -> int:
    """Load the newest complete checkpoint with ``load(path)``; return its step (0: none)."""
    folder = Path(folder)
    for stale in folder.glob(".checkpoint-*.tmp") if folder.is_dir() else []:
        log.warning("removing %s, left by a run killed while saving", stale)
        shutil.rmtree(stale, ignore_errors=True)
    checkpoints = complete_checkpoints(folder)
    if not checkpoints:
        return 0
    step, path = checkpoints[-1]
    try:
        load(path)
    except Exception as err:  # noqa: BLE001 - any failure to load means a bad checkpoint
        raise CheckpointError(
            f"{path}: checkpoint of step {step} is corrupted or unreadable ({err}). Delete it to "
            f"resume from an earlier checkpoint, or delete {folder} to start from step 0."
        ) from err
    log.info("resumed from %s (step %d)", path, step)
    return step
