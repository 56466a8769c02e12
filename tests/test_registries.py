"""The registries are the one place that names generators and segmenters and owns their
defaults: the schema, the command line and the tables read them, and adding a generator
or a segmenter is one module plus one registry entry."""

from __future__ import annotations

import argparse
import json
import textwrap

import pandas as pd
import pytest
import yaml

from ccis.config import load_schema
from ccis.generator import registry as generators
from ccis.segmentation import registry as segmenters
from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _schema_default(schema: dict, dotted: str):
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node["default"]


def test_schema_names_come_from_the_registries():
    from ccis.data.layouts import LAYOUTS

    schema = load_schema(SCHEMA)
    defs = schema["$defs"]
    assert defs["generator"]["enum"] == list(generators.REGISTRY)
    assert defs["segmenter"]["enum"] == list(segmenters.REGISTRY)
    assert defs["format"]["enum"] == list(LAYOUTS)
    segmentation = schema["properties"]["segmentation"]["properties"]
    for name, entry in segmenters.REGISTRY.items():
        settings = segmentation[name]["properties"]
        assert settings["backbone"]["default"] == entry.backbone
        assert settings["epochs"]["default"] == entry.epochs
        assert settings["weight_decay"]["default"] == entry.weight_decay
        assert settings["drop_path_rate"]["default"] == entry.drop_path_rate
    loss = segmentation["loss"]
    assert loss["enum"] == list(segmenters.LOSSES)
    # The YAML itself lists no generator or segmenter name outside defaults and comments.
    raw = yaml.safe_load(SCHEMA.read_text())
    assert "enum" not in raw["$defs"]["generator"] and "pranet" not in raw["properties"][
        "segmentation"]["properties"]  # fmt: skip


def test_schema_and_library_defaults_agree():
    """Every option that the workflow config and the library both have takes the same
    default in both (the schema owns the workflow's, the library its own). Shapes and
    resolutions differ on purpose: the workflow's default preset is the tiny one, the
    library's the paper's SD v1.5 (model.resolution 64 vs 512, the mask-encoder widths)."""
    from ccis.caption.llama import LlamaCaptioner
    from ccis.caption.stage import caption_manifest
    from ccis.common.arguments import defaults_of
    from ccis.data.phantom import render_phantom
    from ccis.data.prepare import prepare_split
    from ccis.generator.bootstrap import BootstrapSettings
    from ccis.generator.synthesize import synthesize
    from ccis.generator.train import TrainSettings
    from ccis.segmentation.train import train_segmenter

    schema = load_schema(SCHEMA)
    pairs = {
        "data": (prepare_split, ("on_bad_pair", "empty_masks", "max_pixels")),
        "data.phantom": (render_phantom, ("width", "height")),
        "caption": (caption_manifest, ("max_tokens",)),
        "caption.llama": (
            LlamaCaptioner, ("prompt", "n_ctx", "max_new_tokens", "temperature", "retries")),
        "bootstrap": (BootstrapSettings, (
            "vae_steps", "unet_steps", "batch_size", "checkpoint_every", "polyp_weight",
            "latent_channels", "texture_weight", "seed")),
        "train": (TrainSettings, (
            "batch_size", "learning_rate", "gradient_accumulation", "checkpoint_every",
            "validate_every", "empty_prompt_probability", "mixed_precision",
            "gradient_checkpointing", "blur_sigma", "taam_lambda", "lambda_learning_rate",
            "max_grad_norm", "seed")),
        "synthesis": (synthesize, ("steps", "guidance_scale", "batch_size", "seed")),
        "segmentation": (
            train_segmenter, ("batch_size", "size", "scales", "clip", "loss", "soft_masks")),
    }  # fmt: skip
    checked = 0
    for section, (code, keys) in pairs.items():
        library = defaults_of(code)
        for key in keys:
            workflow = _schema_default(schema, f"{section}.{key}")
            value = library[key]
            value = list(value) if isinstance(value, tuple) else value
            assert workflow == value, f"{section}.{key}: schema {workflow!r}, library {value!r}"
            checked += 1
    assert checked == 42


