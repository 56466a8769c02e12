"""CCIS-Diff on diffusers: the trainable branch with BMWS and TAAM, pipeline and presets."""

from ccis.diffusion.model import CCISControlNetModel
from ccis.diffusion.taam import content_token_mask, text_scores

__all__ = ["CCISControlNetModel", "content_token_mask", "text_scores"]
