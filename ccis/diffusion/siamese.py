"""Siamese-Diffusion (Qiu et al., CVPR 2025, arXiv 2505.06068) as a branch: a ControlNet
with a dense hint input, trained as two weight-sharing branches under a noise-consistency
loss, sampled from the mask alone.

Read from the reference code (Qiukunpeng/Siamese-Diffusion at 3f23d98: ``cldm/cldm.py``,
``cldm/dhi.py``, ``models/cldm_v15.yaml``, ``tutorial_train.py``) and written here on
diffusers:

- **One network, two branches.** The ControlNet (a copy of the UNet encoder and mid block,
  zero-initialised outputs) is shared: Mask-Diffusion feeds it the mask, Image-Diffusion
  the training image (RGB in [0, 1]) through the same weights. Image-Diffusion steers the
  frozen UNet with ``stopgrad(C(mask)) + w·C(image)``, ``w = step / steps`` growing from
  0 to 1 over training (cldm.py 355-365: the mask residuals come from a frozen deep copy
  of the control model under ``no_grad``, i.e. the same weights without gradient;
  ``control_weights_image = global_step / max_steps``). There is no image-only weight.
- **Dense hint input (DHI)**, cldm/dhi.py, replacing ControlNet's eight-convolution hint
  encoder (cldm.py 151-172): a 3×3 convolution to 16 channels, a residual block, a 3×3
  convolution to 32, a residual block, then three times Swin's patch merging (2×2
  neighbours concatenated, LayerNorm, linear 4C → 2C: half the side, twice the
  channels) each followed by a 3×3 convolution and a residual block, ending at 256
  channels and 1/8 of the side; a zero-initialised 3×3 convolution maps it to the first
  encoder width (320) and it is added after ``conv_in``, as ControlNet's hint is.
  Residual block: ``SiLU(conv(SiLU(conv(x))) + skip(x))``, skip a 1×1 convolution when
  the width changes. The mask (binary, turned to RGB by the reference's data loader)
  enters as three equal channels.
- **Objective** (cldm.py ``p_losses``, 478-546), per sample, every weight 1.0 there::

      L = ‖ε_m − ε‖² + ‖ε_i − ε‖² + ‖ε_m − stopgrad(ε_i)‖² + 1[t ≤ 200]·‖ε_m(x_t') − ε‖²

  with ε_m the mask branch's prediction and ε_i the image branch's at the same x_t; the
  third term is the noise-consistency loss (513-525). The fourth (527-535) starts after a
  third of training: x0 as ε_i predicts it, noised again with the same ε to x_t'
  (detached), must be denoised by the mask branch. The reference's ``logvar`` is 0 and
  ``l_simple_weight`` 1, so ``L`` is the loss.
- **Sampling** uses Mask-Diffusion only (cldm.py ``log_images`` samples with the mask
  as the only hint): ``forward`` takes a one-channel mask as every branch does, so our
  pipeline samples it unchanged; a saved branch holds nothing the image branch alone
  used.

Known departures (README, "Siamese-Diffusion"): the reference also fine-tunes SD's UNet
decoder (``sd_locked = False``, tutorial_train.py 22; cldm.py 457-464), while our loop
keeps the whole base frozen for every generator; its recipe (batch 6 on each of 8 GPUs,
3000 steps, 384², 5 % empty prompts, DDIM 50 at guidance 9) gives way to our shared
protocol. The DHI keeps PyTorch's default initialisation, as the reference does: its
residual paths and LayerNorms carry the mask (at 128², two complementary masks' features
differ by about their own norm; in diffusers' default-initialised ControlNet hint stack
by 3 %), so our He initialisation of plain stacks (``ccis.diffusion.mask_init``) is not
needed. The image weight ``w = step / steps`` follows the run's step count, as the
reference's ``max_steps``: a resumed run is the same run, but raising ``--steps`` to
train on from a checkpoint stretches the ramp from there.
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
from ccis.diffusion.objective import Denoiser, NoisyBatch
from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS

# The reference's loss weights (cldm.py 492-495), the last term's timestep bound (490) and
# the fraction of training after which it starts (527).
CONSISTENCY_WEIGHT = 1.0
IMAGE_WEIGHT = 1.0
RENOISED_WEIGHT = 1.0
RENOISED_MAX_TIMESTEP = 200
RENOISED_START = 1 / 3
HINT_CHANNELS = 3  # RGB: the image, or the mask as three equal channels
_OWN_DEFAULTS = {
    "hint_channels": HINT_CHANNELS, "consistency_weight": CONSISTENCY_WEIGHT,
    "image_weight": IMAGE_WEIGHT, "renoised_weight": RENOISED_WEIGHT,
    "renoised_max_timestep": RENOISED_MAX_TIMESTEP, "renoised_start": RENOISED_START,
}  # fmt: skip


def _conv(channels_in: int, channels_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2)


class ResidualBlock(nn.Module):
    """``SiLU(conv(SiLU(conv(x))) + skip(x))``, skip 1×1 when the width changes."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1 = _conv(channels_in, channels_out)
        self.conv2 = _conv(channels_out, channels_out)
        same = channels_in == channels_out
        self.skip = nn.Identity() if same else _conv(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv2(F.silu(self.conv1(x))) + self.skip(x))


