"""Polyp-PVT (Dong et al., CAAI AIR 2023): PVTv2 encoder with CIM, CFM and SAM.

- CIM (camouflage identification) cleans the stride-4 level with channel attention
  then spatial attention;
- CFM (cascaded fusion) fuses the three high levels (strides 8, 16, 32, reduced to 32
  channels) with the partial-decoder cascade;
- SAM (similarity aggregation) builds a small graph from CFM features pooled inside a
  soft region derived from the CIM features, reasons over it with a GCN and projects
  it back onto every pixel (a non-local step).

``forward`` returns ``[P1, P2]`` logits at the input size (P1 from CFM, P2 from SAM);
training sums the structure loss of both and the test output is ``sigmoid(P1 + P2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ccis.segmentation.backbones import Backbone
from ccis.segmentation.layers import (
    CascadedDecoder,
    ChannelAttention,
    ConvBN,
    SpatialAttention,
    resize,
)


class GCN(nn.Module):
    """One graph-convolution step over nodes (``num_node``) with ``num_state`` features."""

    def __init__(self, num_state: int, num_node: int):
        super().__init__()
        self.node_conv = nn.Conv1d(num_node, num_node, 1)
        self.state_conv = nn.Conv1d(num_state, num_state, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, state, node)
        h = self.node_conv(x.transpose(1, 2)).transpose(1, 2) - x
        return torch.relu(self.state_conv(h))


class SAM(nn.Module):
    """Similarity aggregation between CFM features ``x`` and CIM features ``region``.

    As in the reference, the soft region is channel 1 of a channel softmax of the CIM
    features, and the graph's nodes are the inner ``mids``×``mids`` cells of an
    average pool of the masked projection (the outer ring of cells is dropped).
    """

    def __init__(self, channels: int = 32, states: int = 16, mids: int = 4):
        super().__init__()
        self.states = states
        self.pool = nn.AdaptiveAvgPool2d(mids + 2)
        self.conv_state = nn.Conv2d(channels, states, 1)
        self.conv_proj = nn.Conv2d(channels, states, 1)
        self.gcn = GCN(states, mids * mids)
        self.conv_extend = nn.Conv2d(states, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        region = resize(region, x)
        region = torch.softmax(region, dim=1)[:, 1:2]
        state = self.conv_state(x).reshape(n, self.states, -1)  # (n, s, hw)
        proj = self.conv_proj(x)
        anchors = self.pool(proj * region)[:, :, 1:-1, 1:-1].reshape(n, self.states, -1)
        # Affinity of every pixel to every node, normalised over the nodes.
        affinity = torch.softmax(anchors.transpose(1, 2) @ proj.reshape(n, self.states, -1), 1)
        nodes = self.gcn(state @ affinity.transpose(1, 2))  # (n, s, nodes)
        back = (nodes @ affinity).reshape(n, self.states, h, w)
        return x + self.conv_extend(back)


class PolypPVT(nn.Module):
    """Polyp-PVT on any four-level backbone (paper: PVTv2-b2, channels 64/128/320/512)."""

    def __init__(self, backbone: Backbone, channel: int = 32):
        super().__init__()
        self.backbone = backbone
        c4, c8, c16, c32 = backbone.channels
        self.channel_attention = ChannelAttention(c4)
        self.spatial_attention = SpatialAttention()
        self.reduce4 = ConvBN(c4, channel, 1)
        self.reduce8 = ConvBN(c8, channel, 1)
        self.reduce16 = ConvBN(c16, channel, 1)
        self.reduce32 = ConvBN(c32, channel, 1)
        self.cfm = CascadedDecoder(channel)
        self.cfm_out = ConvBN(3 * channel, channel, 3, padding=1)
        self.sam = SAM(channel)
        self.head_cfm = nn.Conv2d(channel, 1, 1)
        self.head_sam = nn.Conv2d(channel, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``[P1 (CFM), P2 (SAM)]`` at the input size."""
        size = x.shape[-2:]
        f4, f8, f16, f32 = self.backbone(x)
        f4 = self.channel_attention(f4) * f4
        cim = self.spatial_attention(f4) * f4
        cfm = self.cfm_out(self.cfm(self.reduce32(f32), self.reduce16(f16), self.reduce8(f8)))
        # The reference halves the stride-4 CIM map to CFM's stride-8 grid.
        region = resize(self.reduce4(cim), cfm, corners=True)
        sam = self.sam(cfm, region)
        return [resize(self.head_cfm(cfm), size), resize(self.head_sam(sam), size)]

    @staticmethod
    def final_logits(outputs: list[torch.Tensor]) -> torch.Tensor:
        """The test-time prediction: ``P1 + P2`` (the caller applies the sigmoid)."""
        return outputs[0] + outputs[1]
