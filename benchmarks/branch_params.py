"""Parameter counts of every generator's trainable branch at Stable Diffusion v1.5 shape.

Builds each branch on the meta device (no memory, no weights: only shapes) with SD v1.5's
UNet configuration and prints trainable parameters per generator, beside diffusers'
ControlNetModel at the same shape, and Uni-ControlNet's feature extractor and FDN layers
beside the counts its reference configuration implies (ShihaoZhaoZSH/Uni-ControlNet,
configs/local_v15.yaml: 7 RGB conditions = 21 input channels, stem 32/64/128, inject
192/256/384/512 into input blocks 1/4/7/10, FDN γ/β 3×3 convolutions on both norms of
each injected ResBlock). Ours takes one mask channel, so its stem's first convolution is
20·9·32 = 5,760 weights smaller; nothing else differs.

    python benchmarks/branch_params.py
"""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import ControlNetModel

from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS
from ccis.diffusion.unicontrolnet import EXTRACTOR_CHANNELS, FDN, INJECT_CHANNELS
from ccis.generator.registry import REGISTRY, resolve

# SD v1.5's UNet: ControlNetModel's defaults plus CLIP ViT-L/14's 768-wide text states.
SD15 = {"cross_attention_dim": 768, "conditioning_channels": 1}
# (in, out) channels of SD's ResBlocks in input blocks 1, 4, 7 and 10.
SD15_INJECTED_RESBLOCKS = ((320, 320), (320, 640), (640, 1280), (1280, 1280))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv3(channels_in: int, channels_out: int) -> int:
    return 9 * channels_in * channels_out + channels_out


def reference_extractor(in_channels: int = 21) -> int:
    """Uni-ControlNet's FeatureExtractor at local_v15.yaml's shape."""
    c0, c1, c2 = EXTRACTOR_CHANNELS
    stem = conv3(in_channels, c0) + conv3(c0, c1) + conv3(c1, c1) + conv3(c1, c2) + conv3(c2, c2)
    widths = (c2, *INJECT_CHANNELS)
    levels = sum(conv3(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
    zeros = sum(conv3(c, c) for c in INJECT_CHANNELS)
    return stem + levels + zeros


def reference_fdn() -> int:
    """Its FDN layers: γ and β per norm, two norms per injected ResBlock, no affine GN."""
    return sum(
        2 * conv3(label, channels_in) + 2 * conv3(label, channels_out)
        for label, (channels_in, channels_out) in zip(
            INJECT_CHANNELS, SD15_INJECTED_RESBLOCKS, strict=True
        )
    )


def main() -> None:
    with init_empty_weights():
        controlnet = ControlNetModel(
            **SD15, conditioning_embedding_out_channels=SD_CONDITIONING_CHANNELS
        )
        branches = {}
        for name, spec in REGISTRY.items():
            # Each branch class at its own SD-scale defaults, with the entry's switches.
            branches[name] = resolve(spec.network)(**SD15, **spec.switches)
    base = count(controlnet)
    print("Trainable branch parameters at SD v1.5 shape (meta device, 1-channel mask)")
    print(f"{'branch':<22}{'parameters':>16}{'vs ControlNet':>16}")
    print(f"{'diffusers ControlNet':<22}{base:>16,}{1.0:>16.4f}")
    for name, branch in branches.items():
        print(f"{name:<22}{count(branch):>16,}{count(branch) / base:>16.4f}")

    uni = branches["unicontrolnet"]
    extractor = count(uni.controlnet_cond_embedding.extractor)
    fdn = sum(count(m) for m in uni.modules() if isinstance(m, FDN))
    print()
    print("Uni-ControlNet local adapter, ours beside its reference configuration")
    print(f"{'part':<34}{'ours':>14}{'reference':>14}")
    print(f"{'feature extractor':<34}{extractor:>14,}{reference_extractor():>14,}")
    print(f"{'  (ours has 1 input channel, not 21)':<34}{'':>14}{reference_extractor(1):>14,}")
    print(f"{'FDN γ/β (8 norms)':<34}{fdn:>14,}{reference_fdn():>14,}")
    ccis = branches["ccis"]
    lambdas = ccis.taam_lambdas().numel()
    print()
    print(f"CCIS-Diff adds {count(ccis) - base:,} parameters to ControlNet at this shape "
          f"({lambdas} TAAM λ, one per transformer block).")  # fmt: skip


if __name__ == "__main__":
    main()
