"""Cost of CCIS-Diff against plain ControlNet, and of our sampler against diffusers'.

Prints, for the tiny preset on the CPU and (when a GPU is present) for a Stable
Diffusion v1.5-shaped model with random weights in bf16 at 512²:

- training-step time and peak memory of the CCIS-Diff branch (BMWS + TAAM) divided by
  those of plain ControlNet at the same settings (targets ≤ 1.15 each);
- sampling images/s of ``CCISPipeline`` with the CCIS-Diff branch divided by diffusers'
  ``StableDiffusionControlNetPipeline`` with a ControlNet, both DDIM 20 steps and
  classifier-free guidance 7.0 (target ≥ 0.85).

Each measurement runs in its own process, so peak memory is not shared between them, and
the two variants alternate several times with the best run of each kept. On the CPU the
workers use one thread and count CPU time, which other load on the machine disturbs far
less than wall time.
On the CPU, peak memory is the growth of the process's peak resident set over its
size before the first step; on a GPU it is ``torch.cuda.max_memory_allocated``.

    python benchmarks/diffusion_bench.py [--preset tiny|sd15|both]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

TARGETS = {"step": 1.15, "memory": 1.15, "sampling": 0.85}
PROMPT = "The polyp is pink, round, smooth-textured, and slightly swollen."


def _sd15_shaped(device: str, dtype: torch.dtype) -> dict:
    """SD v1.5's architecture with random weights (no download)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ccis.diffusion.presets import sd_scheduler, word_tokenizer

    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    tokenizer = word_tokenizer([PROMPT])
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    )  # fmt: skip
    text = CLIPTextModel(config)
    parts = {"vae": vae, "text_encoder": text, "tokenizer": tokenizer, "unet": unet,
             "scheduler": sd_scheduler()}  # fmt: skip
    for name in ("vae", "text_encoder", "unet"):
        parts[name].to(device, dtype).requires_grad_(False)
    return parts


def _setup(preset: str, device: str):
    from ccis.diffusion.presets import TINY_CONDITIONING_CHANNELS, tiny_components

    torch.manual_seed(0)
    if preset == "tiny":
        parts = tiny_components([PROMPT])
        for name in ("vae", "text_encoder", "unet"):
            parts[name].requires_grad_(False)
        return parts, 64, 4, torch.float32, TINY_CONDITIONING_CHANNELS
    return _sd15_shaped(device, torch.bfloat16), 512, 4, torch.bfloat16, (16, 32, 96, 256)


def _clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def _memory_start(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _memory_peak(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def worker_train(preset: str, variant: str, steps: int) -> dict:
    """Time and peak memory of training steps of one branch variant."""
    from diffusers import ControlNetModel

    from ccis.diffusion.model import CCISControlNetModel

    device = "cuda" if torch.cuda.is_available() and preset == "sd15" else "cpu"
    parts, size, batch, dtype, cond = _setup(preset, device)
    unet, text_encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    if variant == "ccis":
        branch = CCISControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond)
    else:
        branch = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond,
                                           conditioning_channels=1)  # fmt: skip
    branch.to(device).train()
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-5, foreach=True)
    tokens = tokenizer([PROMPT] * batch, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = text_encoder(tokens.input_ids.to(device))[0]
    latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=dtype)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    extra = {"text_key_mask": tokens.attention_mask.bool().to(device)} if variant == "ccis" else {}

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(latents)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            down, mid = branch(latents, t, text, masks, return_dict=False, **extra)
            pred = unet(
                latents, t, encoder_hidden_states=text,
                down_block_additional_residuals=down, mid_block_additional_residual=mid,
            ).sample  # fmt: skip
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocator, kernels, optimizer state)
    base = _memory_start(device)
    start = _clock(device)
    for _ in range(steps):
        step()
    seconds = (_clock(device) - start) / steps
    return {"step_s": seconds, "peak_mb": _memory_peak(device) - (base if device == "cpu" else 0)}


