"""Train a generator's branch on the frozen base: the paper's loop for every generator.

ε-prediction MSE at uniform timesteps, half of the prompts replaced by "" (paper §2.2.4),
AdamW; frozen VAE, text encoder and UNet (cast to the mixed-precision dtype), the branch
in fp32 under autocast. A branch class with an objective of its own (``training_loss``,
see ``ccis.diffusion.objective``) gets the same noisy batch and replaces the MSE.
Accelerate runs it on one CPU, one GPU or (``accelerate launch``) several, with gradient
accumulation; checkpoints every N steps resume automatically, and every randomness is a
function of (seed, step), so a resumed run continues the same run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm import tqdm

from ccis.common.atomic import atomic_dir, write_bytes_atomic
from ccis.common.checkpoints import resume_from, save_checkpoint
from ccis.common.divergence import check_finite, describe_skips
from ccis.common.images import encode_png
from ccis.common.loss_log import append_row, trim_rows
from ccis.common.preemption import stop_requests
from ccis.common.provenance import claim, fingerprint
from ccis.diffusion.bmws import BLUR_SIGMA
from ccis.diffusion.branch import takes_text_masks
from ccis.diffusion.model import TAAM_LAMBDA
from ccis.diffusion.objective import Denoiser, NoisyBatch, loss_terms_of, objective_of
from ccis.diffusion.pipeline import CCISPipeline
from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS, load_sd15
from ccis.diffusion.unicontrolnet import EXTRACTOR_CHANNELS, INJECT_CHANNELS
from ccis.generator.data import TripletData, batch_indices, encode_posteriors
from ccis.generator.registry import build_branch

log = logging.getLogger(__name__)


def optimizer_groups(branch, learning_rate: float, lambda_learning_rate: float) -> list[dict]:
    """AdamW parameter groups: the branch at ``learning_rate`` (AdamW's weight decay), and
    TAAM's λ at ``lambda_learning_rate`` without weight decay (decay would pull λ to 0, and
    Adam moves a scalar by about its learning rate a step, so λ needs its own)."""
    lambdas = list(getattr(branch, "lambda_parameters", list)())
    ids = {id(p) for p in lambdas}
    groups = [{"params": [p for p in branch.parameters() if id(p) not in ids],
               "lr": learning_rate}]  # fmt: skip
    if lambdas:
        groups.append({"params": lambdas, "lr": lambda_learning_rate, "weight_decay": 0.0})
    return groups


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of branch training (paper: AdamW 1e-5, batch 4).

    ``max_grad_norm`` clips the gradient norm as diffusers' ControlNet script does (1.0);
    ``lambda_learning_rate`` is TAAM λ's own learning rate, ``taam_lambda`` its start.
    """

    steps: int
    batch_size: int = 4
    learning_rate: float = 1e-5
    lambda_learning_rate: float = 1e-3
    max_grad_norm: float = 1.0
    taam_lambda: float = TAAM_LAMBDA
    gradient_accumulation: int = 1
    checkpoint_every: int = 200
    validate_every: int = 0
    empty_prompt_probability: float = 0.5
    resolution: int = 512
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    blur_sigma: float = BLUR_SIGMA


