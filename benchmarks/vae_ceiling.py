"""What the tiny base's VAE lets a generator reach: the demo's metrics on its reconstructions.

Runs ``ccis bootstrap``'s code (``bootstrap_base``) with no UNet steps, so its VAE is
trained exactly as the bootstrap trains it, on a finished demo run's training triplets;
then scores the real frames at the model's resolution and the VAE's reconstructions of
them with Table 1's attribute agreement (colour, texture) and the Dice behind its mask
fidelity (the run's judge segmenter). A generator drawing through this VAE cannot beat
the reconstruction row.

    python benchmarks/vae_ceiling.py --results /tmp/demo/results [--texture-weight 10]
        [--latent-channels 4] [--steps 250]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a demo run's results/")
    parser.add_argument("--judge", default="pranet/real_x2/seed0", help="segmentation run")
    parser.add_argument("--steps", type=int, default=250, help="VAE steps")
    parser.add_argument("--texture-weight", type=float, default=None)
    parser.add_argument("--latent-channels", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import AutoencoderKL

    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base
    from ccis.generator.data import TripletData
    from ccis.metrics.agreement import attribute_agreement
    from ccis.metrics.fidelity import dice, load_segment

    chosen = {"texture_weight": args.texture_weight, "latent_channels": args.latent_channels}
    settings = BootstrapSettings(
        vae_steps=args.steps,
        unet_steps=0,
        resolution=args.resolution,
        checkpoint_every=0,
        **{key: value for key, value in chosen.items() if value is not None},
    )
    triplets = args.results / "captions/train.parquet"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = bootstrap_base(triplets, Path(tmp) / "base", Path(tmp) / "work", settings)
        vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    seconds = time.perf_counter() - began

    data = TripletData(triplets, settings.resolution)
    frames, masks = zip(*(data.pixels(i) for i in range(len(data))), strict=True)
    masks = [mask * 255 for mask in masks]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    judge = load_segment(args.results / "segmentation" / args.judge / "model")
    prompts = data.frame["attributes"].tolist()

    def scores(images) -> tuple[float, float, float, float]:
        agreement, _ = attribute_agreement(zip(images, masks, prompts, strict=True))
        rates = agreement.details["per_attribute"]
        fidelity = [dice(m, p) for m, p in zip(masks, judge(list(images)), strict=True)]
        return rates["colour"], rates["texture"], agreement.value, 100 * np.mean(fidelity)

    print(
        f"VAE: {settings.vae_steps} steps (bootstrap with no UNet steps: {seconds:.0f} s), "
        f"latent channels {settings.latent_channels}, texture weight "
        f"{settings.texture_weight:g}, {len(data)} frames at {settings.resolution} px, "
        f"judge {args.judge}"
    )
    print(f"{'':<24}{'colour %':>9}{'texture %':>10}{'agreement %':>12}{'fidelity %':>11}")
    for name, images in (("real frames", frames), ("VAE reconstructions", recon)):
        colour, texture, agreement, fidelity = scores(images)
        print(f"{name:<24}{colour:>9.1f}{texture:>10.1f}{agreement:>12.1f}{fidelity:>11.1f}")


if __name__ == "__main__":
    main()
