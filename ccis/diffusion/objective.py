"""What a branch trains to minimise, given one noisy batch: the loop's hook for a generator's
own objective.

The training loop (``ccis.generator.train``) draws a batch, noises its latents and asks
the branch's class for a loss. By default that is the paper's ε-prediction MSE of the
frozen UNet steered by the branch's residuals from the mask (:func:`denoising_loss`). A
branch class whose objective differs (Siamese-Diffusion: two weight-sharing branches
and a noise-consistency term) defines ``training_loss(denoiser, batch) -> (loss,
terms)`` and, for the loss log, ``loss_terms`` (the names of ``terms``); the loop calls
it instead, so accelerate, gradient accumulation, checkpoints, resume, the divergence
checks and preemption stay one code path for every generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Residuals = tuple[list[torch.Tensor], torch.Tensor]
Objective = Callable[["Denoiser", "NoisyBatch"], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class NoisyBatch:
    """One training batch, noised: ``noisy = √ᾱ_t·latents + √(1-ᾱ_t)·noise``."""

    latents: torch.Tensor  # x0, VAE latents × scaling factor (B, 4, h, w)
    noise: torch.Tensor  # ε (B, 4, h, w)
    noisy: torch.Tensor  # x_t
    timesteps: torch.Tensor  # t (B,)
    masks: torch.Tensor  # (B, 1, H, W) in {0, 1}
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1], the latents' source images
    progress: float  # the fraction of training done before this step: step / steps
    alphas_cumprod: torch.Tensor  # ᾱ of the noise schedule (T,)

    def _alpha(self, like: torch.Tensor) -> torch.Tensor:
        alpha = self.alphas_cumprod.to(like.device, torch.float32)[self.timesteps]
        return alpha.view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``latents`` noised to this batch's timesteps with ``noise`` (float32)."""
        alpha = self._alpha(latents)
        return alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * noise.float()

    def predicted_latents(self, noisy: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0 that ``noise`` (a predicted ε) implies for ``noisy`` at this batch's timesteps."""
        alpha = self._alpha(noisy)
        return (noisy.float() - (1 - alpha).sqrt() * noise.float()) / alpha.sqrt()


class Denoiser:
    """The frozen UNet steered by the branch, for one batch's prompts.

    ``branch`` is the module as the loop prepared it (possibly wrapped for several
    processes): every branch forward of an objective must go through it, so that
    gradients are synchronised. Inputs may stack the batch several times (two hints in
    one call, say): the prompts and ``branch_kwargs`` are repeated to match.
    """

    def __init__(self, branch, unet, text: torch.Tensor, weight_dtype: torch.dtype,
                 branch_kwargs: dict | None = None):  # fmt: skip
        self.branch, self.unet, self.text = branch, unet, text
        self.weight_dtype = weight_dtype
        self.branch_kwargs = branch_kwargs or {}

    def _repeat(self, value: torch.Tensor, batch: int) -> torch.Tensor:
        times, rest = divmod(batch, len(value))
        if rest or not times:
            raise ValueError(f"a batch of {batch} does not stack the {len(value)} prompts")
        return value.repeat(times, *([1] * (value.ndim - 1))) if times > 1 else value

    def residuals(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                  condition: torch.Tensor) -> Residuals:  # fmt: skip
        """The branch's residuals (down blocks, mid block) for ``condition``."""
        batch = len(noisy)
        extra = {k: self._repeat(v, batch) for k, v in self.branch_kwargs.items()}
        return self.branch(noisy, timesteps, self._repeat(self.text, batch), condition,
                           return_dict=False, **extra)  # fmt: skip

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, down: list[torch.Tensor],
                mid: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The UNet's ε for ``noisy`` with the residuals ``down`` and ``mid`` added."""
        return self.unet(
            noisy, timesteps, encoder_hidden_states=self._repeat(self.text, len(noisy)),
            down_block_additional_residuals=[r.to(self.weight_dtype) for r in down],
            mid_block_additional_residual=mid.to(self.weight_dtype),
        ).sample  # fmt: skip

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                 condition: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """ε predicted for ``noisy`` with the branch reading ``condition``."""
        return self.predict(noisy, timesteps, *self.residuals(noisy, timesteps, condition))


def denoising_loss(
    denoiser: Denoiser, batch: NoisyBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's objective: MSE between ε and its prediction from the mask."""
    prediction = denoiser(batch.noisy, batch.timesteps, batch.masks)
    return F.mse_loss(prediction.float(), batch.noise.float()), {}


def objective_of(branch) -> Objective:
    """The objective ``branch`` (unwrapped) trains with: its ``training_loss`` or the
    default :func:`denoising_loss`."""
    return getattr(branch, "training_loss", None) or denoising_loss


def loss_terms_of(branch) -> tuple[str, ...]:
    """The names of the extra loss terms ``branch``'s objective reports (may be none)."""
    return tuple(getattr(branch, "loss_terms", ()))
