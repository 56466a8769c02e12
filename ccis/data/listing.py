"""Fingerprints of data-set folders and model files, for Snakemake's params.

A real data set is read from folders that are not rule inputs (a folder input would
only change when entries are added or removed, not when a file is edited). The rules
pass a fingerprint of the folder listing (every file's relative name, size and
modification time) as a param instead: Snakemake's default rerun triggers include
changed params, so editing, adding or removing one mask re-runs ``prepare`` for that
split and what depends on it, and nothing else. Hashing the contents would read
gigabytes at every DAG build; names, sizes and mtimes change with any ordinary edit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def listing_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 (hex, 16 characters) over the files under ``paths`` (folders or files):
    relative name, size and mtime of each, sorted; a missing path counts as missing."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        digest.update(f"root {root}\n".encode())
        if root.is_file():
            entries = [(root.name, root.stat())]
        elif root.is_dir():
            entries = []
            for folder, dirs, files in os.walk(root, followlinks=True):
                dirs.sort()
                for name in files:
                    path = Path(folder) / name
                    try:
                        entries.append((str(path.relative_to(root)), path.stat()))
                    except OSError:  # a dangling link: prepare reports it by name
                        entries.append((str(path.relative_to(root)), None))
        else:
            digest.update(b"missing\n")
            continue
        for name, stat in sorted(entries, key=lambda e: e[0]):
            seen = f"{stat.st_size} {stat.st_mtime_ns}" if stat else "unreadable"
            digest.update(f"{name}\0{seen}\n".encode())
    return digest.hexdigest()[:16]
