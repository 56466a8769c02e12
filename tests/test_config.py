"""Config validation: every bad key is named, before any job runs."""

from __future__ import annotations

import copy

import pytest
import yaml

from ccis.config import ConfigError, load_config, train_split, validate_config
from conftest import REPO, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _default() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults():
    config = _default()
    del config["data"]["on_bad_pair"]
    validate_config(config, SCHEMA)
    assert config["data"]["on_bad_pair"] == "error"
    assert train_split(config) == "train"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["data"].update(colour="red"), "data.colour: unknown key"),
        (lambda c: c["data"]["phantom"].update(sed=1), "data.phantom.sed: unknown key"),
        (
            lambda c: c["data"]["phantom"].update(seed="abc"),
            "data.phantom.seed: 'abc' is not of type 'integer'",
        ),
        (
            lambda c: c["data"]["splits"][1]["phantom"].update(count=0),
            "data.splits[1].phantom.count: 0 is less than the minimum",
        ),
        (
            lambda c: c["data"]["splits"][0].update(role="val"),
            "data.splits[0].role: 'val' is not one of",
        ),
        (
            lambda c: c["data"]["splits"][0].pop("phantom"),
            "data.splits[0]: give exactly one of 'phantom' or 'sources'",
        ),
        (
            lambda c: c["data"]["splits"][2].update(role="train"),
            "exactly one split needs role 'train', found 2",
        ),
        (
            lambda c: c["data"]["splits"][2].update(name="train"),
            "data.splits[2].name: split 'train' is defined twice",
        ),
        (
            lambda c: c.update(resources={"prepare_threads": 1.5}),
            "resources.prepare_threads: 1.5 is not of type 'integer'",
        ),
        (  # the judge is a trained Table 3 run: no step-matched run, no real_x2 judge
            lambda c: c["segmentation"].update(step_matched=False),
            "metrics.fidelity_segmenter.setting: real_x2 is not trained",
        ),
    ],
)
def test_bad_config_names_the_key(edit, message):
    config = copy.deepcopy(_default())
    edit(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA)
    assert message in str(info.value)


def test_all_problems_are_reported_at_once():
    config = _default()
    config["data"]["phantom"]["seed"] = "x"
    config["data"]["bogus"] = 1
    with pytest.raises(ConfigError, match=r"2 problem\(s\)"):
        validate_config(config, SCHEMA)


def test_missing_dataset_folder_names_the_key(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA, workdir=tmp_path)
    text = str(info.value)
    assert (
        "data.splits[0].sources[0].root: data-set folder 'datasets/TrainDataset' (pranet) does not exist"
        in text
    )
    assert "data.splits[3].sources[0].root" in text
    assert "caption.llama.model: 'models/llama/" in text
    for sub in (
        "datasets/TrainDataset",
        "datasets/TestDataset/CVC-300",
        "datasets/TestDataset/CVC-ClinicDB",
        "datasets/TestDataset/Kvasir",
        config["caption"]["tokenizer"],
    ):
        (tmp_path / sub).mkdir(parents=True)
    model = tmp_path / config["caption"]["llama"]["model"]
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="segmentation.pranet.pretrained_file: 'models/timm/"):
        validate_config(config, SCHEMA, workdir=tmp_path)
    for net in ("pranet", "polyp_pvt"):
        weights = tmp_path / config["segmentation"][net]["pretrained_file"]
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(b"")
    validate_config(config, SCHEMA, workdir=tmp_path)


def test_llama_captioner_needs_a_model():
    config = _default()
    config["caption"]["captioner"] = "llama"
    with pytest.raises(ConfigError, match="caption.llama.model: the llama captioner needs"):
        validate_config(config, SCHEMA)


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_config(path, SCHEMA)


def test_snakemake_stops_before_any_job_naming_the_key(micro_workdir):
    bad = micro_workdir / "bad.yaml"
    bad.write_text("data:\n  phantom:\n    width: wide\n")
    proc = snakemake(micro_workdir, "--cores", "1", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "data.phantom.width: 'wide' is not of type 'integer'" in proc.stderr + proc.stdout
    assert not (micro_workdir / "results").exists()


def test_the_peers_overlay_is_valid_and_names_its_missing_external_folder(tmp_path):
    """configs/peers.yaml over config.yaml (as --configfile merges it) validates once its
    stand-in external set exists, and names the folder while it does not."""
    from snakemake.utils import update_config

    config = _default()
    update_config(config, yaml.safe_load((REPO / "configs" / "peers.yaml").read_text()))
    assert config["generators"] == ["ccis", "controlnet", "siamese"]
    with pytest.raises(ConfigError, match=r"external_synthetic\[0\]\.root.*peer_sets/phantom_peer"):
        validate_config(copy.deepcopy(config), SCHEMA, workdir=tmp_path)
    (tmp_path / "peer_sets" / "phantom_peer").mkdir(parents=True)
    validate_config(config, SCHEMA, workdir=tmp_path)
    assert config["segmentation"]["synthetic"] == ["ccis", "siamese", "phantom_peer"]