class PatchMerging(nn.Module):
    """Swin's patch merging on a (B, C, H, W) map: each 2×2 neighbourhood's four vectors
    concatenated (4C), LayerNorm, linear to 2C: half the side, twice the channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"patch merging needs an even side, got {tuple(x.shape[-2:])}")
        # Swin's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        merged = torch.cat(
            [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], 1
        )
        return self.reduction(self.norm(merged.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class DenseHintInput(nn.Module):
    """The DHI: hint (B, hint_channels, H, W) → (B, out_channels, H/8, W/8), its last
    convolution zero-initialised (so the branch starts as a no-op, as ControlNet's)."""

    def __init__(self, hint_channels: int, out_channels: int, widths: tuple[int, int] = (16, 32)):
        super().__init__()
        first, second = widths
        layers: list[nn.Module] = [
            _conv(hint_channels, first), ResidualBlock(first, first),
            _conv(first, second), ResidualBlock(second, second),
        ]  # fmt: skip
        channels = second
        for _ in range(3):  # three merges: 1/8 of the side, the VAE's factor
            layers += [PatchMerging(channels), _conv(2 * channels, 2 * channels),
                       ResidualBlock(2 * channels, 2 * channels)]  # fmt: skip
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.conv_out = _conv(channels, out_channels)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.features(hint))


def _init(
    self, *, hint_channels=HINT_CHANNELS, consistency_weight=CONSISTENCY_WEIGHT,
    image_weight=IMAGE_WEIGHT, renoised_weight=RENOISED_WEIGHT,
    renoised_max_timestep=RENOISED_MAX_TIMESTEP, renoised_start=RENOISED_START, **kwargs,
):  # fmt: skip
    kwargs.setdefault("conditioning_channels", 1)
    ControlNetModel.__init__(self, **kwargs)
    widths = tuple(self.config.conditioning_embedding_out_channels)
    if len(widths) < 2:
        raise ValueError(f"the DHI needs two widths, got conditioning channels {list(widths)}")
    self.controlnet_cond_embedding = DenseHintInput(
        hint_channels, self.config.block_out_channels[0], widths[:2]
    )


_init.__signature__ = derived_signature(_OWN_DEFAULTS)


