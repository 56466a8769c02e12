"""Downstream segmentation: metrics, networks, backbone weights, training, resume, tables."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ccis.data.manifest import write_manifest
from ccis.segmentation.backbones import create_backbone
from ccis.segmentation.data import SegmentationData, scale_sizes
from ccis.segmentation.evaluate import evaluate_segmenter
from ccis.segmentation.loss import boundary_weights, structure_loss
from ccis.segmentation.metrics import (
    binary_scores,
    image_scores,
    quantize_prediction,
    threshold_curves,
)
from ccis.segmentation.models import build_segmenter
from ccis.segmentation.predict import load_segmenter, predict_probabilities
from ccis.segmentation.registry import REGISTRY as SEGMENTERS
from ccis.segmentation.table import table3
from ccis.segmentation.train import train_segmenter

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- metrics


def test_threshold_metrics_match_a_hand_computed_example():
    pred = np.array([[0, 128, 255], [255, 0, 64]], np.uint8)
    gt = np.array([[0, 255, 255], [255, 0, 0]], np.uint8)
    dice, iou = threshold_curves(pred, gt)
    # k = 0: all six pixels positive (tp 3, fp 3); k = 1…64: + the 64 pixel (tp 3, fp 1);
    # k = 65…128: exactly the truth; k = 129…255: only the two 255s (tp 2, fn 1).
    want_dice = (2 / 3 + 64 * 6 / 7 + 64 * 1 + 127 * 4 / 5) / 256
    want_iou = (1 / 2 + 64 * 3 / 4 + 64 * 1 + 127 * 2 / 3) / 256
    assert dice.shape == iou.shape == (256,)
    assert dice.mean() == pytest.approx(want_dice, abs=1e-12)
    assert iou.mean() == pytest.approx(want_iou, abs=1e-12)
    # Min–max normalisation: the same map shifted and squeezed scores the same.
    squeezed = (pred.astype(int) // 5 + 40).astype(np.uint8)
    assert threshold_curves(squeezed, gt)[0].mean() == pytest.approx(
        threshold_curves(((squeezed.astype(int) - 40) * 5).astype(np.uint8), gt)[0].mean()
    )


def test_metric_edge_cases_follow_the_matlab_rule():
    empty = np.zeros((4, 4), np.uint8)
    # Both empty: no intersection at any threshold -> 0 (MATLAB and pysodmetrics).
    assert threshold_curves(empty, empty)[0].max() == 0
    assert binary_scores(np.zeros((4, 4)), empty) == (0.0, 0.0)
    full = np.full((4, 4), 255, np.uint8)
    # A constant map is left as it is by mapminmax: 255 passes every threshold.
    dice, iou = threshold_curves(full, full)
    assert dice.min() == iou.min() == 1
    assert binary_scores(np.full((4, 4), 0.5), full) == (1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        threshold_curves(empty, np.zeros((3, 4), np.uint8))


def _blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    noise = rng.random((h, w)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def test_metrics_agree_with_pysodmetrics():
    from py_sod_metrics import DICEHandler, FmeasureV2, IOUHandler

    rng = np.random.default_rng(0)
    sod = FmeasureV2(
        {
            "dice": DICEHandler(with_dynamic=True, with_adaptive=False),
            "iou": IOUHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    ours = []
    for _ in range(6):
        h, w = rng.integers(20, 60, 2)
        gt = np.where(_blobs(rng, h, w) > 0.5, 255, 0).astype(np.uint8)
        prob = 1 / (1 + np.exp(-8 * (_blobs(rng, h, w) - 0.5) - 4 * (gt > 0)))
        ours.append(image_scores(prob, gt))
        sod.step(quantize_prediction(prob), gt)
    results = sod.get_results()
    mdice = np.mean([s["mdice"] for s in ours])
    miou = np.mean([s["miou"] for s in ours])
    # pysodmetrics floors pred·255 in floating point; the exact integer rule differs at
    # most on pixels lying exactly on a threshold.
    assert mdice == pytest.approx(results["dice"]["dynamic"].mean(), abs=2e-3)
    assert miou == pytest.approx(results["iou"]["dynamic"].mean(), abs=2e-3)
    assert 0.3 < mdice < 1


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("model", ["pranet", "polyp_pvt"])
@pytest.mark.parametrize("backbone", sorted({s.demo_backbone for s in SEGMENTERS.values()}))
def test_network_outputs_have_the_input_size(model, backbone):
    torch.manual_seed(0)
    net = build_segmenter(model, backbone).eval()
    with torch.no_grad():
        outputs = net(torch.randn(2, 3, 64, 96))
        odd = net(torch.randn(1, 3, 72, 72))  # not a multiple of 32
    assert len(outputs) == (4 if model == "pranet" else 2)
    assert all(o.shape == (2, 1, 64, 96) for o in outputs)
    assert all(o.shape == (1, 1, 72, 72) for o in odd)
    assert net.final_logits(outputs).shape == (2, 1, 64, 96)


def test_paper_backbones_build_with_their_channels():
    assert create_backbone("res2net50d").channels == [256, 512, 1024, 2048]
    pvt = create_backbone("pvt_v2_b2", drop_path_rate=0.1)
    assert pvt.channels == [64, 128, 320, 512]
    assert [f.shape[1] for f in pvt(torch.randn(1, 3, 64, 64))] == [64, 128, 320, 512]
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_backbone("no_such_net")


@pytest.mark.parametrize("name,suffix", [("res2net50d", ".safetensors"), ("pvt_v2_b2", ".pth")])
def test_backbone_loads_exactly_the_weights_of_a_local_file(tmp_path, name, suffix):
    torch.manual_seed(123)
    source = timm.create_model(name, pretrained=False)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    loaded = create_backbone(name, pretrained_file=path).body.state_dict()
    assert loaded
    for key, value in loaded.items():
        # features_only flattens sequential containers: stages.0.x becomes stages_0.x.
        source_key = key if key in state else re.sub(r"^(\w+)_(\d+)\.", r"\1.\2.", key)
        assert torch.equal(value, state[source_key]), key
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_backbone(name, pretrained_file=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match="wrong.safetensors"):
        create_backbone(name, pretrained_file=wrong)


# ---------------------------------------------------------------- loss


def test_structure_loss_weights_the_bce_term():
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 10:25, 12:30] = 1
    logits = torch.randn(1, 1, 40, 40)
    weights = boundary_weights(mask)
    reference = 1 + 5 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    assert torch.allclose(weights, reference, atol=1e-6)
    # Hand-written weighted form.
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    prob = torch.sigmoid(logits)
    inter, union = (prob * mask * weights).sum(), ((prob + mask) * weights).sum()
    want = (weights * bce).sum() / weights.sum() + 1 - (inter + 1) / (union - inter + 1)
    assert structure_loss(logits, mask).item() == pytest.approx(want.item(), rel=1e-6)
    # Up-weighting one background pixel with a large BCE moves the BCE term (the
    # references' ``reduce='none'`` would not); the IoU term alone cannot explain it.
    logits2 = logits.clone()
    logits2[0, 0, 0, 0] = 8.0  # confident false positive far from the polyp
    heavier = weights.clone()
    heavier[0, 0, 0, 0] = 50.0
    bce2 = F.binary_cross_entropy_with_logits(logits2, mask, reduction="none")
    wbce_light = (weights * bce2).sum() / weights.sum()
    wbce_heavy = (heavier * bce2).sum() / heavier.sum()
    assert wbce_heavy > wbce_light + 0.05
    diff = structure_loss(logits2, mask, heavier) - structure_loss(logits2, mask, weights)
    assert diff.item() > 0.05


def test_reference_structure_loss_is_what_the_released_code_computes():
    torch.manual_seed(1)
    mask = torch.zeros(2, 1, 40, 40)
    mask[0, :, 10:25, 12:30] = 1
    mask[1, :, 5:15, 5:15] = 1
    logits = torch.randn(2, 1, 40, 40)
    weights = boundary_weights(mask)
    # The references' arithmetic, step by step: reduce='none' is truthy, so the BCE is one
    # mean over the batch, and "weighting" that scalar leaves it unchanged.
    wbce = F.binary_cross_entropy_with_logits(logits, mask, reduce="none")
    wbce = (weights * wbce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = ((prob * mask) * weights).sum(dim=(2, 3))
    union = ((prob + mask) * weights).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    want = (wbce + wiou).mean()
    got = structure_loss(logits, mask, form="reference")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # Its BCE ignores the boundary weights, the weighted form does not.
    assert structure_loss(logits, mask, weights * 0 + 1, "reference") != pytest.approx(
        structure_loss(logits, mask, weights * 0 + 1, "weighted").item() + 1)  # fmt: skip
    heavier = weights.clone()
    heavier[:, :, 0, 0] = 50.0
    logits[:, :, 0, 0] = 8.0
    for form, moves in (("reference", False), ("weighted", True)):
        delta = structure_loss(logits, mask, heavier, form) - structure_loss(
            logits, mask, weights, form
        )
        assert (abs(delta.item()) > 0.05) == moves, form
    with pytest.raises(ValueError, match="unknown structure-loss form 'dice'"):
        structure_loss(logits, mask, form="dice")


# ---------------------------------------------------------------- data, training, resume


def _write_micro_set(folder: Path, count: int, seed: int, split: str) -> Path:
    """Tiny frames: reddish discs (the polyps) on a textured pink background."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        h, w = 40, 48
        image = np.empty((h, w, 3), np.uint8)
        image[...] = (170, 90, 80)
        image = np.clip(image + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        cx, cy, r = int(rng.integers(12, 36)), int(rng.integers(12, 28)), int(rng.integers(5, 10))
        cv2.circle(mask, (cx, cy), r, 255, -1)
        image[mask > 0] = (image[mask > 0] * [1.2, 0.5, 0.5]).clip(0, 255).astype(np.uint8)
        stem = f"{split}-{i:03d}"
        for sub, array in (("images", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), ("masks", mask)):
            (folder / split / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / split / sub / f"{stem}.png"), array)
        rows.append(dict(id=stem, source="micro", split=split, image=f"{split}/images/{stem}.png",
                         mask=f"{split}/masks/{stem}.png", width=w, height=h))  # fmt: skip
    return write_manifest(rows, folder / f"{split}.parquet")


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("micro")
    return {
        "train": _write_micro_set(folder, 8, 0, "train"),
        "test": _write_micro_set(folder, 4, 1, "test"),
        "folder": folder,
    }


