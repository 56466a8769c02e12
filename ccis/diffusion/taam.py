"""Text-aware attention mechanism (TAAM, paper §2.2.3) and the blur-mask re-injection.

In every transformer block of the trainable branch, before self-attention, the block's
own cross-attention projections give the probabilities ``Mc = softmax(Qc Kcᵀ/√d)``
(fp32, averaged over heads, padding keys masked out). A pixel's text score is the
probability mass it puts on the prompt's content tokens (no start, end or padding
tokens); ``S`` is its per-image min–max normalisation, and an empty prompt gives ``S =
0``. Self-attention then becomes ``softmax(Qs Ksᵀ/√d + log(1 + λ·S_j))``: a key-side
bias, with ``λ = softplus(raw) ≥ 0`` learnable per block, starting at 1 (see
``ccis.diffusion.model``). ``S`` itself is computed without gradient: it reads the
cross-attention, λ decides how much it matters.

The bias is not handed to ``scaled_dot_product_attention`` as a float mask: a mask that
needs a gradient (λ learns through it) takes SDPA off its fused kernels onto the one
that builds every hw×hw probability (at 512², 4096 tokens: 1.3–1.6× ControlNet's step
time and 1.3–1.4× its memory; docs/performance.md). A key-side bias is one more
channel of the dot product instead, ``[q, 1]·[k, √d·b_j]/√d = q·k/√d + b_j``
(:func:`key_bias_attention`), so the same softmax runs in the fused kernels with no mask
at all, on the CPU and the GPU.

An approximation, stated: the paper takes ``Qc`` from the block's cross-attention, whose
queries come *after* self-attention; TAAM needs ``S`` *before* self-attention, so we
project the self-attention's own input, ``attn2.to_q(norm1(x))``, with the
cross-attention's query weights. Both read the same block's features one sub-layer apart.

After cross-attention, the block adds ``ZeroConv(resize(Fb))``: the cross-attention
output meets the blur-mask embedding again before the next ResNet block. The paper
describes this with TAAM; it has its own switch (``reinject``), so that "w/o TAAM"
removes the attention bias only, and it needs BMWS's ``Fb``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn


def content_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Content tokens of right-padded prompts: the tokenizer's real tokens minus the
    first (start) and the last real one (end). ``attention_mask`` is (B, L) of 0/1."""
    real = attention_mask.bool()
    length = real.sum(dim=1, keepdim=True)
    position = torch.arange(real.shape[1], device=real.device)[None, :]
    return real & (position >= 1) & (position < length - 1)


