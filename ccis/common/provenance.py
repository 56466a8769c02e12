"""Keep resumable work folders honest: resume only what the same inputs started.

Checkpoints and half-finished synthetic sets live in undeclared folders so they survive
a kill; when the inputs or settings change, Snakemake re-runs the job, and the old
partial work must not be mistaken for progress on the new job.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ccis.common.atomic import write_bytes_atomic
from ccis.common.hashing import sha256_file

log = logging.getLogger(__name__)

STAMP = "provenance.json"


def fingerprint(settings: dict, files: list[Path]) -> dict:
    """What a job's result depends on: its settings and its input files.

    Files under 64 MiB are hashed; larger ones (model weights of GBs, hashed on every
    start otherwise) are identified by size and modification time.
    """
    inputs = {}
    for path in files:
        path = Path(path)
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        inputs[str(path)] = [
            [str(p.relative_to(path)) if path.is_dir() else p.name, _identity(p)]
            for p in found
            if p.exists()
        ]
    return {"settings": settings, "inputs": inputs}


def _identity(path: Path) -> str:
    stat = path.stat()
    if stat.st_size < 64 << 20:
        return sha256_file(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def claim(folder: Path, stamp: dict, keep: tuple[str, ...] = ()) -> None:
    """Make ``folder`` belong to ``stamp``: if it holds work for other inputs or settings,
    clear it (except the names in ``keep``) before this job starts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STAMP
    if path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(stamp)):
        return
    if path.is_file() or any(p for p in folder.iterdir() if p.name not in keep):
        log.warning("%s holds work for other inputs or settings: starting afresh", folder)
        for child in folder.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    write_bytes_atomic(path, json.dumps(stamp, indent=1, sort_keys=True).encode())