TRAIN_KW = dict(batch_size=4, size=64, scales=(0.5, 1.0), clip=0.5, seed=3, threads=1)


def test_data_reads_manifests_with_antialiased_soft_or_binary_masks(micro, tmp_path):
    data = SegmentationData([micro["train"], micro["test"]], 64)
    assert len(data) == 12 and data.images.shape == (12, 64, 64, 3)
    images, masks = data.batch(np.array([0, 3]))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 1, 64, 64)
    # Soft masks, as the references' ToTensor of a resized mask: edge pixels in (0, 1).
    assert float(masks.min()) == 0 and float(masks.max()) == 1
    assert bool(((masks > 0) & (masks < 1)).any())
    binary = SegmentationData([micro["train"]], 64, soft_masks=False)
    assert set(np.unique(binary.batch(np.arange(8))[1].numpy())) == {0.0, 1.0}
    # Shrinking is antialiased (PIL's bilinear widens its kernel): a 1-pixel checkerboard
    # averages to grey, where a plain bilinear sample would keep full contrast.
    from ccis.common.images import resize_antialiased

    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = resize_antialiased(board, 16).astype(float)
    assert small.std() < 10 and abs(small.mean() - 127.5) < 10
    assert scale_sizes(352, [0.75, 1, 1.25]) == [256, 352, 448]
    bad = write_manifest(
        [dict(id="x", source="s", split="s", image="nope.png", mask="nope_mask.png")],
        tmp_path / "bad.parquet",
    )
    with pytest.raises(ValueError, match="nope.png"):
        SegmentationData([bad], 64)


