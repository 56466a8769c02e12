"""Blur mask weighting strategy (BMWS, paper §2.2.2).

The mask ``M`` is embedded by ``Em`` (ControlNet's conditioning embedding, 1 channel in);
a second, non-shared encoder ``Em'`` embeds ``σ(M)``, the mask blurred by a Gaussian whose
standard deviation is a fraction of the image side. A per-pixel three-layer MLP (1×1
convolutions) gives the weighting ``Mw`` and the blur-mask embedding is
``Fb = Mw ⊙ Em'(σ(M))``. The branch input is ``conv_in(z_t) + Em(M) + Fb``; both encoders
end in zero-initialised convolutions, so at initialisation the branch sees exactly what
plain ControlNet sees.

The gate reads the two encoders' last hidden features ``hm``, ``hb`` (before their
zero-initialised outputs): ``Mw = sigmoid(MLP([hm, hb]))``. Read after the outputs, its
input would be zero at the start, and its first layer's gradient (input × upstream
gradient) second order in the outputs' small weights: the gate would learn last. Read
before them, its input is the masks' features from the first step on, and its gradient
is first order (``tests/test_diffusion.py`` measures both orders).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS

# σ of the mask blur as a fraction of the image side (σ ≈ 15 px at 512²): the package's one
# default for it.
BLUR_SIGMA = 0.03


def blur_mask(mask: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Gaussian-blur a (B, 1, H, W) mask with σ = ``sigma_fraction`` × the image side."""
    sigma = max(sigma_fraction * max(mask.shape[-2:]), 1e-3)
    radius = max(1, math.ceil(3.0 * sigma))
    # Keep the kernel inside the image: reflect padding needs size < 2 × side.
    radius = min(radius, min(mask.shape[-2:]) - 1)
    size = 2 * radius + 1
    # A Gaussian is separable: blurring along x, then y, equals the 2-D blur at
    # 2·size instead of size² multiply-adds per pixel (17× less at 512², σ = 15).
    along_x = gaussian_blur(mask, kernel_size=[size, 1], sigma=[sigma, sigma])
    return gaussian_blur(along_x, kernel_size=[1, size], sigma=[sigma, sigma])


class BlurWeighting(nn.Module):
    """The per-pixel three-layer MLP that weighs the blur-mask embedding.

    It reads both encoders' hidden features (``hidden`` channels each) and gives one weight
    per channel of the embedding (``channels``).
    """

    def __init__(self, hidden: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * hidden, channels, 1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, mask_hidden: torch.Tensor, blur_hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(torch.cat([mask_hidden, blur_hidden], dim=1)))


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
        block_out_channels: tuple[int, ...] = SD_CONDITIONING_CHANNELS,
        blur_sigma: float = BLUR_SIGMA,
    ):
        super().__init__(conditioning_embedding_channels, conditioning_channels, block_out_channels)
        self.blur_sigma = blur_sigma
        self.blur_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels, conditioning_channels, block_out_channels
        )
        self.weighting = BlurWeighting(block_out_channels[-1], conditioning_embedding_channels)
        self.context = None  # set by the owning model: any object with ``blur_feature``
        self._cache: tuple | None = None

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        # While sampling, every denoising step passes the same mask tensor: embed it once.
        # The key holds the input itself (identity + version prove it unchanged) and the
        # weights' versions (an optimiser step or load_state_dict changes them).
        if torch.is_grad_enabled() or conditioning.is_inference():
            self._cache = None
            return self._embed(conditioning)[0]
        versions = tuple(p._version for p in self.parameters())
        cache = self._cache
        if (
            cache is not None
            and cache[0] is conditioning
            and cache[1] == (conditioning._version, versions)
        ):
            if self.context is not None:
                self.context.blur_feature = cache[3]
            return cache[2]
        out, feature = self._embed(conditioning)
        self._cache = (conditioning, (conditioning._version, versions), out, feature)
        return out

    def _embed(self, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blurred = blur_mask(conditioning, self.blur_sigma)
        mask_hidden, blur_hidden = self._both_hidden(conditioning, blurred)
        mask_embedding, blur_embedding = self._grouped(
            torch.cat([mask_hidden, blur_hidden], dim=1),
            self.conv_out,
            self.blur_embedding.conv_out,
        ).chunk(2, dim=1)
        feature = self.weighting(mask_hidden, blur_hidden) * blur_embedding
        if self.context is not None:
            self.context.blur_feature = feature
        return mask_embedding + feature, feature

    def _both_hidden(
        self, mask: torch.Tensor, blurred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden features of ``Em(M)`` and ``Em'(σ(M))`` (before their zero-initialised
        outputs), in one pass of grouped convolutions.

        Each layer stacks the two encoders' weights and convolves with ``groups=2``: the
        same arithmetic as running them one after the other (the weights stay separate
        parameters), at half the operator count, which is what small masks pay for.
        """
        pairs = [(self.conv_in, self.blur_embedding.conv_in)]
        pairs += list(zip(self.blocks, self.blur_embedding.blocks, strict=True))
        x = torch.cat([mask, blurred], dim=1)
        for own, other in pairs:
            x = F.silu(self._grouped(x, own, other))
        return x.chunk(2, dim=1)

    @staticmethod
    def _grouped(x: torch.Tensor, own: nn.Conv2d, other: nn.Conv2d) -> torch.Tensor:
        weight = torch.cat([own.weight, other.weight])
        bias = torch.cat([own.bias, other.bias])
        return F.conv2d(x, weight, bias, own.stride, own.padding, groups=2)