def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from ``key`` (seed, step, ...): randomness by position."""
    state = np.random.SeedSequence(list(key)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def train_branch(
    kind: str,
    triplets: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    work: str | os.PathLike,
    settings: TrainSettings,
    conditioning_channels: tuple[int, ...] = SD_CONDITIONING_CHANNELS,
    extractor_channels: tuple[int, ...] = EXTRACTOR_CHANNELS,
    inject_channels: tuple[int, ...] = INJECT_CHANNELS,
) -> Path:
    """Train generator ``kind`` and save its branch to ``out`` (a diffusers folder).

    ``work`` keeps checkpoints, the loss log (TAAM's λ per block, each step's seconds)
    and validation images between runs. The channel tuples shape the branch
    (:func:`ccis.generator.registry.build_branch` gives each class the ones it takes).
    """
    from accelerate import Accelerator

    work = Path(work)
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation,
    )
    # What the weights depend on: not the step count (raise it to train on), nor how often
    # we checkpoint or validate; but the number of processes, which orders the data.
    volatile = ("steps", "checkpoint_every", "validate_every", "gradient_checkpointing")
    stamp = {k: v for k, v in asdict(settings).items() if k not in volatile}
    stamp.update(
        kind=kind, channels=list(conditioning_channels), processes=accelerator.num_processes,
        extractor_channels=list(extractor_channels), inject_channels=list(inject_channels),
    )  # fmt: skip
    if accelerator.is_main_process:
        claim(work, fingerprint(stamp, [Path(triplets), Path(base)]))
    accelerator.wait_for_everyone()
    device = accelerator.device
    weight_dtype = _dtype(settings.mixed_precision)
    parts = load_sd15(base)
    for name in ("vae", "text_encoder", "unet"):
        parts[name].requires_grad_(False).to(device, weight_dtype).eval()
    torch.manual_seed(settings.seed)
    branch = build_branch(
        kind, parts["unet"], conditioning_embedding_out_channels=conditioning_channels,
        blur_sigma=settings.blur_sigma, taam_lambda=settings.taam_lambda,
        extractor_channels=extractor_channels, inject_channels=inject_channels,
    )  # fmt: skip
    if settings.gradient_checkpointing:
        branch.enable_gradient_checkpointing()
    branch.train()
    optimizer = torch.optim.AdamW(
        optimizer_groups(branch, settings.learning_rate, settings.lambda_learning_rate)
    )
    branch, optimizer = accelerator.prepare(branch, optimizer)
    data = TripletData(triplets, settings.resolution)
    # The frozen VAE's posterior of every image, once (not an encoder pass per batch).
    means, stds = encode_posteriors(parts["vae"], data, device, weight_dtype)
    log.info(
        "training %s on %d triplets from %s (base %s): %d steps, batch %d × %d accumulation × %d "
        "processes, lr %g (TAAM λ: lr %g, start %g), gradient norm clip %g, %s precision",
        kind, len(data), triplets, base, settings.steps, settings.batch_size,
        settings.gradient_accumulation, accelerator.num_processes, settings.learning_rate,
        settings.lambda_learning_rate, settings.taam_lambda, settings.max_grad_norm,
        settings.mixed_precision,
    )  # fmt: skip

    checkpoints = work / "checkpoints"
    start = resume_from(checkpoints, accelerator.load_state)
    loss_log = work / "loss.csv"
    if accelerator.is_main_process:
        trim_rows(loss_log, start)
    accelerator.wait_for_everyone()
    vae, unet, text_encoder = parts["vae"], parts["unet"], parts["text_encoder"]
    tokenizer, scheduler = parts["tokenizer"], parts["scheduler"]
    scaling = vae.config.scaling_factor
    rank, world = accelerator.process_index, accelerator.num_processes
    unwrapped = accelerator.unwrap_model(branch)
    takes_masks = takes_text_masks(unwrapped)
    start_lambdas = getattr(unwrapped, "taam_lambdas", lambda: None)()
    blocks = 0 if start_lambdas is None else len(start_lambdas)
    # A generator's own objective may add terms (logged as loss_<term> after the total);
    # seconds: the step's wall time (the paper-shape benchmark reads it).
    objective, terms = objective_of(unwrapped), loss_terms_of(unwrapped)
    columns = ("step", "loss", *(f"loss_{t}" for t in terms),
               *(f"lambda_{i}" for i in range(blocks)), "seconds")  # fmt: skip

    # fp16 runs under a dynamic loss scaler, which skips steps with inf gradients (counted).
    scaled, skipped = settings.mixed_precision == "fp16", 0
    with stop_requests() as stop:
        progress = tqdm(range(start, settings.steps), initial=start, total=settings.steps,
                        desc=f"train {kind}", disable=not accelerator.is_main_process)  # fmt: skip
        for step in progress:
            began = time.perf_counter()
            # The loss, then the objective's terms, summed over micro-batches in float64.
            total = torch.zeros(1 + len(terms), dtype=torch.float64)
            for micro in range(settings.gradient_accumulation):
                global_micro = step * settings.gradient_accumulation + micro
                indices = batch_indices(
                    global_micro, settings.batch_size * world, len(data), settings.seed
                )
                images, masks, captions = data.batch(indices[rank::world])
                g = step_generator(settings.seed, global_micro, rank)
                drop = torch.rand(len(captions), generator=g) < settings.empty_prompt_probability
                prompts = ["" if d else c for d, c in zip(drop.tolist(), captions, strict=True)]
                tokens = tokenizer(prompts, padding="max_length",
                                   max_length=tokenizer.model_max_length, truncation=True,
                                   return_tensors="pt")  # fmt: skip
                # The posterior's sample, as AutoencoderKL's latent_dist.sample draws it.
                mean = means[indices[rank::world]].to(device, weight_dtype)
                std = stds[indices[rank::world]].to(device, weight_dtype)
                noise_x0 = randn_tensor(mean.shape, generator=g, device=device, dtype=weight_dtype)
                latents = (mean + std * noise_x0) * scaling
                with torch.no_grad():
                    text = text_encoder(tokens.input_ids.to(device))[0]
                noise = torch.randn(latents.shape, generator=g).to(device, latents.dtype)
                timesteps = torch.randint(
                    0, scheduler.config.num_train_timesteps, (len(prompts),), generator=g
                ).to(device)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                key_mask = tokens.attention_mask.bool().to(device)
                extra = {"text_key_mask": key_mask} if takes_masks else {}
                denoiser = Denoiser(branch, unet, text, weight_dtype, extra)
                batch = NoisyBatch(
                    latents=latents, noise=noise, noisy=noisy, timesteps=timesteps,
                    masks=masks.to(device), images=images.to(device),
                    progress=step / settings.steps, alphas_cumprod=scheduler.alphas_cumprod,
                )  # fmt: skip
                with accelerator.accumulate(branch), accelerator.autocast():
                    loss, term_values = objective(denoiser, batch)
                    accelerator.backward(loss)
                    # Checked before the optimiser step, so no NaN reaches the weights that a
                    # checkpoint could save (every process sees the same reduced values).
                    values = torch.stack(
                        [loss.detach().float(), *(term_values[t].detach().float() for t in terms)]
                    )
                    values = accelerator.reduce(values, reduction="mean")  # over processes
                    mean = values[0]
                    check_finite(mean, "loss", f"training {kind}", step + 1, checkpoints)
                    if accelerator.sync_gradients:
                        # No clip (0) is a clip at inf: grads × 1, and the norm to check.
                        norm = accelerator.clip_grad_norm_(
                            branch.parameters(), settings.max_grad_norm or math.inf
                        )
                        if not scaled:  # fp16's scaler skips inf-gradient steps itself
                            check_finite(
                                norm, "gradient norm", f"training {kind}", step + 1, checkpoints
                            )
                    optimizer.step()
                    if accelerator.sync_gradients and accelerator.optimizer_step_was_skipped:
                        skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                total += values.cpu().double() / settings.gradient_accumulation
            done = step + 1
            if accelerator.is_main_process:
                lambdas = unwrapped.taam_lambdas().detach().tolist() if blocks else []
                seconds = f"{time.perf_counter() - began:.3f}"
                row = (done, *(f"{v:.6f}" for v in [*total.tolist(), *lambdas]), seconds)
                append_row(loss_log, columns, row)
                progress.set_postfix(loss=f"{total[0].item():.4f}")
            # A stop request (SIGTERM, SIGUSR1) checkpoints this step, whatever the schedule.
            stopping = done < settings.steps and stop.agreed(accelerator)
            scheduled = settings.checkpoint_every and done % settings.checkpoint_every == 0
            if done < settings.steps and (scheduled or stopping):
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(checkpoints, done, accelerator.save_state)
                if stopping:
                    accelerator.wait_for_everyone()
                    raise stop.stop(f"training {kind}", checkpoints / f"checkpoint-{done}")
            if (
                settings.validate_every
                and done % settings.validate_every == 0
                and accelerator.is_main_process
            ):
                _validate(
                    accelerator.unwrap_model(branch),
                    parts,
                    data,
                    work / "validation" / f"step-{done}.png",
                )

    if message := describe_skips(skipped, settings.steps - start, settings.mixed_precision):
        log.warning("%s", message)
    accelerator.wait_for_everyone()
    out = Path(out)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(branch)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            shutil.copy(loss_log, tmp / "loss.csv")
            plot_loss(loss_log, tmp / "loss.png", kind)
        log.info("wrote %s", out)
    return out


def plot_loss(csv_path: Path, png: Path, title: str) -> None:
    """Plot a loss log (raw and smoothed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(frame["step"], frame["loss"], alpha=0.3, label="loss")
    window = max(1, len(frame) // 20)
    ax.plot(
        frame["step"],
        frame["loss"].rolling(window, min_periods=1).mean(),
        label=f"mean of {window}",
    )
    ax.set(xlabel="step", ylabel="ε-prediction MSE", title=f"{title} training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


@torch.no_grad()
def _validate(branch, parts: dict, data: TripletData, png: Path, count: int = 4) -> None:
    """Sample a few training masks with their captions into a PNG grid (mask | image)."""
    branch.eval()
    pipe = CCISPipeline(controlnet=branch, **parts)
    indices = list(range(min(count, len(data))))
    masks = [data.pixels(i)[1] * 255 for i in indices]
    images = pipe([data.captions[i] for i in indices], masks, num_inference_steps=20,
                  guidance_scale=7.0, seed=0, progress=False)  # fmt: skip
    rows = [np.hstack([np.repeat(m[..., None], 3, axis=2), (img * 255).round().astype(np.uint8)])
            for m, img in zip(masks, images, strict=True)]  # fmt: skip
    # (cv2.imwrite only returns False on a full disk: write the bytes ourselves, atomically.)
    write_bytes_atomic(png, encode_png(np.vstack(rows)))
    branch.train()
