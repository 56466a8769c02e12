"""Backbones of the segmenters: timm feature extractors with four levels (strides 4–32).

Each segmenter's paper backbone and the small timm model of the same family that the CPU
demo uses are in :mod:`ccis.segmentation.registry`. Pretrained weights are
only ever read from a local file (never downloaded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

STRIDES = (4, 8, 16, 32)


class Backbone(nn.Module):
    """A timm ``features_only`` model reduced to the stride-4, 8, 16 and 32 feature maps.

    ``channels`` and ``strides`` describe the four maps that ``forward`` returns.
    """

    def __init__(self, body: nn.Module, name: str):
        super().__init__()
        self.body = body
        self.name = name
        reductions = list(body.feature_info.reduction())
        channels = list(body.feature_info.channels())
        # ResNet-like models also expose the stride-2 stem output: drop it.
        self.positions = [reductions.index(s) for s in STRIDES if s in reductions]
        if len(self.positions) != len(STRIDES):
            raise ValueError(
                f"backbone {name!r} has feature strides {reductions}; a segmenter needs "
                f"{list(STRIDES)}"
            )
        self.channels = [channels[i] for i in self.positions]
        self.strides = list(STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16 and 32 (in that order)."""
        features = self.body(x)
        return [features[i] for i in self.positions]


def create_backbone(
    name: str, pretrained_file: str | os.PathLike | None = None, drop_path_rate: float = 0.0
) -> Backbone:
    """Build timm model ``name`` as a four-level feature extractor.

    With ``pretrained_file`` (the model's full ImageNet state dict, classifier included,
    as ``.safetensors`` or ``.pth``/``.bin``, read with ``weights_only``) its weights are
    loaded through timm's own pretrained path (``pretrained_cfg_overlay=dict(file=...)``),
    so timm's key remapping of original checkpoints applies.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown timm backbone {name!r}")
    kwargs: dict = {"features_only": True}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file is None:
        body = timm.create_model(name, pretrained=False, **kwargs)
    else:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pretrained weights for backbone {name} not found")
        overlay = dict(file=str(path))
        try:
            # timm loads a features_only model non-strictly (it drops the classifier), so a
            # file with the wrong keys would load nothing, silently: check it first on the
            # full model, where timm loads strictly (and applies the model's key remapping).
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
            body = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except Exception as err:  # noqa: BLE001 - any failure means the file does not fit
            raise ValueError(
                f"{path}: cannot load as pretrained weights of timm model {name} ({err})"
            ) from err
        log.info("loaded %s backbone weights from %s", name, path)
    return Backbone(body, name)
