"""Loss logs (CSV) that a resumed training run continues without duplicate rows."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from ccis.common.atomic import atomic_path, write_failed


def append_row(path: str | os.PathLike, header: Sequence[str], row: Sequence) -> None:
    """Append ``row`` to the CSV at ``path``, writing ``header`` first if it is new."""
    path = Path(path)
    new = not path.exists()
    try:
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(header)
            writer.writerow(row)
    except OSError as err:
        # A row cut short here is dropped by trim_rows when the run resumes.
        raise write_failed(path, err) from err


def trim_rows(path: str | os.PathLike, last: int) -> None:
    """Drop rows whose first field (step or epoch) is after ``last``: a killed run wrote them
    after its last checkpoint. Rows cut short by the kill go too; ``last`` 0 removes the log."""
    path = Path(path)
    if not path.exists():
        return
    if last == 0:
        path.unlink()
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header = rows[0]
    kept = [header] + [
        r for r in rows[1:] if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= last
    ]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
