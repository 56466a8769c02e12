"""Stable Diffusion v1.5's architecture without a download: its configurations, CLIP's
tokenizer, a randomly initialised copy, and the original single-file checkpoint layout.

``sd15_config/`` holds diffusers' SD v1.5 configurations (``model_index.json``, the UNet,
the VAE, the text encoder — CLIP ViT-L/14's text tower — the scheduler and the tokenizer
settings, with no safety checker). A single ``.safetensors``/``.ckpt`` file has weights
only; diffusers' single-file loader would look its configuration up on the Hub, so
:func:`ccis.diffusion.presets.load_sd15` hands it this folder instead, and the tokenizer
from :func:`clip_tokenizer`: CLIP's byte-pair vocabulary as open_clip ships it in its
wheel (``bpe_simple_vocab_16e6.txt.gz``, the file OpenAI released), written out as the
``vocab.json`` and ``merges.txt`` of transformers' ``CLIPTokenizer``.

:func:`sd15_shaped` builds the three networks from those configurations with random
weights (the paper's shapes, nothing learned), and :func:`original_state_dict` lays
them out as the CompVis/LDM checkpoint (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*``), the layout of
``v1-5-pruned-emaonly.safetensors``, so the paper-shape rehearsal can load both forms.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SD15_CONFIG = Path(__file__).with_name("sd15_config")
# CLIP's BPE file: its first line is a header, then the merges; OpenAI's tokenizer keeps
# the first 49152 - 256 - 2 of them (256 byte tokens and 2 special tokens fill the rest).
_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_bpe_file() -> Path:
    """CLIP's byte-pair vocabulary file as open_clip ships it."""
    import open_clip

    path = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: open_clip's CLIP vocabulary file is missing")
    return path


def write_clip_tokenizer(folder: str | os.PathLike) -> Path:
    """Write CLIP ViT-L/14's tokenizer (SD v1.5's settings) into ``folder``: ``vocab.json``
    (49408 tokens), ``merges.txt`` and the tokenizer configuration."""
    from open_clip.tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(clip_bpe_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + _MERGES]
    characters = list(bytes_to_unicode().values())
    tokens = [*characters, *(c + "</w>" for c in characters)]
    tokens += ["".join(merge.split()) for merge in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"{clip_bpe_file()}: gives {len(vocab)} tokens, CLIP has 49408")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((SD15_CONFIG / "tokenizer" / name).read_bytes())
    return folder


def clip_tokenizer():
    """SD v1.5's tokenizer (CLIP's BPE, 77 tokens, padded with the end token), offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="ccis-clip-tokenizer-") as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp), local_files_only=True)


def _config(config_dir: Path, name: str) -> dict:
    return json.loads((config_dir / name / ("scheduler_config.json" if name == "scheduler"
                                            else "config.json")).read_text())  # fmt: skip


def sd15_shaped(seed: int = 0, config_dir: str | os.PathLike = SD15_CONFIG) -> dict:
    """SD v1.5's UNet, VAE and CLIP text encoder with random weights (seeded), its tokenizer
    and scheduler: the components of a ``StableDiffusionPipeline``.

    ``config_dir`` is a diffusers folder of configurations (default: SD v1.5's); tests give
    narrower widths of the same layout.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = Path(config_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_config(config_dir, "unet"))
    vae = AutoencoderKL.from_config(_config(config_dir, "vae"))
    text = {k: v for k, v in _config(config_dir, "text_encoder").items() if k != "architectures"}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    tokenizer_dir = config_dir / "tokenizer"
    if (tokenizer_dir / "vocab.json").is_file():
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        tokenizer = clip_tokenizer()
    scheduler = PNDMScheduler.from_config(_config(config_dir, "scheduler"))
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
            "scheduler": scheduler}  # fmt: skip


# The original (LDM) layout, as name prefixes: (diffusers, original) per sub-module.
def _unet_prefixes(config: dict) -> list[tuple[str, str]]:
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for level in range(levels):
        for layer in range(per_level):
            # input_blocks.0 is conv_in; each level has its layers, then a down-sampler.
            block = 1 + level * (per_level + 1) + layer
            pairs.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0."))
            pairs.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1."))
        if level < levels - 1:
            block = (level + 1) * (per_level + 1)
            down = f"down_blocks.{level}.downsamplers.0.conv."
            pairs.append((down, f"input_blocks.{block}.0.op."))
        # The up path has one layer more per level; the up-sampler follows the last one,
        # after its attention when the level has attention.
        for layer in range(per_level + 1):
            block = level * (per_level + 1) + layer
            pairs.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{block}.0."))
            pairs.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1."))
        if level < levels - 1:
            block = level * (per_level + 1) + per_level
            slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
            pairs.append((f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{block}.{slot}."))
    return pairs


_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                ("conv_shortcut", "skip_connection"))  # fmt: skip
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                  ("to_out.0", "proj_out"))  # fmt: skip


