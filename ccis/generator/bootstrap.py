"""Bootstrap the tiny preset's base text-to-image model from scratch on the triplets.

No pretrained Stable Diffusion can be downloaded for the CPU demo, so the tiny preset
trains its own small base: a word-level tokenizer on the captions, then the VAE
(reconstruction + a texture term + a small KL term), then the text encoder and UNet together
(ε-prediction, 10% empty prompts so classifier-free guidance has an unconditional
model). Both losses weight the polyp mask more than the mucosa: without that the small
base reproduces the mucosa and blurs polyps away, and prompts naming a polyp's colour
change nothing. The result is a ``StableDiffusionPipeline`` folder, which ``load_sd15`` and
``StableDiffusionPipeline.from_pretrained`` read like the real SD v1.5. Checkpoints
every N steps make a killed run resume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ccis.common.atomic import atomic_dir
from ccis.common.checkpoints import resume_from, save_checkpoint
from ccis.common.divergence import check_finite, gradient_norm
from ccis.common.preemption import stop_requests
from ccis.common.provenance import claim, fingerprint
from ccis.diffusion.presets import tiny_components
from ccis.generator.data import TripletData, batch_indices, encode_posteriors
from ccis.generator.train import step_generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapSettings:
    """Step counts and hyper-parameters of the tiny base's training."""

    vae_steps: int = 300
    unet_steps: int = 800
    batch_size: int = 16
    vae_learning_rate: float = 1e-3
    unet_learning_rate: float = 5e-4
    empty_prompt_probability: float = 0.1
    # Extra loss weight inside the polyp mask, for the VAE and the UNet. Phantom polyps
    # cover a few % of a frame: unweighted, a small model learns the mucosa and blurs the
    # polyp (its colour) away, and then no prompt can change it.
    polyp_weight: float = 10.0
    # SD's VAE keeps 4 channels per 8×8 pixels; more keep more colour (measured).
    latent_channels: int = 4
    # Weight of the VAE loss's texture term (0: off), which matches the local energy of
    # fine detail, not the pixels: L1 alone is least for a blurred guess, so a small VAE
    # renders every polyp smooth (SD's VAE has LPIPS and a GAN for this, neither of
    # which can be had offline). At 10 the demo's reconstructions keep the roughness the
    # captioner measures on 70 % of the polyps, against 39 % (docs/performance.md).
    texture_weight: float = 10.0
    resolution: int = 64
    checkpoint_every: int = 200
    seed: int = 0


def _state(models: dict, optimizers: dict):
    """Checkpoint writer and loader for named models (safetensors) and optimizers."""

    def write(folder: Path) -> None:
        for name, model in models.items():
            tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(tensors, folder / f"{name}.safetensors")
        for name, optimizer in optimizers.items():
            torch.save(optimizer.state_dict(), folder / f"{name}.pt")

    def load(folder: Path) -> None:
        for name, model in models.items():
            model.load_state_dict(load_file(folder / f"{name}.safetensors"))
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(torch.load(folder / f"{name}.pt", weights_only=True))

    return write, load


