"""Building blocks shared by the segmenters (PraNet, Polyp-PVT, PVT-CASCADE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Convolution (no bias) + batch norm, *without* activation.

    Both reference repositories call this ``BasicConv2d``; it defines a ReLU but never
    applies it, and the networks were trained that way, so we keep it linear.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def resize(x: torch.Tensor, like: torch.Tensor | tuple[int, int], corners: bool = False):
    """Bilinear resize of ``x`` to the spatial size of ``like`` (a tensor or (h, w))."""
    size = tuple(like.shape[-2:]) if isinstance(like, torch.Tensor) else tuple(like)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=corners)


class CascadedDecoder(nn.Module):
    """PraNet's partial decoder, which Polyp-PVT reuses as its CFM.

    Takes the three deepest levels (strides 32, 16, 8), each with ``channel`` channels;
    multiplies upsampled deep features into shallower ones and concatenates the cascade.
    Returns a 3·``channel`` map at stride 8 (the caller adds its own output layer).
    Upsampling goes to the next level's exact size, so inputs that are not multiples
    of 32 also work (the references use a fixed factor 2 with ``align_corners=True``).
    """

    def __init__(self, channel: int):
        super().__init__()
        self.up1 = ConvBN(channel, channel, 3, padding=1)
        self.up2 = ConvBN(channel, channel, 3, padding=1)
        self.up3 = ConvBN(channel, channel, 3, padding=1)
        self.up4 = ConvBN(channel, channel, 3, padding=1)
        self.up5 = ConvBN(2 * channel, 2 * channel, 3, padding=1)
        self.cat2 = ConvBN(2 * channel, 2 * channel, 3, padding=1)
        self.cat3 = ConvBN(3 * channel, 3 * channel, 3, padding=1)

    def forward(self, x32: torch.Tensor, x16: torch.Tensor, x8: torch.Tensor) -> torch.Tensor:
        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return resize(t, like, corners=True)

        x16_1 = self.up1(up(x32, x16)) * x16
        x8_1 = self.up2(up(up(x32, x16), x8)) * self.up3(up(x16, x8)) * x8
        x16_2 = self.cat2(torch.cat((x16_1, self.up4(up(x32, x16))), 1))
        x8_2 = self.cat3(torch.cat((x8_1, self.up5(up(x16_2, x8))), 1))
        return x8_2


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared MLP over average- and max-pooled features."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        peak = self.fc2(torch.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7×7 conv over channel mean and max."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.conv(pooled))