def test_left_out_options_take_the_library_defaults():
    from ccis.cli import build_parser
    from ccis.common.arguments import given, names
    from ccis.generator.commands import TRAIN_OPTIONS
    from ccis.segmentation.commands import TRAIN_OPTIONS as SEGMENTER_OPTIONS

    parser = build_parser()
    args = parser.parse_args(["train-generator", "--generator", "ccis", "--triplets", "t",
                              "--base", "b", "--out", "o", "--work", "w", "--steps", "3"])  # fmt: skip
    assert given(args, names(TRAIN_OPTIONS)) == {}
    args = parser.parse_args(["train-generator", "--generator", "ccis", "--triplets", "t",
                              "--base", "b", "--out", "o", "--work", "w", "--steps", "3",
                              "--blur-sigma", "0.05", "--conditioning-channels", "4,8,8,8"])  # fmt: skip
    assert given(args, names(TRAIN_OPTIONS)) == {"blur_sigma": 0.05}
    assert args.conditioning_channels == (4, 8, 8, 8)
    args = parser.parse_args(["train-segmenter", "--model", "pranet", "--backbone", "x",
                              "--train", "m", "--out", "o", "--work", "w", "--epochs", "1"])  # fmt: skip
    assert given(args, names(SEGMENTER_OPTIONS)) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["train-generator", "--generator", "no_such_generator"])


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown generator 'nope'; known: ccis, controlnet"):
        generators.spec("nope")
    with pytest.raises(ValueError, match="unknown segmenter 'nope'; known: pranet, polyp_pvt"):
        segmenters.segmenter("nope")


# A generator added from outside the package: one module, one registry entry.
GATED_BRANCH = '''
"""ControlNet whose residuals pass through one learned gate per output (starts open)."""

import torch
from diffusers import ControlNetModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from ccis.diffusion.branch import branch_from_unet, derived_signature


def _init(self, *, gate_start=1.0, **kwargs):
    ControlNetModel.__init__(self, **kwargs)
    count = len(self.controlnet_down_blocks) + 1
    self.gates = nn.Parameter(torch.full((count,), float(gate_start)))


_init.__signature__ = derived_signature({"gate_start": 1.0})


class GatedControlNet(ControlNetModel):
    __init__ = register_to_config(_init)

    @classmethod
    def from_unet(cls, unet, *, conditioning_embedding_out_channels=(16, 32, 96, 256),
                  gate_start=1.0):
        return branch_from_unet(
            cls, unet, {"gate_start": gate_start}, ("gates",),
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
        )

    def forward(self, *args, **kwargs):
        down, mid = super().forward(*args, **kwargs)[:2]
        gates = self.gates.to(mid.dtype)
        return [d * g for d, g in zip(down, gates[:-1])], mid * gates[-1]
'''

# A segmenter added from outside the package: one module, one registry entry.
TINY_SEGMENTER = '''
"""A one-level FPN-style head on the stride-8 features (a minimal segmenter)."""

import torch.nn.functional as F
from torch import nn


class StrideEightHead(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.channels[1], 1, 3, padding=1)

    def forward(self, x):
        features = self.backbone(x)[1]
        return [F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear")]

    @staticmethod
    def final_logits(outputs):
        return outputs[-1]
'''


@pytest.fixture
def workspace(triplets, base):
    return {"root": triplets.parents[1], "triplets": triplets, "base": base}


def _module(root, name: str, text: str, monkeypatch) -> None:
    folder = root / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(folder))