def worker_sample(preset: str, variant: str, runs: int) -> dict:
    """Images per second of one sampler, DDIM 20 steps, CFG 7."""
    import numpy as np
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    from ccis.diffusion.model import CCISControlNetModel
    from ccis.diffusion.pipeline import CCISPipeline

    device = "cuda" if torch.cuda.is_available() and preset == "sd15" else "cpu"
    parts, size, batch, dtype, cond = _setup(preset, device)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = 255
    prompts = [PROMPT] * batch
    if variant == "ccis":
        branch = CCISControlNetModel.from_unet(
            parts["unet"], conditioning_embedding_out_channels=cond
        )
        pipe = CCISPipeline(controlnet=branch.to(device, dtype), **parts)

        def run() -> None:
            pipe(
                prompts, [mask] * batch, num_inference_steps=20, guidance_scale=7.0, progress=False
            )
    else:
        # diffusers' pipeline feeds its ControlNet an RGB control image.
        branch = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=cond)
        pipe = StableDiffusionControlNetPipeline(
            controlnet=branch.to(device, dtype), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, **parts,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        image = Image.fromarray(np.repeat(mask[..., None], 3, axis=2))

        def run() -> None:
            pipe(prompts, image=[image] * batch, num_inference_steps=20, guidance_scale=7.0,
                 height=size, width=size, output_type="np")  # fmt: skip

    run()  # warm-up
    start = _clock(device)
    for _ in range(runs):
        run()
    return {"images_per_s": batch * runs / (_clock(device) - start)}


def _spawn(kind: str, preset: str, variant: str, count: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--preset", preset,
           "--variant", variant, "--count", str(count)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(kind: str, preset: str, variants: tuple[str, str], count: int, repeats: int):
    """Alternate the two variants ``repeats`` times; keep each one's best (least noisy) run."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            results[variant].append(_spawn(kind, preset, variant, count))
    key = "step_s" if kind == "train" else "images_per_s"
    pick = min if kind == "train" else max
    best = []
    for variant in variants:
        runs = results[variant]
        chosen = dict(pick(runs, key=lambda r: r[key]))
        if kind == "train":
            chosen["peak_mb"] = min(r["peak_mb"] for r in runs)
        best.append(chosen)
    return best


def report(preset: str, steps: int, runs: int, repeats: int, numbers: dict | None = None) -> bool:
    """Measure and print one preset's ratios; store them in ``numbers`` when given."""
    label = (
        "tiny preset, CPU"
        if preset == "tiny"
        else "SD v1.5-shaped, random weights, bf16, 512², GPU"
    )
    ccis, plain = _best("train", preset, ("ccis", "controlnet"), steps, repeats)
    ours, theirs = _best("sample", preset, ("ccis", "diffusers"), runs, repeats)
    rows = [
        ("training step (s)", ccis["step_s"], plain["step_s"], "step"),
        ("peak memory (MiB)", ccis["peak_mb"], plain["peak_mb"], "memory"),
        ("sampling (images/s)", ours["images_per_s"], theirs["images_per_s"], "sampling"),
    ]
    print(f"\n{label} (batch 4; DDIM 20 steps, CFG 7.0 for sampling)")
    print(f"{'measure':<22}{'CCIS-Diff':>12}{'baseline':>12}{'ratio':>8}  target")
    ok = True
    for name, a, b, key in rows:
        ratio = a / b
        if numbers is not None:
            numbers[f"{preset}_{key}"] = {"ccis": a, "baseline": b, "ratio": ratio}
        target = TARGETS[key]
        good = ratio <= target if key != "sampling" else ratio >= target
        ok &= good
        sign = "≤" if key != "sampling" else "≥"
        verdict = "ok" if good else "MISSED"
        print(f"{name:<22}{a:>12.4g}{b:>12.4g}{ratio:>8.3f}  {sign} {target} {verdict}")
    print(
        "baselines: ControlNet (training), diffusers StableDiffusionControlNetPipeline (sampling)"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "sd15", "both"), default="both")
    parser.add_argument("--worker", choices=("train", "sample"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.worker:
        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        func = worker_train if args.worker == "train" else worker_sample
        print(json.dumps(func(args.preset, args.variant, args.count)))
        return
    ok = True
    numbers: dict = {}
    if args.preset in ("tiny", "both"):
        ok &= report("tiny", steps=30, runs=2, repeats=4, numbers=numbers)
    if args.preset in ("sd15", "both"):
        if torch.cuda.is_available():
            ok &= report("sd15", steps=10, runs=2, repeats=1, numbers=numbers)
            numbers["device"] = torch.cuda.get_device_name()
        else:
            print("\nSD v1.5-shaped measurement skipped: no GPU on this machine")
    if args.json:
        args.json.write_text(json.dumps(numbers))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
