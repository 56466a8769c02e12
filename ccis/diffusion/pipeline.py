"""Sampling: prompt(s) + mask(s) → colonoscopy images, DDIM with classifier-free guidance.

``CCISPipeline`` is a diffusers ``DiffusionPipeline`` over a frozen Stable-Diffusion-style
base (VAE, text encoder, tokenizer, UNet, scheduler) and a branch: any ``ControlNetModel``
(``CCISControlNetModel`` at any switch setting, Uni-ControlNet's adapter, a plain one). A
branch whose forward takes them gets the prompt's token masks, which TAAM needs to tell
content tokens from start, end and padding. Each image has its own seeded generator, so
an image does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ccis.diffusion.branch import takes_text_masks
from ccis.diffusion.taam import content_token_mask


def masks_to_tensor(
    masks: Sequence[np.ndarray | Image.Image | torch.Tensor] | np.ndarray | torch.Tensor,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Masks (H×W, any of uint8 0/255, bool, 0/1 floats, PIL) → (B, 1, H, W) in {0, 1}."""
    if isinstance(masks, Image.Image) or (
        isinstance(masks, torch.Tensor | np.ndarray) and masks.ndim == 2
    ):
        masks = [masks]
    out = []
    for mask in masks:
        if isinstance(mask, Image.Image):
            mask = np.asarray(mask.convert("L"))
        t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        t = t.float().squeeze()
        if t.ndim != 2:
            raise ValueError(f"a mask must be H×W, got shape {tuple(t.shape)}")
        t = (t > (0.5 if t.max() <= 1 else 127)).float()[None, None]
        if size is not None and tuple(t.shape[-2:]) != tuple(size):
            t = F.interpolate(t, size=size, mode="nearest")
        out.append(t)
    return torch.cat(out)


class CCISPipeline(DiffusionPipeline):
    """Text + mask → image with a trainable branch on a frozen base."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings (B, L, C) and the tokenizer's attention mask (B, L)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        embeddings = self.text_encoder(ids)[0]
        return embeddings.to(self.unet.dtype), tokens.attention_mask.to(self.device)

    def branch_residuals(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        masks: torch.Tensor,
        scale: float,
    ):
        """The branch's residuals for the UNet's skips and mid block."""
        extra = {}
        if takes_text_masks(self.controlnet):
            extra = {
                "text_key_mask": attention_mask.bool(),
                "text_token_mask": content_token_mask(attention_mask),
            }
        return self.controlnet(
            latents,
            t,
            encoder_hidden_states=embeddings,
            controlnet_cond=masks,
            conditioning_scale=scale,
            return_dict=False,
            **extra,
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        mask,
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.0,
        seed: int | Sequence[int] = 0,
        negative_prompt: str = "",
        conditioning_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "np",
        progress: bool = True,
    ):
        """Generate one image per (prompt, mask) pair.

        ``seed`` is one int (image ``i`` uses ``seed + i``) or one per image.
        ``output_type``: ``np`` (B×H×W×3 floats in [0, 1]), ``pil`` or ``pt``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        size = (height, width) if height and width else None
        masks = masks_to_tensor(mask, size)
        if len(masks) == 1 and len(prompts) > 1:
            masks = masks.expand(len(prompts), -1, -1, -1)
        if len(masks) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(masks)} masks")
        batch = len(prompts)
        height, width = masks.shape[-2:]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"image size {height}×{width} must be a multiple of {self.vae_scale_factor}"
            )
        if isinstance(seed, numbers.Integral):
            seeds = [int(seed) + i for i in range(batch)]
        else:
            seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"{batch} images but {len(seeds)} seeds")
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]

        embeddings, attention = self.encode_prompts(prompts)
        guided = guidance_scale > 1.0
        if guided:
            empty, empty_attention = self.encode_prompts([negative_prompt] * batch)
            embeddings = torch.cat([empty, embeddings])
            attention = torch.cat([empty_attention, attention])
        masks = masks.to(self.device, self.controlnet.dtype)
        branch_masks = torch.cat([masks, masks]) if guided else masks

        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)  # fmt: skip
        latents = randn_tensor(
            shape, generator=generators, device=self.device, dtype=self.unet.dtype
        )
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma

        timesteps = self.scheduler.timesteps
        for t in self.progress_bar(timesteps) if progress else timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            down, mid = self.branch_residuals(
                model_input, t, embeddings, attention, branch_masks, conditioning_scale
            )
            # A branch kept in fp32 (training, validation) steers a half-precision UNet.
            noise = self.unet(
                model_input,
                t,
                encoder_hidden_states=embeddings,
                down_block_additional_residuals=[r.to(self.unet.dtype) for r in down],
                mid_block_additional_residual=mid.to(self.unet.dtype),
                return_dict=False,
            )[0]
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]

        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        images = (images / 2 + 0.5).clamp(0, 1).float()
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
        return array
