"""PraNet (Fan et al., MICCAI 2020): parallel reverse attention for polyp segmentation.

Receptive-field blocks (RFB) reduce backbone levels 2–4 (strides 8, 16, 32) to 32
channels; a partial decoder fuses them into a global map at stride 8; three reverse-
attention branches (strides 32, 16, 8) refine it, each erasing the current prediction
(``1 − sigmoid``) from the backbone features to look for missed polyp parts.

``forward`` returns four logit maps at the input size, in the reference order
``[decoder (global map), RA stride 32, RA stride 16, RA stride 8]``. Training sums the
structure loss over all four; the last one is the prediction used at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccis.segmentation.backbones import Backbone
from ccis.segmentation.layers import CascadedDecoder, ConvBN, resize


class RFB(nn.Module):
    """Receptive field block: four branches of growing dilation plus a residual 1×1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        c = out_channels

        def branch(k: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBN(in_channels, c, 1),
                ConvBN(c, c, (1, k), padding=(0, k // 2)),
                ConvBN(c, c, (k, 1), padding=(k // 2, 0)),
                ConvBN(c, c, 3, padding=k, dilation=k),
            )

        self.branch0 = ConvBN(in_channels, c, 1)
        self.branch1 = branch(3)
        self.branch2 = branch(5)
        self.branch3 = branch(7)
        self.conv_cat = ConvBN(4 * c, c, 3, padding=1)
        self.conv_res = ConvBN(in_channels, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return F.relu(self.conv_cat(torch.cat(branches, 1)) + self.conv_res(x))


class ReverseAttention(nn.Module):
    """One reverse-attention branch: features × (1 − sigmoid(prior)) → residual logits."""

    def __init__(self, in_channels: int, width: int, depth: int, kernel: int):
        super().__init__()
        self.reduce = ConvBN(in_channels, width, 1)
        self.convs = nn.ModuleList(
            ConvBN(width, width, kernel, padding=kernel // 2) for _ in range(depth)
        )
        # The last layer keeps the reference's kernel (1×1 at stride 32, 3×3 below).
        last = 1 if kernel == 5 else 3
        self.out = ConvBN(width, 1, last, padding=last // 2)

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        x = features * (1 - torch.sigmoid(prior))  # broadcast over channels
        x = self.reduce(x)
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.out(x) + prior


class PraNet(nn.Module):
    """PraNet on any four-level backbone (paper: Res2Net-50, channels 256/512/1024/2048)."""

    def __init__(self, backbone: Backbone, channel: int = 32):
        super().__init__()
        self.backbone = backbone
        _, c8, c16, c32 = backbone.channels
        self.rfb8 = RFB(c8, channel)
        self.rfb16 = RFB(c16, channel)
        self.rfb32 = RFB(c32, channel)
        self.decoder = CascadedDecoder(channel)
        self.decoder_out = ConvBN(3 * channel, 3 * channel, 3, padding=1)
        self.decoder_head = nn.Conv2d(3 * channel, 1, 1)
        # Widths and depths as in the reference: 256 wide, three 5×5 convs at stride 32;
        # 64 wide, two 3×3 convs at strides 16 and 8.
        self.ra32 = ReverseAttention(c32, 256, 3, 5)
        self.ra16 = ReverseAttention(c16, 64, 2, 3)
        self.ra8 = ReverseAttention(c8, 64, 2, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``[global map, RA32, RA16, RA8]`` at the input size; the last is final."""
        size = x.shape[-2:]
        _, f8, f16, f32 = self.backbone(x)
        global_map = self.decoder_head(
            self.decoder_out(self.decoder(self.rfb32(f32), self.rfb16(f16), self.rfb8(f8)))
        )
        map32 = self.ra32(f32, resize(global_map, f32))
        map16 = self.ra16(f16, resize(map32, f16))
        map8 = self.ra8(f8, resize(map16, f8))
        return [resize(m, size) for m in (global_map, map32, map16, map8)]

    @staticmethod
    def final_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
        """The test-time prediction: the last (stride-8 reverse-attention) map."""
        return outputs[-1]