def _vae_prefixes(config: dict) -> list[tuple[str, str]]:
    levels = len(config["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."),
             ("decoder.conv_norm_out.", "decoder.norm_out.")]  # fmt: skip
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]  # fmt: skip
    for level in range(levels):
        pairs.append((f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."))
        pairs.append((f"encoder.down_blocks.{level}.downsamplers.0.",
                      f"encoder.down.{level}.downsample."))  # fmt: skip
        # The original decoder numbers its levels from the lowest resolution up.
        original = levels - 1 - level
        pairs.append((f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{original}.block."))
        pairs.append((f"decoder.up_blocks.{level}.upsamplers.0.",
                      f"decoder.up.{original}.upsample."))  # fmt: skip
    return pairs


def _rename(name: str, prefixes: list[tuple[str, str]]) -> tuple[str, str]:
    """(new name, the diffusers prefix it matched, or "")."""
    for ours, theirs in prefixes:
        if name.startswith(ours):
            return theirs + name[len(ours) :], ours
    return name, ""


def _suffix(name: str, renames: tuple[tuple[str, str], ...], start: int) -> str:
    """Rename the first whole dotted part of ``name`` after ``start`` that ``renames`` names."""
    head, parts = name[:start], name[start:].split(".")
    for ours, theirs in renames:
        width = ours.count(".") + 1
        for at in range(len(parts) - width + 1):
            if ".".join(parts[at : at + width]) == ours:
                parts[at : at + width] = [theirs]
                return head + ".".join(parts)
    return name


def original_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three networks' weights in the original Stable Diffusion checkpoint layout."""
    out: dict[str, torch.Tensor] = {}
    prefixes = _unet_prefixes(unet.config)
    for name, tensor in unet.state_dict().items():
        renamed, matched = _rename(name, prefixes)
        if ".resnets." in matched or matched.startswith("mid_block.resnets"):
            renamed = _suffix(renamed, _UNET_RESNET, len(renamed) - len(name) + len(matched))
        out["model.diffusion_model." + renamed] = tensor
    prefixes = _vae_prefixes(vae.config)
    for name, tensor in vae.state_dict().items():
        renamed, matched = _rename(name, prefixes)
        start = len(renamed) - len(name) + len(matched)
        if matched.endswith("attn_1.") or "attentions" in matched:
            renamed = _suffix(renamed, _VAE_ATTENTION, start)
            if tensor.ndim == 2:  # linear in diffusers, 1×1 convolution in the original
                tensor = tensor[:, :, None, None]
        elif "resnets" in matched:
            renamed = _suffix(renamed, (("conv_shortcut", "nin_shortcut"),), start)
        out["first_stage_model." + renamed] = tensor
    for name, tensor in text_encoder.state_dict().items():
        # transformers ≥ 5.6 dropped CLIPTextModel's ``text_model.`` level; the file has it.
        out["cond_stage_model.transformer.text_model." + name.removeprefix("text_model.")] = tensor
    return {key: value.contiguous() for key, value in out.items()}


def save_sd15_shaped(
    out: str | os.PathLike, seed: int = 0, config_dir: str | os.PathLike = SD15_CONFIG
) -> tuple[Path, Path]:
    """Write a randomly initialised SD v1.5-shaped base to ``out/diffusers`` (a diffusers
    folder) and ``out/sd15.safetensors`` (the same weights in the original layout)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from ccis.common.atomic import atomic_dir, atomic_path

    out = Path(out)
    parts = sd15_shaped(seed, config_dir)
    folder, single = out / "diffusers", out / "sd15.safetensors"
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp)
    weights = original_state_dict(parts["unet"], parts["vae"], parts["text_encoder"])
    with atomic_path(single) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "ccis": "random SD v1.5 shape"})
    count = {name: sum(p.numel() for p in parts[name].parameters())
             for name in ("unet", "vae", "text_encoder")}  # fmt: skip
    log.info(
        "wrote a random-weight SD v1.5-shaped base (seed %d; UNet %s, VAE %s, text encoder %s "
        "parameters) to %s and %s", seed, f"{count['unet']:,}", f"{count['vae']:,}",
        f"{count['text_encoder']:,}", folder, single,
    )  # fmt: skip
    return folder, single