def test_step_matched_repeat_doubles_the_steps_of_an_epoch(micro, tmp_path):
    from ccis.config import segmentation_settings, setting_repeat

    kw = dict(TRAIN_KW, scales=(1.0,))
    configs = [
        json.loads((train_segmenter("pranet", "resnet10t", [micro["train"]], tmp_path / f"m{r}",
                                    tmp_path / f"w{r}", epochs=1, repeat=r, **kw)
                    / "config.json").read_text())
        for r in (1, 2)
    ]  # fmt: skip
    assert configs[0]["train_pairs"] == configs[1]["train_pairs"] == 8
    assert configs[1]["steps_per_epoch"] == 2 * configs[0]["steps_per_epoch"] == 4
    assert configs[1]["repeat"] == 2
    config = {"generators": ["ccis", "controlnet"],
              "segmentation": {"synthetic": ["ccis"], "step_matched": True}}  # fmt: skip
    assert segmentation_settings(config) == ["real", "real_x2", "real+ccis"]
    assert [setting_repeat(s) for s in segmentation_settings(config)] == [1, 2, 1]
    config["segmentation"]["step_matched"] = False
    assert segmentation_settings(config) == ["real", "real+ccis"]
    config["segmentation"].update(synthetic=[], step_matched=True)
    assert segmentation_settings(config) == ["real"]  # nothing to match