class SiameseControlNetModel(ControlNetModel):
    """Siamese-Diffusion's ControlNet: a DHI hint encoder; trained by :meth:`training_loss`.

    Extra config:
        hint_channels: the DHI's input channels (3: an RGB image, or the mask repeated).
        consistency_weight: weight of the noise-consistency term ‖ε_m − stopgrad(ε_i)‖².
        image_weight: weight of the image branch's own ε-MSE.
        renoised_weight: weight of the mask branch's ε-MSE on the image branch's
            re-noised estimate (timesteps ≤ ``renoised_max_timestep``, after
            ``renoised_start`` of training).
    """

    __init__ = register_to_config(_init)
    loss_terms = ("mask", "image", "consistency", "renoised")

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        *,
        conditioning_embedding_out_channels: tuple[int, ...] = SD_CONDITIONING_CHANNELS,
        consistency_weight: float = CONSISTENCY_WEIGHT,
        image_weight: float = IMAGE_WEIGHT,
        renoised_weight: float = RENOISED_WEIGHT,
        renoised_max_timestep: int = RENOISED_MAX_TIMESTEP,
        renoised_start: float = RENOISED_START,
    ) -> SiameseControlNetModel:
        """A branch whose encoder and mid block copy ``unet``'s; the DHI's first two widths
        are the mask encoder's first two (16, 32 at SD shape, as the reference's)."""
        own = dict(
            hint_channels=HINT_CHANNELS, consistency_weight=consistency_weight,
            image_weight=image_weight, renoised_weight=renoised_weight,
            renoised_max_timestep=renoised_max_timestep, renoised_start=renoised_start,
        )  # fmt: skip
        new = ("controlnet_cond_embedding.",)
        return branch_from_unet(
            cls, unet, own, new, dropped=new,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
        )  # fmt: skip

    def hint(self, condition: torch.Tensor) -> torch.Tensor:
        """The DHI's input: a one-channel mask as ``hint_channels`` equal channels (the
        reference's RGB mask), or an image already of that width."""
        channels = self.config.hint_channels
        if condition.shape[1] == 1:
            return condition.expand(-1, channels, -1, -1)
        if condition.shape[1] != channels:
            raise ValueError(
                f"Siamese-Diffusion takes a 1-channel mask or a {channels}-channel image, "
                f"got {condition.shape[1]} channels"
            )
        return condition

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs):
        """ControlNet's forward on the hint (a mask at sampling; a mask or an image in
        training)."""
        return super().forward(
            sample, timestep, encoder_hidden_states, self.hint(controlnet_cond), *args, **kwargs
        )

    def training_loss(
        self, denoiser: Denoiser, batch: NoisyBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reference's objective (module docstring) for one batch, with its terms.

        Both hints go through the branch in one call (shared weights, one forward for
        several processes to synchronise), and both predictions through the UNet in one.
        """
        config, size = self.config, len(batch.noisy)
        noisy, timesteps = batch.noisy, batch.timesteps
        hints = torch.cat([self.hint(batch.masks), (batch.images + 1) / 2])
        twice, times = torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps])
        down, mid = denoiser.residuals(twice, times, hints)
        weight = batch.progress  # the image hint's share grows 0 → 1 over training

        def steer(residual: torch.Tensor) -> torch.Tensor:
            from_mask, from_image = residual[:size], residual[size:]
            return torch.cat([from_mask, from_mask.detach() + weight * from_image])

        prediction = denoiser.predict(twice, times, [steer(r) for r in down], steer(mid))
        from_mask, from_image = prediction.float().chunk(2)
        noise = batch.noise.float()
        terms = {
            "mask": F.mse_loss(from_mask, noise),
            "image": F.mse_loss(from_image, noise),
            "consistency": F.mse_loss(from_mask, from_image.detach()),
            "renoised": torch.zeros((), device=noise.device),
        }
        late = timesteps <= config.renoised_max_timestep
        if config.renoised_weight and batch.progress > config.renoised_start and late.any():
            estimate = batch.predicted_latents(noisy, from_image.detach())
            renoised = batch.add_noise(estimate, noise).detach().to(noisy.dtype)
            again = denoiser(renoised, timesteps, batch.masks).float()
            per_sample = (again - noise).square().mean(dim=(1, 2, 3))
            terms["renoised"] = (per_sample * late.float()).mean()
        loss = (
            terms["mask"]
            + config.image_weight * terms["image"]
            + config.consistency_weight * terms["consistency"]
            + config.renoised_weight * terms["renoised"]
        )
        return loss, {name: value.detach() for name, value in terms.items()}
