"""Model presets: ``sd15`` (Stable Diffusion v1.5 weights you provide) and ``tiny`` (CPU).

``load_sd15`` reads a diffusers folder, a hub id (from the local cache or the hub, never
in tests), or a single-file ``.safetensors``/``.ckpt`` checkpoint (offline, with the
configuration ``ccis.diffusion.sd15`` ships). ``tiny_components``
builds the same architecture families at toy size, for the phantom demo and tests: a
64-pixel VAE with SD's 8× down-sampling, a 32/64/64-channel UNet, a 2-layer CLIP text
encoder and a word-level tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
# The branch's mask-encoder widths: ControlNet's at SD v1.5 scale, and the tiny preset's;
# both have 3 stride-2 steps, the VAE's 8×.
SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)
TINY_CONDITIONING_CHANNELS = (4, 8, 16, 32)


def sd_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion v1.5's noise schedule (the paper samples with it)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def word_tokenizer(texts: Iterable[str], max_length: int = 77) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``texts`` (lower-cased, punctuation split).

    Like CLIP's, it wraps a prompt in start and end tokens, pads to ``max_length`` and
    marks real tokens in ``attention_mask``.
    """
    splitter = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text.lower()))
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = splitter
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
    )


def tiny_unet(
    sample_size: int = 8, cross_attention_dim: int = 64, latent_channels: int = 4
) -> UNet2DConditionModel:
    """A small text-conditioned UNet (channels 32/64/64) of SD's block types."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_vae(sample_size: int = 64, latent_channels: int = 4) -> AutoencoderKL:
    """A small KL autoencoder with SD's 8× down-sampling (SD: 4 latent channels)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=sample_size,
    )


def tiny_text_encoder(vocab_size: int, hidden_size: int = 64) -> CLIPTextModel:
    """A 2-layer CLIP text encoder."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


def tiny_components(
    texts: Iterable[str], image_size: int = 64, seed: int = 0, latent_channels: int = 4
) -> dict:
    """All base components of the tiny preset, randomly initialised with ``seed``."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(texts)
    return {
        "vae": tiny_vae(image_size, latent_channels),
        "text_encoder": tiny_text_encoder(len(tokenizer)),
        "tokenizer": tokenizer,
        "unet": tiny_unet(image_size // 8, latent_channels=latent_channels),
        "scheduler": sd_scheduler(),
    }


def load_sd15(
    source: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    config: str | os.PathLike | None = None,
) -> dict:
    """Base components of Stable Diffusion v1.5 from a diffusers folder, a hub id or a
    single-file checkpoint; the scheduler is the paper's DDIM.

    A single file (original layout, e.g. ``v1-5-pruned-emaonly.safetensors``) is read
    offline: its configuration is SD v1.5's, shipped with ``ccis``
    (``ccis.diffusion.sd15``), or ``config``, a diffusers folder whose configurations
    describe the file (tests give narrower widths); the tokenizer is CLIP's, built from
    open_clip's vocabulary file unless ``config`` has one.
    """
    from diffusers import StableDiffusionPipeline

    path = Path(source)
    if path.suffix in (".safetensors", ".ckpt"):
        from ccis.diffusion.sd15 import SD15_CONFIG, clip_tokenizer

        if not path.is_file():
            raise FileNotFoundError(f"{path}: Stable Diffusion checkpoint not found")
        config_dir = Path(config) if config is not None else SD15_CONFIG
        if not (config_dir / "model_index.json").is_file():
            raise FileNotFoundError(f"{config_dir}: not a diffusers folder (no model_index.json)")
        has_tokenizer = (config_dir / "tokenizer" / "vocab.json").is_file()
        extra = {} if has_tokenizer else {"tokenizer": clip_tokenizer()}
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(config_dir), local_files_only=True, dtype=dtype,
                safety_checker=None, feature_extractor=None, **extra,
            )  # fmt: skip
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"{path}: cannot read as a Stable Diffusion v1 checkpoint in the original "
                f"layout with the configuration of {config_dir} ({err})"
            ) from err
    else:
        if path.exists() and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers folder (no model_index.json)")
        pipe = StableDiffusionPipeline.from_pretrained(
            str(source), dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    return {
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "unet": pipe.unet,
        "scheduler": sd_scheduler(),
    }
