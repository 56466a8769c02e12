"""CPU thread count of a job (the Snakemake rule's ``threads``)."""

from __future__ import annotations


def use_threads(count: int | None) -> None:
    """Use ``count`` CPU threads for torch and OpenCV; ``None`` keeps their defaults."""
    if count:
        import cv2
        import torch

        torch.set_num_threads(count)
        cv2.setNumThreads(count)
