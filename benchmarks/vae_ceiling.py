"""What the tiny base's VAE lets a generator reach: the demo's metrics on its reconstructions.

Trains the bootstrap's VAE phase alone (the same initialisation, batches and loss as
``ccis bootstrap``, ``ccis.generator.bootstrap.vae_loss``) on a finished demo run's
training triplets, then scores the real frames at the model's resolution and the VAE's
reconstructions of them with Table 1's attribute agreement (colour, texture) and mask
fidelity (the run's judge segmenter). A generator drawing through this VAE cannot beat
the reconstruction row.

    python benchmarks/vae_ceiling.py --results /tmp/demo/results [--texture-weight 10]
        [--latent-channels 4] [--steps 250]
"""

from __future__ import annotations

import argparse
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

    from ccis.caption.attributes import measure_attributes
    from ccis.diffusion.presets import tiny_vae
    from ccis.generator.bootstrap import BootstrapSettings, vae_loss
    from ccis.generator.data import TripletData, batch_indices
    from ccis.generator.train import step_generator
    from ccis.metrics.fidelity import dice, load_segment

    chosen = {"texture_weight": args.texture_weight, "latent_channels": args.latent_channels}
    settings = BootstrapSettings(
        vae_steps=args.steps,
        resolution=args.resolution,
        **{key: value for key, value in chosen.items() if value is not None},
    )
    data = TripletData(args.results / "captions/train.parquet", settings.resolution)
    torch.manual_seed(settings.seed)  # as tiny_components, which builds the VAE first
    vae = tiny_vae(settings.resolution, settings.latent_channels)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_learning_rate)
    began = time.perf_counter()
    for step in range(settings.vae_steps):
        indices = batch_indices(step, settings.batch_size, len(data), settings.seed)
        images, masks, _ = data.batch(indices)
        loss = vae_loss(vae, images, masks, step_generator(settings.seed, step), settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - began

    frames, masks = zip(*(data.pixels(i) for i in range(len(data))), strict=True)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        recon = vae.eval().decode(vae.encode(x).latent_dist.mean).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    judge = load_segment(args.results / "segmentation" / args.judge / "model")
    prompts = data.frame["attributes"].tolist()

    def scores(images) -> tuple[float, float, float]:
        hits: dict[str, list[bool]] = {"colour": [], "texture": []}
        for image, mask, prompt in zip(images, masks, prompts, strict=True):
            measured = measure_attributes(image, mask * 255).to_dict()
            for name, got in hits.items():
                if prompt.get(name) not in (None, "none"):
                    got.append(measured[name] == prompt[name])
        fidelity = [dice(m * 255, p) for m, p in zip(masks, judge(list(images)), strict=True)]
        return (
            100 * np.mean(hits["colour"]),
            100 * np.mean(hits["texture"]),
            100 * np.mean(fidelity),
        )

    print(
        f"VAE: {settings.vae_steps} steps in {seconds:.0f} s, latent channels "
        f"{settings.latent_channels}, texture weight {settings.texture_weight:g}, "
        f"{len(data)} frames at {settings.resolution} px, judge {args.judge}"
    )
    print(f"{'':<24}{'colour %':>9}{'texture %':>10}{'agreement %':>12}{'fidelity %':>11}")
    for name, images in (("real frames", frames), ("VAE reconstructions", recon)):
        colour, texture, fidelity = scores(images)
        agreement = (colour + texture) / 2
        print(f"{name:<24}{colour:>9.1f}{texture:>10.1f}{agreement:>12.1f}{fidelity:>11.1f}")


if __name__ == "__main__":
    main()