def test_a_generator_is_one_module_and_one_registry_entry(workspace, tmp_path, monkeypatch):
    from ccis.generator.synthesize import synthesize
    from ccis.generator.train import TrainSettings, train_branch
    from ccis.metrics.evaluate import generation_metrics
    from ccis.metrics.table import table1

    _module(tmp_path, "gated_branch", GATED_BRANCH, monkeypatch)
    entry = generators.Generator(
        "Gated ControlNet", "Gated", network="gated_branch:GatedControlNet"
    )
    monkeypatch.setitem(generators.REGISTRY, "gated", entry)

    settings = TrainSettings(steps=2, batch_size=2, resolution=32, learning_rate=1e-3)
    branch = train_branch("gated", workspace["triplets"], workspace["base"], tmp_path / "gated",
                          tmp_path / "work", settings, conditioning_channels=(4, 4, 4, 4))  # fmt: skip
    loaded = generators.load_branch(branch)
    assert type(loaded).__name__ == "GatedControlNet" and loaded.gates.requires_grad
    assert not bool((loaded.gates == 1.0).all()), "the gates trained"

    manifest = synthesize("gated", workspace["base"], branch, workspace["triplets"],
                          tmp_path / "syn.parquet", tmp_path / "syn", steps=2, resolution=32,
                          batch_size=3)  # fmt: skip
    frame = pd.read_parquet(manifest)
    assert len(frame) == 8 and frame["id"].str.startswith("synthetic-gated-").all()

    metrics = generation_metrics("gated", manifest, workspace["triplets"], tmp_path / "g.json",
                                 inception_dir=tmp_path, device="cpu")  # fmt: skip
    assert metrics["generator"] == "gated"
    table1([tmp_path / "g.json"], tmp_path / "t1.csv", tmp_path / "t1.md")
    assert "| Gated ControlNet |" in (tmp_path / "t1.md").read_text()


def test_a_segmenter_is_one_module_and_one_registry_entry(workspace, tmp_path, monkeypatch):
    from ccis.cli import main
    from ccis.config import validate_config
    from ccis.segmentation.evaluate import evaluate_segmenter
    from ccis.segmentation.table import table3
    from ccis.segmentation.train import train_segmenter

    _module(tmp_path, "tiny_segmenter", TINY_SEGMENTER, monkeypatch)
    entry = segmenters.Segmenter(
        "Stride-8 head", "tiny_segmenter:StrideEightHead", "adamw", 0.01, 0.0,
        backbone="resnet10t", demo_backbone="resnet10t", epochs=1,
    )  # fmt: skip
    monkeypatch.setitem(segmenters.REGISTRY, "stride8", entry)

    # The schema knows it at once, with its defaults.
    config = {"data": {"splits": [{"name": "train", "role": "train",
                                   "phantom": {"count": 4, "centre": 0}}]},
              "segmentation": {"models": ["stride8"]},
              "metrics": {"fidelity_segmenter": {"model": "stride8"}}}  # fmt: skip
    filled = validate_config(config, SCHEMA)
    assert filled["segmentation"]["stride8"]["weight_decay"] == 0.01

    manifest = workspace["root"] / "data" / "train.parquet"
    out = train_segmenter("stride8", "resnet10t", [manifest], tmp_path / "model",
                          tmp_path / "work", epochs=1, batch_size=3, size=64, scales=(1.0,))  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["weight_decay"] == 0.01
    parquet = evaluate_segmenter(out, {"kvasir": manifest}, tmp_path / "e.parquet", "stride8",
                                 "real", 0)  # fmt: skip
    table3([parquet], tmp_path / "t3.csv", tmp_path / "t3.md", paper=False)
    assert "| Stride-8 head |" in (tmp_path / "t3.md").read_text()
    # The command line offers it too.
    assert main(["train-segmenter", "--model", "stride8", "--backbone", "resnet10t",
                 "--train", str(manifest), "--out", str(tmp_path / "cli"), "--work",
                 str(tmp_path / "cli-work"), "--epochs", "1", "--size", "64", "--scales", "1",
                 "--batch-size", "3"]) == 0  # fmt: skip


def test_argument_helpers():
    from ccis.common.arguments import channels, defaults_of

    assert channels("4, 8,16") == (4, 8, 16)
    for bad in ("", "4,x", "0,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            channels(bad)

    def f(a, b=2, *, c="x"):
        return a

    assert defaults_of(f) == {"b": 2, "c": "x"}
