"""Stable Diffusion v1.5's shape offline: the shipped configurations are SD v1.5's, CLIP's
tokenizer built from open_clip's vocabulary file tokenizes as CLIP does, and a single
file in the original layout loads, with the network unreachable, to the same weights as
the diffusers folder (an SD v1.5-shaped configuration with narrow widths)."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch

from ccis.diffusion.presets import load_sd15
from ccis.diffusion.sd15 import SD15_CONFIG, clip_tokenizer, save_sd15_shaped, sd15_shaped

PROMPTS = [
    "The polyp is pink, round, smooth-textured, and slightly swollen.",
    "a LARGE lobulated polyp at the upper-left; debris & highlights (2 polyps)",
    "",
]


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails (the Hub included)."""

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _narrow_config(folder):
    """SD v1.5's configuration folder with narrow widths (same blocks, same layout)."""
    shutil.copytree(SD15_CONFIG, folder)
    narrow = {
        "unet/config.json": {"block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8,
                             "cross_attention_dim": 32},
        "vae/config.json": {"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8},
        "text_encoder/config.json": {"hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "projection_dim": 32},
    }  # fmt: skip
    for name, changes in narrow.items():
        config = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**config, **changes}))
    return folder


def test_shipped_configs_are_stable_diffusion_v1_5():
    """Built on the meta device: SD v1.5's published parameter counts."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        parts = sd15_shaped(config_dir=SD15_CONFIG)
    counts = {name: sum(p.numel() for p in parts[name].parameters())
              for name in ("unet", "vae", "text_encoder")}  # fmt: skip
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert parts["unet"].config.cross_attention_dim == parts["text_encoder"].config.hidden_size


def test_clip_tokenizer_from_open_clips_file_tokenizes_as_clip(offline):
    from open_clip.tokenizer import SimpleTokenizer

    ours = clip_tokenizer()
    assert len(ours) == 49408 and ours.model_max_length == 77
    reference = SimpleTokenizer()(PROMPTS, context_length=77)  # OpenAI's BPE, 0-padded
    tokens = ours(PROMPTS, padding="max_length", max_length=77, truncation=True)
    for ids, mask, expected in zip(tokens.input_ids, tokens.attention_mask, reference,
                                   strict=True):  # fmt: skip
        real = sum(mask)
        assert ids[:real] == expected[:real].tolist()
        assert set(expected[real:].tolist()) == {0}
        # SD v1.5 pads with the end token; the attention mask tells padding apart (TAAM).
        assert ids[0] == 49406 and ids[real - 1] == 49407 and set(ids[real:]) <= {49407}


def test_single_file_loads_offline_with_the_folders_weights(tmp_path, offline):
    config = _narrow_config(tmp_path / "config")
    folder, single = save_sd15_shaped(tmp_path / "base", seed=3, config_dir=config)
    from safetensors import safe_open

    with safe_open(single, "pt") as handle:
        keys = set(handle.keys())
        # The original layout, by names a real v1-5-pruned file has.
        assert handle.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight").ndim == 4
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in keys, key

    from_folder = load_sd15(folder)
    from_file = load_sd15(single, config=config)  # the tokenizer from open_clip's file
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = from_folder[name].state_dict(), from_file[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), f"{name}: {key}"
    assert from_file["tokenizer"](PROMPTS).input_ids == from_folder["tokenizer"](PROMPTS).input_ids
    assert type(from_file["scheduler"]).__name__ == "DDIMScheduler"

    # The same file with SD v1.5's own configuration: a clear error naming the file.
    with pytest.raises(ValueError, match="sd15.safetensors: cannot read as a Stable Diffusion"):
        load_sd15(single)
