"""``NAME=VALUE`` command-line values (test sets, branches, tables, figures)."""

from __future__ import annotations

from collections.abc import Sequence


def parse_pairs(values: Sequence[str], flag: str, unique: bool = True) -> dict[str, str]:
    """``NAME=VALUE`` strings → an ordered dict; a clear error for malformed or repeated names."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ValueError(f"{flag} {value!r}: expected NAME=VALUE")
        if unique and name.strip() in out:
            raise ValueError(f"{flag}: {name.strip()!r} given twice")
        out[name.strip()] = rest.strip()
    return out
