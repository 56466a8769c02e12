"""External synthetic sets: another tool's image–mask folder, imported through the same
importers and bad-input rules as real data, scored in Table 1 and added to the real
training set as the Table 3 setting real+<name>."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ccis.cli import main
from ccis.config import ConfigError, segmentation_settings, validate_config
from ccis.data.phantom import render_phantom
from ccis.data.prepare import DatasetError, SourceSpec, prepare_split
from ccis.metrics.evaluate import EXTERNAL_REASONS, generation_metrics
from conftest import REPO, frame, planned_jobs, save, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


class MeanColour(torch.nn.Module):
    """A fixed 12-feature FID extractor (mean colour per quadrant): no Inception offline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)


def _peer_set(root, count: int = 4, stray: bool = True):
    """A folder as another generator writes it: images/ + masks/, phantom frames."""
    for i in range(count):
        sample = render_phantom(11, 1, i, 96, 80)
        save(root / "images" / f"sample_{i:03d}.png", sample.image)
        save(root / "masks" / f"sample_{i:03d}.png", sample.mask)
    if stray:
        (root / "images" / "prompts.txt").write_text("a polyp\n")  # left out, logged
    return root


def _config(**external) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["external_synthetic"] = [
        {"name": "peer", "root": "peer_set", "format": "image-mask", **external}
    ]
    return config


def test_config_entry_is_validated_and_adds_a_setting(tmp_path):
    (tmp_path / "peer_set").mkdir()
    config = validate_config(_config(label="Peer tool"), SCHEMA, workdir=tmp_path)
    assert config["external_synthetic"][0]["label"] == "Peer tool"
    config["segmentation"]["synthetic"] = None  # every generator and every external set
    assert segmentation_settings(config)[-1] == "real+peer"
    config["segmentation"]["synthetic"] = ["peer"]
    assert segmentation_settings(config) == ["real", "real_x2", "real+peer"]
    assert validate_config(_config(), SCHEMA, workdir=tmp_path)  # label is optional

    def problems(config: dict, workdir=tmp_path) -> str:
        with pytest.raises(ConfigError) as info:
            validate_config(config, SCHEMA, workdir=workdir)
        return str(info.value)

    assert "external_synthetic[0].root: folder 'peer_set' (image-mask) does not exist" in (
        problems(_config(), workdir=tmp_path / "elsewhere")
    )
    assert "'ccis' is a generator's name" in problems(
        {
            **_config(),
            "external_synthetic": [{"name": "ccis", "root": "peer_set", "format": "image-mask"}],
        }  # fmt: skip
    )
    twice = _config()
    twice["external_synthetic"] *= 2
    assert "external set 'peer' is defined twice" in problems(twice)
    assert "external_synthetic[0].format: 'folder' is not one of" in problems(
        _config(format="folder")
    )
    assert "external_synthetic[0].name: 'Peer' does not match" in problems(_config(name="Peer"))
    unknown = _config()
    unknown["segmentation"]["synthetic"] = ["nope"]
    assert "segmentation.synthetic: 'nope' is neither in generators nor an external" in (
        problems(unknown)
    )


def test_import_uses_the_importers_and_bad_input_rules(tmp_path, caplog):
    root = _peer_set(tmp_path / "peer_set")
    save(root / "images" / "odd.png", frame(48, 40))
    save(root / "masks" / "odd.png", np.zeros((20, 20), np.uint8))  # not the image's size
    source = SourceSpec("image-mask", root, "peer")
    with pytest.raises(
        DatasetError, match=r"masks/odd\.png: mask is 20×20 but its image odd\.png is 48×40"
    ):
        prepare_split("peer", tmp_path / "external", sources=[source])
    assert not (tmp_path / "external" / "peer.parquet").exists()
    manifest = prepare_split(
        "peer", tmp_path / "external", sources=[source], on_bad_pair="skip"
    )  # the rule's data.on_bad_pair, as for a real split
    table = pd.read_parquet(manifest)
    assert sorted(table["id"]) == [f"peer-sample_{i:03d}" for i in range(4)]
    assert "prompts.txt" in caplog.text  # a stray file is named, not imported


