"""CCIS-Diff's trainable branch: diffusers' ControlNet with BMWS and TAAM behind switches.

``CCISControlNetModel`` is a ``ControlNetModel`` (copy of the UNet encoder and mid
block, zero-initialised 1×1 outputs into the frozen UNet's skips) whose 1-channel mask
conditioning gains the blur mask weighting strategy (``bmws``), whose transformer blocks
gain the text-aware attention bias (``taam``) and, after cross-attention, the re-injection
of the blur-mask embedding (``reinject``). With every switch off it is exactly
``ControlNetModel`` (same weights, same residuals): the ControlNet baseline. Each ablation
is the same class with one switch off (``ccis.generator.REGISTRY``). It saves and loads as
a diffusers folder (``config.json`` + safetensors).

TAAM's λ (one per transformer block, ``λ = softplus(raw) ≥ 0``) starts at
``taam_lambda_start`` (default 1: the most text-relevant key gets twice its weight). A small
start buys no safety, since the zero convolutions already make the branch a no-op at the
start, and Adam moves a scalar by about its learning rate per step: from 0.018 at the
paper's 1e-5 it could never matter. Training gives λ its own parameter group
(``lambda_parameters``).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

# diffusers' pipeline loader finds a component's base class in the component's module:
# this import lets CCISPipeline.from_pretrained load the branch.
from diffusers import (
    ControlNetModel,
    ModelMixin,  # noqa: F401
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from ccis.diffusion.bmws import BLUR_SIGMA, MaskConditioningEmbedding
from ccis.diffusion.branch import branch_from_unet, derived_signature
from ccis.diffusion.mask_init import conditioning_convs, init_mask_encoder
from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS
from ccis.diffusion.taam import (
    BlurReinjectionProcessor,
    BranchContext,
    TextAwareSelfAttnProcessor,
    content_token_mask,
)

log = logging.getLogger(__name__)

# TAAM's starting λ: log(1 + λ·S) then doubles the weight of the most text-relevant key.
TAAM_LAMBDA = 1.0
_OWN_DEFAULTS = {
    "bmws": True, "taam": True, "reinject": True, "blur_sigma": BLUR_SIGMA,
    "taam_lambda_start": TAAM_LAMBDA,
}  # fmt: skip
# Parameters the ControlNet copy does not have (weight-copy check in ``from_unet``).
_OWN_PARAMETERS = (
    "controlnet_cond_embedding.blur_embedding", "controlnet_cond_embedding.weighting",
    "taam_lambda", "blur_reinjection",
)  # fmt: skip


def _zero_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels_in, channels_out, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def inverse_softplus(value: float) -> float:
    """``raw`` with ``softplus(raw) == value`` (value > 0)."""
    if value <= 0:
        raise ValueError(f"TAAM λ must start above 0, got {value}")
    return value + math.log(-math.expm1(-value))


def _init(
    self, *, bmws=True, taam=True, reinject=True, blur_sigma=BLUR_SIGMA,
    taam_lambda_start=TAAM_LAMBDA, **kwargs,
):  # fmt: skip
    kwargs.setdefault("conditioning_channels", 1)
    ControlNetModel.__init__(self, **kwargs)
    self._branch_context = BranchContext()
    self._warned_no_mask = False
    channels = self.config.block_out_channels[0]
    if bmws:
        self.controlnet_cond_embedding = MaskConditioningEmbedding(
            conditioning_embedding_channels=channels,
            conditioning_channels=self.config.conditioning_channels,
            block_out_channels=tuple(self.config.conditioning_embedding_out_channels),
            blur_sigma=blur_sigma,
        )
        self.controlnet_cond_embedding.context = self._branch_context
    blocks = self.transformer_blocks()
    if taam and blocks:
        raw = inverse_softplus(float(taam_lambda_start))
        self.taam_lambda = nn.Parameter(torch.full((len(blocks),), raw))
    if bmws and reinject and blocks:
        # The paper re-injects Fb after cross-attention (§2.2.3). Without BMWS there is no
        # Fb: the switch is then inert (w/o BMWS still differs from CCIS-Diff in bmws only).
        self.blur_reinjection = nn.ModuleList(
            _zero_conv(channels, block.attn2.to_out[0].out_features) for block in blocks
        )
    self.install_processors()


_init.__signature__ = derived_signature(_OWN_DEFAULTS)


class CCISControlNetModel(ControlNetModel):
    """ControlNet branch with the blur mask weighting strategy and text-aware attention.

    Extra config:
        bmws: the blur-mask encoder and its gate (Fb).
        taam: the text-aware key bias ``log(1 + λ·S)`` in self-attention.
        reinject: ``+ ZeroConv(resize(Fb))`` after cross-attention (needs ``bmws``).
        blur_sigma: σ of the mask blur, as a fraction of the image side.
        taam_lambda_start: λ at initialisation (each block's λ is then learned).
    """

    __init__ = register_to_config(_init)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        *,
        bmws: bool = True,
        taam: bool = True,
        reinject: bool = True,
        blur_sigma: float = BLUR_SIGMA,
        taam_lambda: float = TAAM_LAMBDA,
        conditioning_embedding_out_channels: tuple[int, ...] = SD_CONDITIONING_CHANNELS,
        load_weights_from_unet: bool = True,
    ) -> CCISControlNetModel:
        """A branch whose encoder and mid block copy ``unet``'s (1-channel mask input)."""
        own = dict(
            bmws=bmws, taam=taam, reinject=reinject, blur_sigma=blur_sigma,
            taam_lambda_start=taam_lambda,
        )  # fmt: skip
        model = branch_from_unet(
            cls, unet, own, _OWN_PARAMETERS,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            load_weights_from_unet=load_weights_from_unet,
        )  # fmt: skip
        embedding = model.controlnet_cond_embedding
        encoders = [embedding, *([embedding.blur_embedding] if bmws else [])]
        init_mask_encoder(conv for e in encoders for conv in conditioning_convs(e))
        return model

    def transformer_blocks(self) -> list[BasicTransformerBlock]:
        """The branch's transformer blocks (down blocks, then the mid block), in order."""
        found = []
        for part in (self.down_blocks, self.mid_block):
            if part is not None:
                found += [m for m in part.modules() if isinstance(m, BasicTransformerBlock)]
        return [b for b in found if getattr(b, "attn2", None) is not None]

    def install_processors(self) -> None:
        """(Re)install the TAAM and re-injection attention processors (after, say,
        ``set_attn_processor`` replaced them)."""
        ctx = self._branch_context
        reinjection = getattr(self, "blur_reinjection", None)
        for index, block in enumerate(self.transformer_blocks()):
            if self.config.taam:
                block.attn1.set_processor(TextAwareSelfAttnProcessor(index, block.attn2, ctx))
            if reinjection is not None:
                block.attn2.set_processor(
                    BlurReinjectionProcessor(index, self.blur_reinjection[index], ctx)
                )

    def set_attn_processor(self, processor) -> None:
        """diffusers' ``set_attn_processor``, after which TAAM and the re-injection are
        put back: replacing them (say, by a memory-efficient processor for the whole
        pipeline) would otherwise silently turn the branch into ControlNet."""
        super().set_attn_processor(processor)
        if self.config.taam or getattr(self, "blur_reinjection", None) is not None:
            self.install_processors()
            log.debug("kept TAAM / re-injection processors after set_attn_processor")

    def taam_lambdas(self) -> torch.Tensor | None:
        """λ of every block (softplus of the raw parameter), or None without TAAM."""
        raw = getattr(self, "taam_lambda", None)
        return None if raw is None else F.softplus(raw)

    def lambda_parameters(self) -> list[nn.Parameter]:
        """TAAM's λ parameters (empty without TAAM): trained in their own group."""
        raw = getattr(self, "taam_lambda", None)
        return [] if raw is None else [raw]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        *args,
        text_token_mask: torch.Tensor | None = None,
        text_key_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """ControlNet's forward, plus the prompt's token masks for TAAM.

        ``text_key_mask`` (B, L) marks real (non-padding) tokens, as a tokenizer's
        attention mask does; ``text_token_mask`` marks content tokens (default: the real
        tokens minus start and end). Without either, every token counts as real.
        """
        ctx = self._branch_context
        batch, length = encoder_hidden_states.shape[:2]
        if text_key_mask is None:
            if self.config.taam and not self._warned_no_mask:
                log.warning(
                    "no text_key_mask given: every token counts as real, so padding tokens "
                    "count as prompt content in TAAM's text score (CCISPipeline passes it)"
                )
                self._warned_no_mask = True
            text_key_mask = torch.ones(batch, length, dtype=torch.bool, device=sample.device)
        if text_token_mask is None:
            text_token_mask = content_token_mask(text_key_mask)
        ctx.encoder_hidden_states = encoder_hidden_states
        ctx.key_mask = text_key_mask.bool()
        ctx.content_mask = text_token_mask.bool()
        ctx.lambdas = self.taam_lambdas()
        ctx.latent_hw = tuple(sample.shape[-2:])
        ctx.last_scores = {}
        ctx.blur_feature = None
        return super().forward(
            sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs
        )
