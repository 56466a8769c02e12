"""Build a segmenter by name, from the segmenter registry."""

from __future__ import annotations

import os

from torch import nn

from ccis.segmentation.backbones import create_backbone
from ccis.segmentation.registry import resolve_network, segmenter


def build_segmenter(
    model: str,
    backbone: str,
    pretrained_file: str | os.PathLike | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Segmenter ``model`` (a :mod:`ccis.segmentation.registry` name) on timm backbone
    ``backbone``."""
    network = resolve_network(segmenter(model))
    return network(create_backbone(backbone, pretrained_file, drop_path_rate))
