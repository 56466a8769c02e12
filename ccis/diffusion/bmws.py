"""Blur mask weighting strategy (BMWS, paper §2.2.2).

The mask ``M`` is embedded by ``Em`` (ControlNet's conditioning embedding, 1 channel in);
a second, non-shared encoder ``Em'`` embeds ``σ(M)``, the mask blurred by a Gaussian whose
standard deviation is a fraction of the image side. A per-pixel three-layer MLP (1×1
convolutions) over both embeddings gives the weighting ``Mw = sigmoid(MLP([Em(M),
Em'(σ(M))]))`` and the blur-mask embedding ``Fb = Mw ⊙ Em'(σ(M))``. The branch input is
``conv_in(z_t) + Em(M) + Fb``; both encoders end in zero-initialised convolutions, so
at initialisation the branch sees exactly what plain ControlNet sees.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur


def blur_mask(mask: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Gaussian-blur a (B, 1, H, W) mask with σ = ``sigma_fraction`` × the image side."""
    sigma = max(sigma_fraction * max(mask.shape[-2:]), 1e-3)
    radius = max(1, math.ceil(3.0 * sigma))
    # Keep the kernel inside the image: reflect padding needs size < 2 × side.
    radius = min(radius, min(mask.shape[-2:]) - 1)
    return gaussian_blur(mask, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])


class BlurWeighting(nn.Module):
    """The per-pixel three-layer MLP that weighs the blur-mask embedding."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, mask_embedding: torch.Tensor, blur_embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(torch.cat([mask_embedding, blur_embedding], dim=1)))


class MaskConditioningEmbedding(ControlNetConditioningEmbedding):
    """``Em(M) + Fb``: ControlNet's mask embedding plus the weighted blur-mask embedding.

    Its own weights keep ControlNet's names (``conv_in``, ``blocks``, ``conv_out``), so a
    trained ControlNet's mask encoder loads into it; the BMWS parts live under
    ``blur_embedding`` and ``weighting``. Each ``Fb`` is handed to ``context`` (the
    branch's shared state) for the re-injection after cross-attention.
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 1,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        blur_sigma: float = 0.03,
    ):
        super().__init__(conditioning_embedding_channels, conditioning_channels, block_out_channels)
        self.blur_sigma = blur_sigma
        self.blur_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels, conditioning_channels, block_out_channels
        )
        self.weighting = BlurWeighting(conditioning_embedding_channels)
        self.context = None  # set by the owning model: any object with ``blur_feature``

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        mask_embedding = super().forward(conditioning)
        blurred = blur_mask(conditioning, self.blur_sigma)
        blur_embedding = self.blur_embedding(blurred)
        feature = self.weighting(mask_embedding, blur_embedding) * blur_embedding
        if self.context is not None:
            self.context.blur_feature = feature
        return mask_embedding + feature
