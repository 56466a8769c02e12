"""PVT-CASCADE, the third segmenter: its decoder as the reference builds it, every stage
trained and used at test time, and a short run through the command line to Table 3."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from ccis.cli import main
from ccis.config import load_schema, validate_config
from ccis.segmentation.cascade import CASCADE, AttentionGate
from ccis.segmentation.loss import structure_loss
from ccis.segmentation.models import build_segmenter
from ccis.segmentation.registry import REGISTRY
from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _reference_decoder_parameters(c32: int, c16: int, c8: int, c4: int) -> int:
    """Parameters of SLDGroup/CASCADE's decoder (lib/decoders.py) and its four 1×1 heads
    (lib/networks.py), counted from the reference's layer list: biased convolutions in the
    decoder, bias-free CBAM layers, one spatial attention for the four stages."""

    def conv(i, o, k, bias=True):
        return i * o * k * k + (o if bias else 0)

    def bn(c):
        return 2 * c

    def conv_block(i, o):  # two conv3×3 + BN (+ ReLU)
        return conv(i, o, 3) + bn(o) + conv(o, o, 3) + bn(o)

    def up_conv(i, o):  # upsample, conv3×3 + BN (+ ReLU)
        return conv(i, o, 3) + bn(o)

    def gate(g, x, inner):  # W_g, W_x (1×1 + BN), psi (1×1 + BN)
        return (
            conv(g, inner, 1)
            + bn(inner)
            + conv(x, inner, 1)
            + bn(inner)
            + conv(inner, 1, 1)
            + bn(1)
        )

    def channel_attention(c):  # fc1, fc2 without bias, ratio 16
        return conv(c, c // 16, 1, False) + conv(c // 16, c, 1, False)

    decoder = (
        conv(c32, c32, 1) + conv_block(c32, c32)
        + up_conv(c32, c16) + gate(c16, c16, c8) + conv_block(2 * c16, c16)
        + up_conv(c16, c8) + gate(c8, c8, c4) + conv_block(2 * c8, c8)
        + up_conv(c8, c4) + gate(c4, c4, 32) + conv_block(2 * c4, c4)
        + channel_attention(c32) + channel_attention(2 * c16) + channel_attention(2 * c8)
        + channel_attention(2 * c4)
        + conv(2, 1, 7, False)  # the shared spatial attention
    )  # fmt: skip
    heads = sum(conv(c, 1, 1) for c in (c32, c16, c8, c4))
    return decoder + heads


def test_decoder_has_the_reference_layers_at_pvt_v2_b2_shape():
    decoder = CASCADE([512, 320, 128, 64])
    heads = sum(c + 1 for c in (512, 320, 128, 64))
    assert _count(decoder) + heads == _reference_decoder_parameters(512, 320, 128, 64)
    assert _count(decoder) + heads == 10_422_927  # + PVTv2-b2's 24.85M = 35.27M
    # One spatial attention serves the four stages, as in the reference.
    assert sum(isinstance(m, type(decoder.spatial_attention)) for m in decoder.modules()) == 1


def test_four_outputs_at_the_input_size_and_their_sum_at_test_time():
    torch.manual_seed(0)
    net = build_segmenter("pvt_cascade", "pvt_v2_b0").eval()
    with torch.no_grad():
        outputs = net(torch.randn(2, 3, 64, 96))
        odd = net(torch.randn(1, 3, 72, 72))  # not a multiple of 32
    assert len(outputs) == 4 and all(o.shape == (2, 1, 64, 96) for o in outputs)
    assert all(o.shape == (1, 1, 72, 72) for o in odd)
    # Additive aggregation: the test-time logits are the sum of the four stages' maps.
    assert torch.equal(net.final_logits(outputs), outputs[0] + outputs[1] + outputs[2] + outputs[3])
    assert all(not torch.allclose(a, b) for a, b in zip(outputs, outputs[1:], strict=False))


def test_gradients_reach_every_decoder_stage_and_head():
    torch.manual_seed(0)
    net = build_segmenter("pvt_cascade", "pvt_v2_b0").train()
    x = torch.randn(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float()
    sum(structure_loss(o, mask, form="reference") for o in net(x)).backward()
    for name, param in [*net.decoder.named_parameters(), *net.heads.named_parameters()]:
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    assert all(p.grad is not None for p in net.backbone.parameters() if p.requires_grad)


def test_attention_gate_weighs_the_skip_by_the_gating_signal():
    torch.manual_seed(0)
    gate = AttentionGate(8, 8, 4).eval()
    skip = torch.randn(1, 8, 6, 6)
    first = gate(torch.randn(1, 8, 6, 6), skip)
    second = gate(torch.randn(1, 8, 6, 6), skip)
    assert first.shape == skip.shape and not torch.allclose(first, second)
    ratio = first / skip  # one weight in (0, 1) per pixel, shared by the channels
    assert bool(((ratio > 0) & (ratio < 1)).all())
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)


def test_reference_training_defaults_in_registry_schema_and_paper_config():
    entry = REGISTRY["pvt_cascade"]
    assert (entry.optimizer, entry.weight_decay, entry.drop_path_rate) == ("adamw", 1e-4, 0.1)
    assert (entry.backbone, entry.epochs, entry.learning_rate) == ("pvt_v2_b2", 99, 1e-4)
    settings = load_schema(SCHEMA)["properties"]["segmentation"]["properties"]["pvt_cascade"]
    assert settings["properties"]["epochs"]["default"] == 99
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert "pvt_cascade" in paper["segmentation"]["models"]
    assert paper["segmentation"]["pvt_cascade"]["backbone"] == "pvt_v2_b2"
    # The CPU demo keeps two segmenters (its 10-minute budget).
    demo = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), SCHEMA)
    assert "pvt_cascade" not in demo["segmentation"]["models"]
    assert demo["segmentation"]["pvt_cascade"]["weight_decay"] == 1e-4  # schema default


def test_short_training_through_the_cli_then_evaluation_and_table3(tmp_path):
    from ccis.data.prepare import PhantomSpec, prepare_split

    train = prepare_split("train", tmp_path / "data", phantom=PhantomSpec(8, 0, 2, 96, 80))
    test = prepare_split("kvasir", tmp_path / "data", phantom=PhantomSpec(3, 1, 2, 96, 80))
    model = tmp_path / "model"
    assert main(["train-segmenter", "--model", "pvt_cascade", "--backbone", "pvt_v2_b0",
                 "--train", str(train), "--out", str(model), "--work", str(tmp_path / "work"),
                 "--epochs", "3", "--learning-rate", "1e-3", "--batch-size", "4", "--size", "64",
                 "--scales", "1", "--seed", "0", "--threads", "1"]) == 0  # fmt: skip
    config = json.loads((model / "config.json").read_text())
    assert config["model"] == "pvt_cascade" and config["optimizer"] == "adamw"
    assert config["weight_decay"] == 1e-4 and config["drop_path_rate"] == 0.1  # its defaults
    losses = pd.read_csv(model / "loss.csv")["loss"].tolist()
    assert len(losses) == 3 and losses[-1] < losses[0]

    scores = tmp_path / "per_image.parquet"
    assert main(["evaluate-segmenter", "--model-dir", str(model), "--test", f"kvasir={test}",
                 "--out", str(scores), "--model", "pvt_cascade", "--setting", "real",
                 "--seed", "0"]) == 0  # fmt: skip
    rows = pd.read_parquet(scores)
    assert len(rows) == 3 and rows["mdice"].between(0, 1).all()
    md = tmp_path / "t3.md"
    assert main(["segmentation-table", "--out-csv", str(tmp_path / "t3.csv"), "--out-md",
                 str(md), "--paper", str(scores)]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "t3.csv")
    assert table.loc[0, "paper_mdice"] == pytest.approx(92.58)  # CASCADE paper, Kvasir
    text = md.read_text()
    assert "| PVT-CASCADE |" in text and "(92.6)" in text and "(87.8)" in text
    assert "PVT-CASCADE: the CASCADE paper (Rahman & Marculescu, WACV 2023)" in text