def bootstrap_base(
    triplets: str | os.PathLike,
    out: str | os.PathLike,
    work: str | os.PathLike,
    settings: BootstrapSettings,
) -> Path:
    """Train the tiny base on ``triplets`` and save it as a diffusers folder at ``out``."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(settings.seed)
    data = TripletData(triplets, settings.resolution)
    parts = tiny_components(
        data.captions + [""],
        image_size=settings.resolution,
        seed=settings.seed,
        latent_channels=settings.latent_channels,
    )
    vae, unet, text_encoder = parts["vae"], parts["unet"], parts["text_encoder"]
    tokenizer, scheduler = parts["tokenizer"], parts["scheduler"]
    total = settings.vae_steps + settings.unet_steps
    log.info(
        "bootstrapping the tiny base on %d triplets from %s: vocabulary %d words, %d VAE steps, "
        "%d UNet steps, batch %d", len(data), triplets, len(tokenizer), settings.vae_steps,
        settings.unet_steps, settings.batch_size,
    )  # fmt: skip
    work = Path(work)
    claim(work, fingerprint(asdict(settings), [Path(triplets)]))
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_learning_rate)
    gen_opt = torch.optim.AdamW(
        [*unet.parameters(), *text_encoder.parameters()], lr=settings.unet_learning_rate
    )
    models = {"vae": vae, "unet": unet, "text_encoder": text_encoder}

    write, load = _state(models, {"vae_optimizer": vae_opt, "unet_optimizer": gen_opt})
    start = resume_from(work / "checkpoints", load)
    # The VAE is frozen once the UNet phase starts: encode every image once, not per step
    # (on the phase's first step, which is also the first step of a run resumed past it).
    posteriors = None
    with stop_requests() as stop:
        for step in tqdm(
            range(start, total), initial=start, total=total, desc="bootstrap", mininterval=2
        ):
            g = step_generator(settings.seed, step)
            indices = batch_indices(step, settings.batch_size, len(data), settings.seed)
            images, masks, captions = data.batch(indices)
            if step < settings.vae_steps:
                loss = _vae_loss(vae, images, masks, g, settings)
                vae_opt.zero_grad(set_to_none=True)
                loss.backward()
                _check(loss, vae.parameters(), step + 1, work / "checkpoints")
                vae_opt.step()
            else:
                if posteriors is None:
                    posteriors = _posteriors(vae, data)
                means, stds, scale = posteriors
                mean, std = means[indices], stds[indices]
                latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
                drop = torch.rand(len(captions), generator=g) < settings.empty_prompt_probability
                prompts = ["" if d else c for d, c in zip(drop.tolist(), captions, strict=True)]
                ids = tokenizer(prompts, padding="max_length",
                                max_length=tokenizer.model_max_length, truncation=True,
                                return_tensors="pt").input_ids  # fmt: skip
                noise = torch.randn(latents.shape, generator=g)
                t = torch.randint(
                    0, scheduler.config.num_train_timesteps, (len(prompts),), generator=g
                )
                pred = unet(
                    scheduler.add_noise(latents, noise, t),
                    t,
                    encoder_hidden_states=text_encoder(ids)[0],
                ).sample
                cells = F.interpolate(masks, size=latents.shape[-2:], mode="area")
                loss = _weighted_mean((pred - noise).square(), cells, settings.polyp_weight)
                gen_opt.zero_grad(set_to_none=True)
                loss.backward()
                _check(
                    loss,
                    [*unet.parameters(), *text_encoder.parameters()],
                    step + 1,
                    work / "checkpoints",
                )
                gen_opt.step()
            done = step + 1
            scheduled = settings.checkpoint_every and done % settings.checkpoint_every == 0
            if done < total and (scheduled or stop):  # stop: SIGTERM/SIGUSR1 (preemption)
                saved = save_checkpoint(work / "checkpoints", done, write)
                if stop:
                    raise stop.stop("bootstrap", saved)
            if done in (settings.vae_steps, total) or done % 250 == 0:
                log.info(
                    "step %d/%d (%s): loss %.4f",
                    done,
                    total,
                    "vae" if done <= settings.vae_steps else "unet",
                    loss.item(),
                )

    if posteriors is None:
        posteriors = _posteriors(vae, data)
    vae.register_to_config(scaling_factor=posteriors[2])
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    out = Path(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
    log.info("wrote the tiny base to %s", out)
    return out


def _vae_loss(
    vae,
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    settings: BootstrapSettings,
) -> torch.Tensor:
    """The VAE phase's loss on one batch: polyp-weighted L1 of a sampled reconstruction,
    a small KL term and the texture term."""
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    loss = _weighted_mean((recon - images).abs(), masks, settings.polyp_weight)
    loss = loss + 1e-6 * posterior.kl().mean()
    if settings.texture_weight:
        energy = texture_energy(recon) - texture_energy(images)
        loss = loss + settings.texture_weight * _weighted_mean(
            energy.abs(), masks, settings.polyp_weight
        )
    return loss


def _check(loss: torch.Tensor, parameters, step: int, checkpoints: Path) -> None:
    """Stop before an optimiser step with a non-finite loss or gradient (no NaN checkpoint)."""
    check_finite(loss, "loss", "bootstrap", step, checkpoints)
    check_finite(gradient_norm(parameters), "gradient norm", "bootstrap", step, checkpoints)


def _weighted_mean(error: torch.Tensor, masks: torch.Tensor, weight: float) -> torch.Tensor:
    """Mean of ``error`` weighted 1 outside and ``1 + weight`` inside the masks."""
    weights = 1.0 + weight * masks
    return (error * weights).sum() / (weights.sum() * error.shape[1])


def _gaussian(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N×1×H×W tensor (edges replicated)."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    image = F.pad(image, (radius,) * 4, mode="replicate")
    image = F.conv2d(image, kernel.view(1, 1, 1, -1))
    return F.conv2d(image, kernel.view(1, 1, -1, 1))


LUMA = (0.299, 0.587, 0.114)


def texture_energy(images: torch.Tensor) -> torch.Tensor:
    """Local energy of fine luminance detail (N×1×H×W) of images in [-1, 1].

    The detail is the luminance minus its σ = 0.6 px blur, the band the captioner's
    roughness reads at 64 px; its magnitude is averaged over σ = 2 px, so two textures
    of equal strength match wherever their grains fall.
    """
    luma = (images * images.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return _gaussian((luma - _gaussian(luma, 0.6)).abs(), 2.0)


def _posteriors(vae, data: TripletData) -> tuple:
    """Every triplet's latent mean and std, and SD's scaling factor: 1 / std of the means,
    so the scaled latents are about unit-variance."""
    vae.eval()
    mean, std = encode_posteriors(vae, data, batch_size=64)
    return mean, std, 1.0 / max(float(mean.std()), 1e-3)
