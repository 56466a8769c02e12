"""Build a segmenter by name."""

from __future__ import annotations

import os

from torch import nn

from ccis.segmentation.backbones import create_backbone
from ccis.segmentation.polyp_pvt import PolypPVT
from ccis.segmentation.pranet import PraNet

MODELS: dict[str, type[nn.Module]] = {"pranet": PraNet, "polyp_pvt": PolypPVT}


def build_segmenter(
    model: str,
    backbone: str,
    pretrained_file: str | os.PathLike | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Segmenter ``model`` (pranet or polyp_pvt) on timm backbone ``backbone``."""
    if model not in MODELS:
        raise ValueError(f"unknown segmenter {model!r}; known: {', '.join(MODELS)}")
    return MODELS[model](create_backbone(backbone, pretrained_file, drop_path_rate))
