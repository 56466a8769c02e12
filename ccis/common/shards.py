"""Sharded stages: which share of the work a job takes, and joining the parts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ccis.common.atomic import atomic_path

log = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0 ≤ I < N): the job takes every N-th item from item I."""
    index, sep, total = text.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"shard must read I/N with 0 <= I < N, got {text!r}")
    return i, n


def write_table(frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``frame`` as Parquet, atomically."""
    out = Path(out)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def gather_parts(parts: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join shard Parquet files into one (sorted by id, ids unique)."""
    frames = [pd.read_parquet(p) for p in parts]
    frame = pd.concat(frames, ignore_index=True).sort_values("id").reset_index(drop=True)
    dupes = frame["id"][frame["id"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"shards overlap: ids {dupes[:10]} appear more than once")
    out = write_table(frame, out)
    log.info("gathered %d shard(s), %d rows, into %s", len(parts), len(frame), out)
    return out