def test_table1_and_table3_rows_of_an_imported_set(triplets, tmp_path):
    """Import a peer's folder with `ccis prepare`, score it (Table 1) and train PraNet on
    real and on real + it (Table 3), all through the commands the rules run."""
    from ccis.data.prepare import PhantomSpec

    peer = _peer_set(tmp_path / "peer_set")
    assert main(["prepare", "--split", "peer", "--out", str(tmp_path / "external"),
                 "--source", f"image-mask:peer={peer}"]) == 0  # fmt: skip
    imported = tmp_path / "external" / "peer.parquet"
    real = triplets.parents[1] / "data" / "train.parquet"
    test = prepare_split("centre1", tmp_path / "data", phantom=PhantomSpec(2, 1, 2, 96, 80))

    per_image = []
    for setting, manifests in (("real", [real]), ("real+peer", [real, imported])):
        model = tmp_path / setting / "model"
        train = [arg for m in manifests for arg in ("--train", str(m))]
        assert main(["train-segmenter", "--model", "pranet", "--backbone", "resnet10t", *train,
                     "--out", str(model), "--work", str(tmp_path / setting / "work"),
                     "--epochs", "1", "--batch-size", "4", "--size", "64", "--scales", "1",
                     "--threads", "1"]) == 0  # fmt: skip
        pairs = json.loads((model / "config.json").read_text())["train_pairs"]
        assert pairs == (8 if setting == "real" else 12)  # the 4 imported pairs added
        per_image.append(tmp_path / setting / "per_image.parquet")
    # Both runs scored in one process, as the evaluate_segmenter rule runs a model's runs.
    runs = [arg for setting, out in zip(("real", "real+peer"), per_image, strict=True)
            for arg in ("--model-dir", str(tmp_path / setting / "model"), "--out", str(out),
                        "--setting", setting, "--seed", "0")]  # fmt: skip
    assert main(["evaluate-segmenter", *runs, "--test", f"centre1={test}",
                 "--model", "pranet"]) == 0  # fmt: skip
    assert [set(pd.read_parquet(p)["setting"]) for p in per_image] == [{"real"}, {"real+peer"}]

    # Table 1: the command the metrics_external rule runs (offline: no Inception file), ...
    metrics = tmp_path / "metrics" / "peer.json"
    assert main(["metrics-generation", "--generator", "peer", "--external", "Peer tool",
                 "--synthetic", str(imported), "--real", str(triplets), "--segmenter",
                 str(tmp_path / "real" / "model"), "--out", str(metrics), "--per-image",
                 str(tmp_path / "metrics" / "peer.parquet"), "--inception-dir", str(tmp_path),
                 "--device", "cpu", "--threads", "1"]) == 0  # fmt: skip
    written = json.loads(metrics.read_text())
    assert written["external"] == {"label": "Peer tool"} and written["n_synthetic"] == 4
    scores = written["metrics"]
    assert scores["mask_fidelity"]["status"] == "computed"
    for key, reason in EXTERNAL_REASONS.items():
        assert scores[key] == {"status": "not computed", "reason": reason}
    assert len(pd.read_parquet(tmp_path / "metrics" / "peer.parquet")) == 4
    # ... and FID is the same code as for our generators (here with a tiny extractor).
    library = generation_metrics(
        "peer", imported, triplets, tmp_path / "lib.json", external="Peer tool",
        fid_feature_extractor=MeanColour(), segment=lambda b: [np.ones(i.shape[:2]) for i in b],
        device="cpu",
    )  # fmt: skip
    assert library["metrics"]["fid"]["status"] == "computed"
    assert library["metrics"]["fid"]["value"] > 0
    assert main(["generation-table", "--out-csv", str(tmp_path / "t1.csv"), "--out-md",
                 str(tmp_path / "t1.md"), str(metrics)]) == 0  # fmt: skip
    table1 = (tmp_path / "t1.md").read_text()
    assert re.search(r"^\| Peer tool \(external\) \| not computed \[\d\] \|", table1, re.M)
    assert "(external): a set made by another tool (Peer tool)" in table1
    assert pd.read_csv(tmp_path / "t1.csv")["generator"].tolist() == ["peer"]

    # Table 3: its real+<name> row beside real, labelled as external.
    md = tmp_path / "t3.md"
    assert main(["segmentation-table", "--out-csv", str(tmp_path / "t3.csv"), "--out-md",
                 str(md), "--external", "peer=Peer tool", *map(str, per_image)]) == 0  # fmt: skip
    table3 = md.read_text()
    assert "| PraNet |" in table3 and "| PraNet + Peer tool (external) |" in table3
    assert "config external_synthetic: Peer tool" in table3
    assert set(pd.read_csv(tmp_path / "t3.csv")["setting"]) == {"real", "real+peer"}