def text_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    heads: int,
    content_mask: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel text score ``S`` in [0, 1], shape (B, N).

    ``query`` (B, N, C) and ``key`` (B, L, C) are the cross-attention projections of the
    pixels and the prompt tokens; ``content_mask`` (B, L) marks content tokens and
    ``key_mask`` (B, L) the real (non-padding) ones, which the softmax runs over.
    """
    batch, n, channels = query.shape
    d = channels // heads
    # Fold 1/√d into the queries; mask padding keys with an additive bias.
    q = (query.float() * d**-0.5).view(batch, n, heads, d).transpose(1, 2)
    k = key.float().view(batch, key.shape[1], heads, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)  # (B, heads, N, L), L is ~77
    if key_mask is not None:
        logits = logits + torch.where(key_mask.bool(), 0.0, float("-inf"))[:, None, None, :]
    weights = content_mask.float()[:, None, :, None]  # (B, 1, L, 1)
    score = (logits.softmax(dim=-1) @ weights).mean(dim=1)[..., 0]  # (B, N)
    low, high = torch.aminmax(score, dim=1, keepdim=True)
    scaled = ((score - low) / (high - low).clamp_min(1e-6)).clamp_(0.0, 1.0)
    # An empty prompt (no content token) gives S = 0 everywhere.
    return scaled * content_mask.any(dim=1, keepdim=True)


@dataclass
class BranchContext:
    """Per-forward inputs the branch's attention processors share.

    Kept until the next forward (not cleared), so gradient checkpointing can recompute
    blocks during the backward pass.
    """

    encoder_hidden_states: torch.Tensor | None = None
    content_mask: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    lambdas: torch.Tensor | None = None
    blur_feature: torch.Tensor | None = None
    latent_hw: tuple[int, int] = (0, 0)
    last_scores: dict[int, torch.Tensor] = field(default_factory=dict)
    keep_scores: bool = False


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, n, channels = x.shape
    return x.view(batch, n, heads, channels // heads).transpose(1, 2)


def key_bias_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``softmax(Q Kᵀ/√d + b_j)·V`` with a per-key bias ``b`` (B, N), exactly, by SDPA
    without a mask.

    ``query``, ``key``, ``value`` are (B, heads, N, d). The bias rides in an extra channel:
    queries get 1, keys ``√d·b_j``, values 0, so each dot product gains ``b_j`` and the
    output is unchanged. The channels are padded to a multiple of 8 (zeros change no dot
    product), which the GPU's fused kernels want, and all three keep one width, which the
    CPU's flash kernel needs. The gradient reaches ``b`` (and λ) through the keys.
    """
    batch, heads, n, d = query.shape
    width = -(-(d + 1) // 8) * 8
    column = (bias * d**0.5).to(key.dtype)[:, None, :, None].expand(batch, heads, n, 1)
    zeros = key.new_zeros(batch, heads, n, width - d - 1)
    query = torch.cat([query, torch.ones_like(column), zeros], dim=-1)
    key = torch.cat([key, column, zeros], dim=-1)
    value = F.pad(value, (0, width - d))
    return F.scaled_dot_product_attention(query, key, value, scale=d**-0.5)[..., :d]


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a block's token grid, from the branch input size (down-sampling ceils)."""
    height, width = latent_hw
    factor = 1
    while factor <= max(height, width):
        h, w = -(-height // factor), -(-width // factor)
        if h * w == tokens:
            return h, w
        factor *= 2
    raise ValueError(f"{tokens} tokens do not tile a {height}×{width} latent")


class TextAwareSelfAttnProcessor:
    """Self-attention with the TAAM key-side bias ``log(1 + λ·S)``."""

    def __init__(self, index: int, cross_attn: Attention, context: BranchContext):
        self.index = index
        self.cross_attn = cross_attn
        self.context = context

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        ctx = self.context
        if ctx.encoder_hidden_states is None or ctx.lambdas is None or hidden_states.ndim != 3:
            return AttnProcessor2_0()(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        if attention_mask is not None or encoder_hidden_states is not None:
            raise ValueError("TAAM self-attention supports plain self-attention blocks only")
        cross = self.cross_attn
        # S is an analysis of the current cross-attention, not a path to train it: no
        # gradient flows through it (λ still learns through the bias), which keeps the
        # score's N×L probabilities out of the backward pass.
        with torch.no_grad():
            scores = text_scores(
                cross.to_q(hidden_states),
                cross.to_k(ctx.encoder_hidden_states),
                cross.heads,
                ctx.content_mask,
                ctx.key_mask,
            )
        if ctx.keep_scores:
            ctx.last_scores[self.index] = scores.detach()
        bias = torch.log1p(ctx.lambdas[self.index] * scores)  # (B, N): one per key pixel
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(hidden_states), attn.heads)
        value = _split_heads(attn.to_v(hidden_states), attn.heads)
        out = key_bias_attention(query, key, value, bias)
        out = out.transpose(1, 2).reshape(hidden_states.shape[0], -1, attn.heads * query.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class BlurReinjectionProcessor:
    """Cross-attention followed by ``+ ZeroConv(resize(Fb))``."""

    def __init__(self, index: int, zero_conv: nn.Conv2d, context: BranchContext):
        self.index = index
        self.zero_conv = zero_conv
        self.context = context
        self.base = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        feature = self.context.blur_feature
        if feature is None or out.ndim != 3:
            return out
        h, w = token_grid(out.shape[1], self.context.latent_hw)
        resized = F.interpolate(feature, size=(h, w), mode="bilinear", align_corners=False)
        injected = self.zero_conv(resized.to(self.zero_conv.weight.dtype))
        return out + injected.flatten(2).transpose(1, 2).to(out.dtype)
