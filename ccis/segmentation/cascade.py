"""PVT-CASCADE (Rahman & Marculescu, WACV 2023): PVTv2 encoder, cascaded attention decoder.

The decoder (CASCADE) climbs from the stride-32 level to the stride-4 one. At the top a
1×1 convolution and a convolutional attention module (CAM) refine the deepest features;
at each level below, an up-convolution doubles the resolution, an attention gate (AG)
weighs the backbone's skip features by the upsampled ones, the two are concatenated and
a CAM refines them. A CAM is channel attention, then spatial attention, then two 3×3
convolution–BN–ReLU layers. As in the reference (SLDGroup/CASCADE, ``lib/decoders.py``),
the four CAMs share one spatial-attention layer, the gates' inner widths are the next
level's channels (32 at the last gate), and every convolution of the decoder has a bias.

Each of the four levels has its own 1×1 prediction head ("multi-stage outputs"):
``forward`` returns ``[P1 (stride 32), P2 (16), P3 (8), P4 (4)]`` logits at the input
size. Training sums the structure loss of all four with weight 1 each (the reference's
"additive aggregation"); the test output is ``sigmoid(P1 + P2 + P3 + P4)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccis.segmentation.backbones import Backbone
from ccis.segmentation.layers import ChannelAttention, SpatialAttention, resize


class ConvBlock(nn.Sequential):
    """Two 3×3 convolution (with bias) – batch norm – ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConv(nn.Module):
    """Nearest-neighbour upsampling to the skip's size, then 3×3 conv – BN – ReLU.

    The reference doubles the size (``nn.Upsample(scale_factor=2)``); going to the skip's
    exact size is the same for inputs that are multiples of 32 and also fits the others.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=like.shape[-2:], mode="nearest")
        return torch.relu(self.bn(self.conv(x)))


class AttentionGate(nn.Module):
    """Attention U-Net's additive gate: ``x · σ(BN(ψ(ReLU(BN(W_g g) + BN(W_x x)))))``."""

    def __init__(self, gate_channels: int, skip_channels: int, inner_channels: int):
        super().__init__()
        self.w_gate = nn.Sequential(
            nn.Conv2d(gate_channels, inner_channels, 1), nn.BatchNorm2d(inner_channels)
        )
        self.w_skip = nn.Sequential(
            nn.Conv2d(skip_channels, inner_channels, 1), nn.BatchNorm2d(inner_channels)
        )
        self.psi = nn.Sequential(nn.Conv2d(inner_channels, 1, 1), nn.BatchNorm2d(1))

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(self.psi(torch.relu(self.w_gate(gate) + self.w_skip(skip))))
        return skip * weight


class CASCADE(nn.Module):
    """The cascaded attention decoder over four levels of ``channels`` (deepest first)."""

    def __init__(self, channels: list[int], last_gate_channels: int = 32):
        super().__init__()
        c32, c16, c8, c4 = channels
        self.stem = nn.Conv2d(c32, c32, 1)
        self.spatial_attention = SpatialAttention()  # one layer, shared by the four CAMs
        self.channel_attention = nn.ModuleList(
            ChannelAttention(c) for c in (c32, 2 * c16, 2 * c8, 2 * c4)
        )
        self.convs = nn.ModuleList(
            [ConvBlock(c32, c32), ConvBlock(2 * c16, c16), ConvBlock(2 * c8, c8),
             ConvBlock(2 * c4, c4)]
        )  # fmt: skip
        self.ups = nn.ModuleList([UpConv(c32, c16), UpConv(c16, c8), UpConv(c8, c4)])
        self.gates = nn.ModuleList(
            [AttentionGate(c16, c16, c8), AttentionGate(c8, c8, c4),
             AttentionGate(c4, c4, last_gate_channels)]
        )  # fmt: skip

    def cam(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Convolutional attention module of ``level`` (0 = stride 32)."""
        x = self.channel_attention[level](x) * x
        x = self.spatial_attention(x) * x
        return self.convs[level](x)

    def forward(self, x32: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder features at strides 32, 16, 8, 4 from the deepest map and the skips
        ``[stride 16, stride 8, stride 4]``."""
        d = self.cam(0, self.stem(x32))
        out = [d]
        for level, skip in enumerate(skips, start=1):
            up = self.ups[level - 1](d, skip)
            gated = self.gates[level - 1](up, skip)
            d = self.cam(level, torch.cat((gated, up), 1))
            out.append(d)
        return out


class PVTCascade(nn.Module):
    """PVT-CASCADE on any four-level backbone (paper: PVTv2-b2, channels 64/128/320/512)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        c4, c8, c16, c32 = backbone.channels
        self.decoder = CASCADE([c32, c16, c8, c4])
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in (c32, c16, c8, c4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``[P1 (stride 32), P2 (16), P3 (8), P4 (4)]`` at the input size."""
        size = x.shape[-2:]
        f4, f8, f16, f32 = self.backbone(x)
        features = self.decoder(f32, [f16, f8, f4])
        return [resize(head(f), size) for head, f in zip(self.heads, features, strict=True)]

    @staticmethod
    def final_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
        """The test-time prediction: ``P1 + P2 + P3 + P4`` (the caller applies the sigmoid)."""
        return outputs[0] + outputs[1] + outputs[2] + outputs[3]