def test_paper_config_plans_pvt_cascade_and_an_external_set(micro_workdir):
    """`snakemake -n --configfile configs/paper.yaml` (data folders and model files faked)
    plans PVT-CASCADE beside PraNet and Polyp-PVT, and an external set's import, metrics
    and real+<name> runs for every segmenter and seed; the import rule runs for real."""
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    for split in paper["data"]["splits"]:
        (micro_workdir / split["sources"][0]["root"]).mkdir(parents=True)
    for folder in (paper["caption"]["tokenizer"], "peer_set"):
        (micro_workdir / folder).mkdir(parents=True)
    _peer_set(micro_workdir / "peer_set", count=2)
    files = [paper["caption"]["llama"]["model"]] + [
        paper["segmentation"][m]["pretrained_file"] for m in paper["segmentation"]["models"]
    ]
    for file in files:
        (micro_workdir / file).parent.mkdir(parents=True, exist_ok=True)
        (micro_workdir / file).write_bytes(b"")
    (micro_workdir / "peer.yaml").write_text(
        "external_synthetic:\n  - {name: peer, root: peer_set, format: image-mask}\n"
    )
    dry = snakemake(micro_workdir, "-n", "-p", "--configfile", str(REPO / "configs" / "paper.yaml"),
                    "peer.yaml")  # fmt: skip
    log = dry.stdout + dry.stderr
    jobs = planned_jobs(log)
    train = [j for j in jobs if j["rule"] == "train_segmenter"]
    per_model = {m: [j for j in train if j["model"] == m] for m in paper["segmentation"]["models"]}
    assert set(per_model) == {"pranet", "polyp_pvt", "pvt_cascade"}
    assert len(per_model["pvt_cascade"]) == len(per_model["pranet"]) > 0
    for model, runs in per_model.items():
        assert {j["seed"] for j in runs if j["setting"] == "real+peer"} == {"0", "1", "2"}, model
    # One evaluation job per model scores all its runs.
    assert sum(j["rule"] == "evaluate_segmenter" and j["model"] == "pvt_cascade" for j in jobs) == 1
    assert [j["rule"] for j in jobs].count("prepare_external") == 1
    assert [j["rule"] for j in jobs].count("metrics_external") == 1
    # PVT-CASCADE's reference recipe reaches its command line.
    assert re.search(r"--model pvt_cascade .*--backbone pvt_v2_b2 --epochs 99 "
                     r"--learning-rate 0\.0001 --weight-decay 0\.0001 --drop-path-rate 0\.1 ",
                     log)  # fmt: skip
    assert "--external peer=peer" in log  # Table 3 labels it

    # The import rule itself, on the micro config.
    snakemake(micro_workdir, "results/external/peer.parquet", "--cores", "1", "--configfile",
              "peer.yaml")  # fmt: skip
    table = pd.read_parquet(micro_workdir / "results" / "external" / "peer.parquet")
    assert list(table["id"]) == ["peer-sample_000", "peer-sample_001"]
    log = (micro_workdir / "results" / "logs" / "prepare_external" / "peer.log").read_text()
    assert "prompts.txt" in log
    assert table["split"].unique().tolist() == ["peer"]
