"""Uni-ControlNet's local control adapter, as its reference code builds it (a baseline).

Read from ShihaoZhaoZSH/Uni-ControlNet (``models/local_adapter.py``,
``configs/local_v15.yaml``) and written here on diffusers:

- A trainable copy of the UNet encoder and mid block feeds zero-initialised 1×1
  convolutions into the frozen UNet's skips, as in ControlNet, but the condition is *not*
  added at the input.
- A learned multi-scale feature extractor turns the mask into one feature map per encoder
  level: a 4× down-sampling stem (3×3 convolutions, channels ``extractor_channels``, SiLU),
  then per level one stride-2 3×3 convolution to ``inject_channels[level]`` + SiLU. Each
  level's map leaves through its own zero-initialised 3×3 convolution; the chain goes on
  from the map before it. At SD scale (512² image, 64² latent) the four maps are 64², 32²,
  16² and 8² with 192/256/384/512 channels.
- Feature-denormalisation (FDN) replaces *both* normalisations of the first ResNet block
  of every encoder level: ``GN(h)·(1 + γ(f)) + β(f)`` with a parameter-free GroupNorm
  (``affine=False``; SD's affine weights of those norms are dropped, as the reference's
  weight preparation drops them) and ``γ``, ``β`` 3×3 convolutions of the level's map.

One departure, kept on purpose: our condition is one binary mask channel (the reference
stacks seven RGB condition images), and the extractor's hidden convolutions are
He-initialised (``ccis.diffusion.mask_init``) so that the mask reaches the zero convolutions
at unit scale, as in our other mask encoders.
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

from ccis.diffusion.branch import branch_from_unet, derived_signature
from ccis.diffusion.mask_init import init_mask_encoder

# The reference's stem (configs/local_v15.yaml's FeatureExtractor) and inject channels at
# SD v1.5 scale; the tiny preset passes smaller ones from config.yaml.
EXTRACTOR_CHANNELS = (32, 64, 128)
INJECT_CHANNELS = (192, 256, 384, 512)


def _conv(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1)


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FeatureExtractor(nn.Module):
    """Mask → one feature map per encoder level, each through a zero-initialised conv."""

    def __init__(
        self,
        in_channels: int,
        extractor_channels: tuple[int, ...] = EXTRACTOR_CHANNELS,
        inject_channels: tuple[int, ...] = INJECT_CHANNELS,
    ):
        super().__init__()
        if len(extractor_channels) != 3:
            raise ValueError(f"extractor_channels needs 3 widths, got {list(extractor_channels)}")
        c0, c1, c2 = extractor_channels
        # 4× down: full, ½ (stride 2), ½, ¼ (stride 2), ¼ resolution.
        layers = [_conv(in_channels, c0), _conv(c0, c1, 2), _conv(c1, c1),
                  _conv(c1, c2, 2), _conv(c2, c2)]  # fmt: skip
        self.stem = nn.Sequential(*(m for conv in layers for m in (conv, nn.SiLU())))
        widths = (c2, *inject_channels)
        self.levels = nn.ModuleList(
            _conv(a, b, 2) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.zero_convs = nn.ModuleList(_zero(_conv(c, c)) for c in inject_channels)

    def hidden_convs(self) -> list[nn.Module]:
        """The convolutions before the zero ones (He-initialised by ``from_unet``)."""
        return [self.stem, self.levels]

    def forward(self, mask: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(mask)
        maps = []
        for level, zero in zip(self.levels, self.zero_convs, strict=True):
            x = F.silu(level(x))
            maps.append(zero(x))
        return maps


class FDN(nn.Module):
    """Feature denormalisation: ``GN(h)·(1 + γ(f)) + β(f)``, GroupNorm without affine.

    ``features`` (shared with the owning model) holds the current condition maps; the
    module reads map ``level``.
    """

    def __init__(self, norm: nn.GroupNorm, condition_channels: int, level: int, features: dict):
        super().__init__()
        self.norm = nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps, affine=False)
        self.gamma = _conv(condition_channels, norm.num_channels)
        self.beta = _conv(condition_channels, norm.num_channels)
        self.level = level
        self.features = features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.norm(hidden)
        maps = self.features.get("maps")
        if maps is None:
            raise RuntimeError("FDN called without condition features (run the adapter's forward)")
        condition = maps[self.level]
        if condition.shape[-2:] != hidden.shape[-2:]:
            # Odd latent sides ceil in the UNet and floor in the extractor: match them.
            condition = F.interpolate(condition, size=hidden.shape[-2:], mode="nearest")
        condition = condition.to(self.gamma.weight.dtype)
        return out * (1 + self.gamma(condition)) + self.beta(condition)


class _ConditionInput(nn.Module):
    """Takes ControlNet's input-side embedding slot: runs the feature extractor for the
    FDNs and adds nothing to the input (Uni-ControlNet has no input-side addition)."""

    def __init__(self, extractor: FeatureExtractor, features: dict):
        super().__init__()
        self.extractor = extractor
        self.features = features

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        self.features["maps"] = self.extractor(mask)
        return torch.zeros((), device=mask.device, dtype=mask.dtype)


def _init(self, *, extractor_channels=EXTRACTOR_CHANNELS, inject_channels=INJECT_CHANNELS,
          **kwargs):  # fmt: skip
    kwargs.setdefault("conditioning_channels", 1)
    ControlNetModel.__init__(self, **kwargs)
    if len(inject_channels) != len(self.down_blocks):
        raise ValueError(
            f"inject_channels has {len(inject_channels)} levels but the UNet encoder has "
            f"{len(self.down_blocks)}: give one width per level"
        )
    self._features: dict[str, list[torch.Tensor]] = {}
    extractor = FeatureExtractor(
        self.config.conditioning_channels, tuple(extractor_channels), tuple(inject_channels)
    )
    self.controlnet_cond_embedding = _ConditionInput(extractor, self._features)
    for level, (block, width) in enumerate(zip(self.down_blocks, inject_channels, strict=True)):
        resnet = block.resnets[0]  # the first ResBlock of each level, as the reference
        resnet.norm1 = FDN(resnet.norm1, width, level, self._features)
        resnet.norm2 = FDN(resnet.norm2, width, level, self._features)


_init.__signature__ = derived_signature(
    {"extractor_channels": EXTRACTOR_CHANNELS, "inject_channels": INJECT_CHANNELS}
)


class UniControlNetAdapter(ControlNetModel):
    """Uni-ControlNet's local adapter over a ControlNet-style encoder copy.

    Extra config:
        extractor_channels: the feature extractor's stem widths (3).
        inject_channels: the condition map's width at each encoder level.
    """

    __init__ = register_to_config(_init)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        *,
        extractor_channels: tuple[int, ...] = EXTRACTOR_CHANNELS,
        inject_channels: tuple[int, ...] = INJECT_CHANNELS,
    ) -> UniControlNetAdapter:
        """An adapter whose encoder and mid block copy ``unet``'s."""
        # FDN drops the affine weights of the norms it replaces, as the reference does.
        replaced = tuple(f"down_blocks.{i}.resnets.0.norm" for i in range(len(unet.down_blocks)))
        own = dict(extractor_channels=tuple(extractor_channels),
                   inject_channels=tuple(inject_channels))  # fmt: skip
        new = ("controlnet_cond_embedding.", *replaced)
        model = branch_from_unet(cls, unet, own, new, dropped=new)
        init_mask_encoder(model.controlnet_cond_embedding.extractor.hidden_convs())
        return model