def test_training_lowers_the_loss_and_the_model_predicts_and_evaluates(micro, tmp_path):
    out = train_segmenter(
        "pranet", "resnet10t", [micro["train"]], tmp_path / "model", tmp_path / "work",
        epochs=3, learning_rate=1e-3, **TRAIN_KW,
    )  # fmt: skip
    losses = pd.read_csv(out / "loss.csv")["loss"].tolist()
    assert len(losses) == 3 and losses[-1] < losses[0]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "pranet" and config["size"] == 64 and config["epochs"] == 3
    assert config["optimizer"] == "adam" and config["train_pairs"] == 8

    model = load_segmenter(out)
    images = [np.zeros((40, 48, 3), np.uint8), np.full((30, 70, 3), 200, np.uint8)]
    probs = predict_probabilities(model, images, 64, batch_size=1)
    assert [p.shape for p in probs] == [(40, 48), (30, 70)]
    assert all(p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1 for p in probs)

    parquet = evaluate_segmenter(
        out, {"cvc300": micro["test"], "centre9": micro["test"]}, tmp_path / "m.parquet",
        "pranet", "real", 3,
    )  # fmt: skip
    rows = pd.read_parquet(parquet)
    assert list(rows.columns) == [
        "model", "setting", "seed", "test_set", "id", "mdice", "miou", "dice", "iou"
    ]  # fmt: skip
    assert len(rows) == 8 and rows["mdice"].between(0, 1).all()

    # A second seed (same numbers shifted) to check mean ± std and the paper column.
    other = rows.assign(seed=4, mdice=rows["mdice"] * 0.5)
    other.to_parquet(tmp_path / "m4.parquet")
    from ccis.cli import main

    code = main(["segmentation-table", "--out-csv", str(tmp_path / "t.csv"), "--out-md",
                 str(tmp_path / "t.md"), "--paper", str(parquet), str(tmp_path / "m4.parquet")])  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "t.csv")
    cvc = table[table.test_set == "cvc300"].iloc[0]
    assert cvc["seeds"] == 2 and cvc["paper_mdice"] == 86.1 and cvc["paper_miou"] == 79.1
    per_seed = [100 * rows[rows.test_set == "cvc300"]["mdice"].mean() * f for f in (1, 0.5)]
    assert cvc["mdice_mean"] == pytest.approx(np.mean(per_seed), abs=1e-3)
    assert cvc["mdice_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-3)
    assert pd.isna(table[table.test_set == "centre9"].iloc[0]["paper_mdice"])
    markdown = (tmp_path / "t.md").read_text()
    assert "| PraNet |" in markdown and "(86.1)" in markdown and "EndoScene mDice" in markdown

    table3([parquet], tmp_path / "one.csv", tmp_path / "one.md", paper=False)
    assert "± –" in (tmp_path / "one.md").read_text()


_KILLER = """
import os, signal, sys
import ccis.segmentation.train as train
saved = train.save_checkpoint
def save_then_die(*args, **kwargs):
    path = saved(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # killed right after the first checkpoint
    return path
train.save_checkpoint = save_then_die
train.train_segmenter("polyp_pvt", "pvt_v2_b0", [sys.argv[1]], sys.argv[2], sys.argv[3],
                      epochs=2, learning_rate=1e-3, batch_size=4, size=64, scales=(0.5, 1.0),
                      clip=0.5, seed=3, threads=1)
"""

# SIGTERM (a SLURM preemption) on the first batch of epoch 2 (the 5th loss evaluation: two
# batches of two scales an epoch), through the ``ccis`` command and its exit code.
_TERMINATOR = """
import os, signal, sys
import ccis.segmentation.train as train
from ccis.cli import main
weights, calls = train.boundary_weights, []
def weights_then_term(*args):
    calls.append(1)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    return weights(*args)
train.boundary_weights = weights_then_term
sys.exit(main(["train-segmenter", "--model", "polyp_pvt", "--backbone", "pvt_v2_b0",
               "--train", sys.argv[1], "--out", sys.argv[2], "--work", sys.argv[3],
               "--epochs", "2", "--learning-rate", "1e-3", "--batch-size", "4", "--size", "64",
               "--scales", "0.5,1.0", "--clip", "0.5", "--seed", "3", "--threads", "1"]))
"""


def test_killed_and_preempted_runs_resume_to_the_same_weights(micro, tmp_path, caplog):
    from ccis.common.preemption import PREEMPTED_EXIT

    kw = dict(TRAIN_KW, learning_rate=1e-3)
    train_segmenter("polyp_pvt", "pvt_v2_b0", [micro["train"]], tmp_path / "ref",
                    tmp_path / "ref-work", epochs=2, **kw)  # fmt: skip
    straight = load_file(tmp_path / "ref" / "model.safetensors")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Checkpoints count batches: 8 pairs in batches of 4 are 2 a epoch.
    for script, code, step in ((_KILLER, -signal.SIGKILL, 2), (_TERMINATOR, PREEMPTED_EXIT, 3)):
        out, work = tmp_path / f"out{step}", tmp_path / f"work{step}"
        proc = subprocess.run([sys.executable, "-c", script, str(micro["train"]), str(out),
                               str(work)], env=env, capture_output=True)  # fmt: skip
        assert proc.returncode == code, proc.stderr.decode()[-2000:]
        assert (work / "checkpoints" / f"checkpoint-{step}" / "complete").is_file()
        assert not out.exists()
        if step == 3:
            assert "stopped on SIGTERM" in proc.stderr.decode()
            assert "Traceback" not in proc.stderr.decode()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ccis"):
            train_segmenter("polyp_pvt", "pvt_v2_b0", [micro["train"]], out, work, epochs=2,
                            **kw)  # fmt: skip
        assert f"(step {step})" in caplog.text
        assert pd.read_csv(out / "loss.csv")["epoch"].tolist() == [1, 2]
        resumed = load_file(out / "model.safetensors")
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), step
    # The mid-epoch resume also kept the epoch's losses so far: the same loss log.
    losses = [pd.read_csv(tmp_path / name / "loss.csv")["loss"] for name in ("out3", "ref")]
    assert losses[0].tolist() == losses[1].tolist()


