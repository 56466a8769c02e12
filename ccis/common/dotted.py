"""Classes that registries name as ``"module:Class"``, imported when first needed."""

from __future__ import annotations

import importlib


def import_target(target: str) -> type:
    """The class ``target`` names as ``module:Class`` (imports the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
