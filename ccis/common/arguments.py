"""Command-line helpers: the library's defaults, read where they are written.

A stage's defaults are written once, in its settings dataclass or its function's
signature; the ``ccis`` sub-commands show them from there (:func:`defaults_of`) or, where
reading them would import torch at start-up, leave an option out when it is not given
(:func:`given`), so that the library's default applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def defaults_of(obj: Any) -> dict[str, Any]:
    """Default values of a dataclass's fields or a callable's keyword parameters."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: f.default
            for f in dataclasses.fields(obj)
            if f.default is not dataclasses.MISSING
        }
    target = obj.__init__ if inspect.isclass(obj) else obj
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that the command line set (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def positive_list(kind: type, example: str):
    """An argparse type reading ``example``-like comma-separated positive numbers."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected numbers like {example}; got {text!r}")
        return values

    return parse


channels = positive_list(int, "16,32,96,256")


# An option the library defaults: (name, type or tuple of choices, help).
Option = tuple[str, Any, str]


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add ``--name`` for each option; left out, it is None (see :func:`given`)."""
    for name, kind, help_text in options:
        flag = "--" + name.replace("_", "-")
        if isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, help=help_text or None)
        else:
            parser.add_argument(flag, type=kind, help=help_text or None)


def names(options: Iterable[Option]) -> tuple[str, ...]:
    """The names of ``options`` (for :func:`given`)."""
    return tuple(name for name, _, _ in options)


def pick(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """``{name: args.name}`` for each of ``names`` (keyword arguments of a stage call)."""
    return {name: getattr(args, name) for name in names}


def add_table_outputs(parser: argparse.ArgumentParser) -> None:
    """The options every paper-table command shares: its two files and ``--paper``."""
    parser.add_argument("--out-csv", required=True, type=Path, help="CSV to write")
    parser.add_argument("--out-md", required=True, type=Path, help="Markdown to write")
    parser.add_argument(
        "--paper", action="store_true", help="put the paper's published values beside ours"
    )
