"""Where a stage's tensors live when it runs outside ``accelerate`` (inference stages)."""

from __future__ import annotations


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (the demo's case)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
