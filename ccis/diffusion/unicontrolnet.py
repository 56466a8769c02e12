"""Uni-ControlNet's local control adapter, as a baseline generator.

Like ControlNet, a trainable copy of the UNet encoder and mid block feeds zero-initialised
1×1 convolutions into the frozen UNet's skips. Unlike ControlNet, the condition is not
added at the input: a small encoder turns the mask into multi-scale features, and in the
first ResNet block of every encoder level the first normalisation becomes
feature-denoising normalisation (FDN, SPADE-style): ``GN(h)·(1 + γ(c)) + β(c)``, with
``γ``, ``β`` zero-initialised convolutions of the condition resized to the level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# diffusers' pipeline loader finds a component's base class in its module.
from diffusers import (
    ControlNetModel,
    ModelMixin,  # noqa: F401
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from torch import nn

from ccis.diffusion.init import init_mask_encoder
from ccis.diffusion.model import derived_signature


class FDNGroupNorm(nn.GroupNorm):
    """GroupNorm modulated by condition features: ``GN(h)·(1 + γ(c)) + β(c)``.

    Keeps GroupNorm's parameter names, so the UNet's weights load into it unchanged.
    """

    def __init__(self, norm: nn.GroupNorm, condition_channels: int):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        self.gamma = nn.Conv2d(condition_channels, norm.num_channels, 3, padding=1)
        self.beta = nn.Conv2d(condition_channels, norm.num_channels, 3, padding=1)
        for conv in (self.gamma, self.beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.features: dict[str, torch.Tensor] = {}  # shared with the owning model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = super().forward(hidden)
        condition = self.features.get("condition")
        if condition is None:
            return out
        condition = F.interpolate(
            condition, size=hidden.shape[-2:], mode="bilinear", align_corners=False
        )
        condition = condition.to(self.gamma.weight.dtype)
        return out * (1 + self.gamma(condition)) + self.beta(condition)


class LocalConditionEncoder(nn.Module):
    """Mask → condition features at the latent resolution (multi-scale via resizing)."""

    def __init__(self, channels: tuple[int, ...], out_channels: int, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.Conv2d(a, a, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(a, b, 3, padding=1, stride=2),
                nn.SiLU(),
            ]
        layers.append(nn.Conv2d(channels[-1], out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.net(mask)


class _NoInputEmbedding(nn.Module):
    """Stands in for ControlNet's input-side embedding: Uni-ControlNet adds nothing there,
    it only hands the mask to the condition encoder."""

    def __init__(self, owner_features: dict, encoder: LocalConditionEncoder, channels: int):
        super().__init__()
        self.encoder = encoder
        self.features = owner_features
        self.channels = channels

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        self.features["condition"] = self.encoder(mask)
        return torch.zeros((), device=mask.device, dtype=mask.dtype)


def _init(self, *, condition_channels=64, **kwargs):
    kwargs.setdefault("conditioning_channels", 1)
    ControlNetModel.__init__(self, **kwargs)
    self._features: dict[str, torch.Tensor] = {}
    encoder = LocalConditionEncoder(
        tuple(self.config.conditioning_embedding_out_channels),
        condition_channels,
        self.config.conditioning_channels,
    )
    self.controlnet_cond_embedding = _NoInputEmbedding(self._features, encoder, condition_channels)
    for block in self.down_blocks:
        resnet = block.resnets[0]
        fdn = FDNGroupNorm(resnet.norm1, condition_channels)
        fdn.features = self._features
        resnet.norm1 = fdn


_init.__signature__ = derived_signature({"condition_channels": 64})


class UniControlNetAdapter(ControlNetModel):
    """Uni-ControlNet's local adapter over a ControlNet-style encoder copy."""

    __init__ = register_to_config(_init)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        *,
        condition_channels: int = 64,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> UniControlNetAdapter:
        """An adapter whose encoder and mid block copy ``unet``'s."""
        plain = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=1,
        )
        config = {k: v for k, v in plain.config.items() if not k.startswith("_")}
        model = cls(**config, condition_channels=condition_channels)
        state = {
            k: v
            for k, v in plain.state_dict().items()
            if not k.startswith("controlnet_cond_embedding.")
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        own = ("controlnet_cond_embedding.",)
        if unexpected or any(
            not (k.startswith(own) or ".norm1.gamma." in k or ".norm1.beta." in k) for k in missing
        ):
            raise RuntimeError(f"weight copy mismatch: missing {missing}, unexpected {unexpected}")
        # Hidden layers He-initialised (the mask reaches the FDN convolutions at unit
        # scale); the last layer keeps its default.
        init_mask_encoder(model.controlnet_cond_embedding.encoder.net[:-1])
        return model