def test_nan_loss_stops_the_segmenter_before_its_checkpoint(micro, tmp_path, monkeypatch):
    import ccis.segmentation.train as train
    from ccis.common.divergence import Diverged

    loss, calls = train.structure_loss, []

    def nan_in_epoch_2(*args):
        calls.append(1)
        value = loss(*args)
        return value * float("nan") if len(calls) > 8 else value  # 4 maps, 2 batches an epoch

    monkeypatch.setattr(train, "structure_loss", nan_in_epoch_2)
    with pytest.raises(Diverged, match=r"epoch 2, batch 1\) diverged at step 3: the loss is nan"):
        train_segmenter("pranet", "resnet10t", [micro["train"]], tmp_path / "out",
                        tmp_path / "work", epochs=2, **dict(TRAIN_KW, scales=(1.0,)))  # fmt: skip
    assert [p.name for p in (tmp_path / "work" / "checkpoints").iterdir()] == ["checkpoint-2"]
    assert pd.read_csv(tmp_path / "work" / "loss.csv")["epoch"].tolist() == [1]


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_segmenter(tmp_path)
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_segmenter("unet", "resnet10t")
    from ccis.cli import main

    assert main(["evaluate-segmenter", "--model-dir", str(tmp_path), "--test",
                 f"a={tmp_path / 'x.parquet'}", "--out", str(tmp_path / "o.parquet"),
                 "--model", "pranet", "--setting", "real", "--seed", "0"]) == 2  # fmt: skip
    # Several runs in one process: each run's folder, output, setting and seed, in order.
    assert main(["evaluate-segmenter", "--model-dir", str(tmp_path), "--model-dir", str(tmp_path),
                 "--test", f"a={tmp_path / 'x.parquet'}", "--out", str(tmp_path / "o.parquet"),
                 "--model", "pranet", "--setting", "real", "--seed", "0"]) == 2  # fmt: skip
