"""Parameter counts of every generator's trainable branch at Stable Diffusion v1.5 shape.

Builds each branch on the meta device (no memory, no weights: only shapes) with SD v1.5's
UNet configuration and prints trainable parameters per generator, beside diffusers'
ControlNetModel at the same shape, and Uni-ControlNet's feature extractor and FDN layers
beside the counts its reference configuration implies (ShihaoZhaoZSH/Uni-ControlNet,
configs/local_v15.yaml: 7 RGB conditions = 21 input channels, stem 32/64/128, inject
192/256/384/512 into input blocks 1/4/7/10, FDN γ/β 3×3 convolutions on both norms of
each injected ResBlock). Ours takes one mask channel, so its stem's first convolution is
20·9·32 = 5,760 weights smaller; nothing else differs.

Siamese-Diffusion's dense hint input and control model beside the counts its reference
implies (Qiukunpeng/Siamese-Diffusion, cldm/dhi.py's FeatureExtractor with
models/cldm_v15.yaml's hint_channels 3, then cldm.py's zero 3×3 convolution to 320; the
control model is ControlNet with that hint block), and what the reference trains besides:
SD's UNet decoder (``sd_locked = False``: output_blocks and out), which our loop keeps
frozen.

    python benchmarks/branch_params.py
"""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel

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


def reference_siamese_dhi(hint_channels: int = 3, out_channels: int = 320) -> int:
    """Siamese-Diffusion's DHI as cldm/dhi.py lays it out, with cldm.py's zero convolution."""

    def residual(channels: int) -> int:  # ResidualBlock(c, c): two 3×3, identity skip
        return 2 * conv3(channels, channels)

    def merge(channels: int) -> int:  # PatchMerging(c): LayerNorm(4c), Linear(4c → 2c)
        return 2 * 4 * channels + 4 * channels * 2 * channels + 2 * channels

    total = conv3(hint_channels, 16) + residual(16) + conv3(16, 32) + residual(32)
    for channels in (32, 64, 128):  # patch_merge1-3, conv_before_res3-5, layer3-5
        total += merge(channels) + conv3(2 * channels, 2 * channels) + residual(2 * channels)
    return total + conv3(256, out_channels)


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
    siamese = branches["siamese"]
    dhi = count(siamese.controlnet_cond_embedding)
    with init_empty_weights():
        # The reference's control model: ControlNet on a 3-channel hint, its hint block
        # replaced by the DHI; and SD v1.5's UNet, whose decoder it also trains.
        rgb = ControlNetModel(
            **{**SD15, "conditioning_channels": 3},
            conditioning_embedding_out_channels=SD_CONDITIONING_CHANNELS,
        )
        unet = UNet2DConditionModel(cross_attention_dim=768)
    reference_control = count(rgb) - count(rgb.controlnet_cond_embedding) + reference_siamese_dhi()
    decoder = count(unet.up_blocks) + count(unet.conv_norm_out) + count(unet.conv_out)
    print()
    print("Siamese-Diffusion, ours beside its reference (cldm/dhi.py, cldm_v15.yaml)")
    print(f"{'part':<34}{'ours':>14}{'reference':>14}")
    print(f"{'dense hint input (3-channel hint)':<34}{dhi:>14,}{reference_siamese_dhi():>14,}")
    print(f"{'control model (shared branches)':<34}{count(siamese):>14,}{reference_control:>14,}")
    print(f"{'+ SD UNet decoder (sd_locked=False)':<34}{'frozen':>14}{decoder:>14,}")
    trained = reference_control + decoder
    print(f"{'trainable in all':<34}{count(siamese):>14,}{trained:>14,}")
    ccis = branches["ccis"]
    lambdas = ccis.taam_lambdas().numel()
    print()
    print(f"CCIS-Diff adds {count(ccis) - base:,} parameters to ControlNet at this shape "
          f"({lambdas} TAAM λ, one per transformer block).")  # fmt: skip


if __name__ == "__main__":
    main()
