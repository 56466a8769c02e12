"""The Snakemake workflow end to end at micro scale, and the CLI surface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ccis.cli import build_parser, main
from conftest import REPO, planned_jobs, run_env, snakemake, write_pairs


@pytest.mark.longest
def test_micro_dag_prepares_every_split_then_does_nothing(micro_workdir):
    dry = snakemake(micro_workdir, "-n", "--cores", "1")
    assert "prepare" in dry.stdout
    snakemake(micro_workdir, "--cores", "2")
    results = micro_workdir / "results"
    for split, count in [("train", 6), ("centre1", 2), ("centre2", 2), ("centre3", 2)]:
        table = pd.read_parquet(results / "data" / f"{split}.parquet")
        assert len(table) == count
        assert (results / "data" / split / "images").is_dir()
        assert (results / "logs" / "prepare" / f"{split}.log").read_text().count("wrote") == 1
        assert (results / "benchmarks" / "prepare" / f"{split}.tsv").exists()
    triplets = pd.read_parquet(results / "captions" / "train.parquet")
    assert len(triplets) == 6 and triplets["caption"].str.len().min() > 40
    assert not list((results / "captions").glob("*.part*"))  # shards are temporary
    again = snakemake(micro_workdir, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
    # The generator stages: a base, one branch per generator, a synthetic set each.
    assert (results / "models" / "base" / "model_index.json").is_file()
    for generator in ("ccis", "controlnet"):
        model = results / "models" / generator
        assert (model / "diffusion_pytorch_model.safetensors").is_file()
        assert (model / "loss.csv").is_file() and (model / "loss.png").is_file()
        synthetic = pd.read_parquet(results / "synthetic" / f"{generator}.parquet")
        assert (
            len(synthetic) == 6 and synthetic["id"].str.startswith(f"synthetic-{generator}-").all()
        )
        first = synthetic.iloc[0]
        assert (results / "synthetic" / first["image"]).is_file()
    # Downstream: PraNet on real, the step-matched real ×2 and real+ccis, evaluated on every
    # test split (the micro config trains one segmenter; Polyp-PVT's commands have their own
    # tests in test_segmentation.py).
    table3 = pd.read_csv(results / "report" / "table3_segmentation.csv")
    assert set(table3["model"]) == {"pranet"}
    assert set(table3["setting"]) == {"real", "real_x2", "real+ccis"}
    matched = json.loads(
        (
            results / "segmentation" / "pranet" / "real_x2" / "seed0" / "model" / "config.json"
        ).read_text()
    )
    real = json.loads(
        (
            results / "segmentation" / "pranet" / "real+ccis" / "seed0" / "model" / "config.json"
        ).read_text()
    )
    assert matched["repeat"] == 2 and matched["steps_per_epoch"] == real["steps_per_epoch"]
    assert set(table3["test_set"]) == {"centre1", "centre2", "centre3"}
    per_image = pd.read_parquet(
        results / "segmentation" / "pranet" / "real+ccis" / "seed0" / "per_image.parquet"
    )
    assert len(per_image) == 6 and per_image["mdice"].between(0, 1).all()
    metrics = json.loads((results / "metrics" / "ccis.json").read_text())["metrics"]
    assert metrics["fid"]["status"] == "not computed"  # offline: said, not made up
    assert metrics["mask_fidelity"]["status"] == "computed"
    assert metrics["text_adherence"]["n"] == 6 and len(metrics["text_adherence"]["ci95"]) == 2
    # One text-adherence row per training mask with a polyp; a win is the pale prompt's
    # polyp paler than the red prompt's.
    rows = pd.read_parquet(results / "metrics" / "ccis.text_adherence.parquet")
    assert len(rows) == 6 and rows["real_id"].is_unique
    assert np.isfinite(rows[["chroma_pale", "chroma_red"]].to_numpy()).all()
    assert (rows["text_win"] == (rows["chroma_pale"] > rows["chroma_red"])).all()
    assert rows["localisation"].between(0, 1).all()  # every pair differs somewhere
    assert metrics["colour_localisation"]["n"] == 6
    table1 = (results / "report" / "table1_generation.md").read_text()
    assert "not computed" in table1 and "Differences from CCIS-Diff" in table1
    lambdas = (results / "report" / "taam_lambda.md").read_text()
    assert "| CCIS-Diff (ours) | 0 | 1.000 |" in lambdas
    page = (results / "report" / "index.html").read_text()
    assert "Table 3" in page and page.count("data:image/png;base64,") >= 3
    assert "TAAM λ per block" in page and "real ×2 (step-matched)" in page
    # Snakemake's own report of the same run.
    snakemake(micro_workdir, "--report", "report.html")
    assert (micro_workdir / "report.html").stat().st_size > 10_000
    # -R caption re-runs the captioning (its shards and the gather), not prepare.
    rerun = snakemake(micro_workdir, "--cores", "2", "-R", "caption", "--until", "gather_captions")
    log = rerun.stdout + rerun.stderr
    assert "rule caption" in log and "rule gather_captions" in log and "rule prepare" not in log


def test_fake_pranet_split_through_configfile(micro_workdir):
    data = micro_workdir / "datasets"
    write_pairs(
        data / "TrainDataset" / "images", data / "TrainDataset" / "masks", ["cjuA", "1", "2"]
    )
    test = data / "TestDataset" / "CVC-300"
    write_pairs(test / "images", test / "masks", ["149"])
    (micro_workdir / "fake.yaml").write_text(
        "results: out\n"
        "data:\n"
        "  splits:\n"
        "    - {name: train, role: train, sources: [{format: pranet, root: datasets/TrainDataset}]}\n"
        "    - name: endoscene\n"
        "      role: test\n"
        "      sources: [{format: pranet, root: datasets/TestDataset/CVC-300, name: cvc300}]\n"
    )
    # Targets first: --configfile takes every value that follows it.
    snakemake(
        micro_workdir, "out/data/train.parquet", "out/data/endoscene.parquet",
        "--cores", "1", "--configfile", "fake.yaml",
    )  # fmt: skip
    train = pd.read_parquet(micro_workdir / "out" / "data" / "train.parquet")
    assert sorted(train["id"]) == ["clinicdb-1", "clinicdb-2", "kvasir-cjuA"]
    test_table = pd.read_parquet(micro_workdir / "out" / "data" / "endoscene.parquet")
    assert list(test_table["id"]) == ["cvc300-149"]
    # The phantom splits of config.yaml are replaced, not merged in.
    assert not (micro_workdir / "out" / "data" / "centre1.parquet").exists()


def _job_counts(dry_run: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run, as {rule: jobs}."""
    table = dry_run.split("Job stats:")[1].split("total")[0]
    rows = (line.split() for line in table.splitlines()[3:])
    return {row[0]: int(row[1]) for row in rows if len(row) == 2}


def test_the_longest_chain_and_the_judge_are_scheduled_first(tmp_path):
    """The default DAG's priorities: on few cores the chain the wall time waits for (the
    training split, its captions, the base, CCIS-Diff's branch and synthesis, the
    segmenters trained on its images, their scores) and the mask-fidelity judge run go
    before the jobs with slack (test splits, real-data runs, the other generators)."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(snakemake(tmp_path, "-n").stdout)
    priority = {(job["rule"], job["wildcards"]): job["priority"] for job in jobs}
    first = {
        ("prepare", "split=train"), ("caption", "split=train, shard=0"),
        ("gather_captions", "split=train"), ("bootstrap", ""),
        ("train_generator", "generator=ccis"), ("synthesize", "generator=ccis, shard=0"),
        ("gather_synthetic", "generator=ccis"),
        ("train_segmenter", "model=pranet, setting=real+ccis, seed=1"),
        ("train_segmenter", "model=pranet, setting=real_x2, seed=0"),  # the judge
        ("evaluate_segmenter", "model=polyp_pvt"),
    }  # fmt: skip
    later = {
        ("prepare", "split=centre1"), ("train_generator", "generator=controlnet"),
        ("text_adherence", "generator=ccis"),
        ("train_segmenter", "model=pranet, setting=real, seed=0"),
        ("train_segmenter", "model=pranet, setting=real_x2, seed=1"),
    }  # fmt: skip
    assert first | later <= set(priority)
    assert min(priority[job] for job in first) > max(priority[job] for job in later)


def test_paper_configuration_plans_the_whole_dag_on_a_pranet_folder(tmp_path):
    """configs/paper.yaml over the default config.yaml, as `snakemake --configfile
    configs/paper.yaml` runs it from the repository root, against a PraNet-layout folder
    and the model files a user places: every stage is planned, with the paper's settings."""
    import yaml

    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    data = tmp_path / "datasets"
    write_pairs(data / "TrainDataset" / "images", data / "TrainDataset" / "masks",
                ["cju0a", "cju0b", "1", "2"])  # fmt: skip
    for name, stems in {"CVC-300": ["149"], "CVC-ClinicDB": ["3"], "Kvasir": ["cju1a"]}.items():
        test = data / "TestDataset" / name
        write_pairs(test / "images", test / "masks", stems)
    # What a user fetches: SD v1.5 (its tokenizer counts caption tokens), the LLaMA GGUF,
    # the ImageNet backbones, the CLIP checkpoint. The plan reads none of them.
    (tmp_path / paper["caption"]["tokenizer"]).mkdir(parents=True)
    (tmp_path / paper["model"]["sd15"] / "model_index.json").write_text("{}")
    for path in (paper["caption"]["llama"]["model"], paper["metrics"]["clip_pretrained"],
                 paper["segmentation"]["pranet"]["pretrained_file"],
                 paper["segmentation"]["polyp_pvt"]["pretrained_file"]):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    dry = snakemake(
        tmp_path, "-n", "-p", "--configfile", str(REPO / "configs" / "paper.yaml")
    ).stdout
    counts = _job_counts(dry)
    generators = len(paper["generators"])
    settings = 2 + generators  # real, real_x2 (step-matched), real+<generator>
    segmenters = (
        len(paper["segmentation"]["models"]) * settings * len(paper["segmentation"]["seeds"])
    )
    expected = {
        "prepare": len(paper["data"]["splits"]), "caption": paper["caption"]["shards"],
        "gather_captions": 1, "train_generator": generators,
        "synthesize": generators * paper["synthesis"]["shards"], "gather_synthetic": generators,
        "text_adherence": generators, "metrics_generation": generators,
        "train_segmenter": segmenters,
        "evaluate_segmenter": len(paper["segmentation"]["models"]),  # one per model
        "generation_table": 1, "segmentation_table": 1, "report": 1, "all": 1,
    }  # fmt: skip
    assert {rule: counts.get(rule) for rule in expected} == expected
    assert "bootstrap" not in counts  # SD v1.5 is the base: nothing is trained from scratch
    train = [line for line in dry.splitlines() if "ccis train-generator --generator ccis " in line]
    assert len(train) == 1
    for option in ("--base models/stable-diffusion-v1-5", "--batch-size 4", "--resolution 512",
                   "--learning-rate 1e-05", "--mixed-precision bf16",
                   "--gradient-checkpointing"):  # fmt: skip
        assert option in train[0], option
    pranet = next(line for line in dry.splitlines() if "--model pranet" in line and "train" in line)
    for option in ("--backbone res2net50d", "--size 352", "--batch-size 16",
                   "--pretrained-file models/timm/res2net50d.safetensors"):  # fmt: skip
        assert option in pranet, option
    assert "--captioner llama" in dry


# Real Kvasir-SEG frames, when this machine has some: $CCIS_REAL_SAMPLES or the project's
# shared folder beside the repository (a Kvasir-SEG layout: images/, masks/).
REAL_SAMPLES = Path(
    os.environ.get("CCIS_REAL_SAMPLES", REPO.parent / "shared" / "real-samples" / "Kvasir-SEG")
)


@pytest.mark.skipif(not REAL_SAMPLES.is_dir(), reason="no real Kvasir-SEG frames on this machine")
def test_real_kvasir_frames_through_prepare_and_caption(tmp_path):
    """configs/real-samples.yaml as a user runs it, on real Kvasir-SEG frames copied in as
    their own folder (four pairs: JPEG masks with grey edges, native sizes): every pair
    imported and captioned from what its pixels show."""
    frames = sorted(p.stem for p in (REAL_SAMPLES / "images").glob("*.jpg"))[:4]
    own = tmp_path / "datasets" / "Kvasir-SEG"
    for folder in ("images", "masks"):
        (own / folder).mkdir(parents=True)
        for stem in frames:
            shutil.copy(REAL_SAMPLES / folder / f"{stem}.jpg", own / folder)
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    target = "results-real-samples/captions/train.parquet"
    snakemake(tmp_path, target, "--cores", "2", "--configfile",
              str(REPO / "configs" / "real-samples.yaml"))  # fmt: skip
    pairs = pd.read_parquet(tmp_path / "results-real-samples" / "data" / "train.parquet")
    assert sorted(pairs["id"]) == [f"kvasir-{stem}" for stem in frames]
    assert (pairs["width"] > 500).all() and pairs["area_fraction"].between(0.001, 0.9).all()
    assert pairs["notes"].str.contains("threshold").all()  # JPEG masks: grey edges cut at 128
    triplets = pd.read_parquet(tmp_path / target)
    assert sorted(triplets["id"]) == sorted(pairs["id"])
    assert triplets["caption"].str.contains("polyp").all()
    assert triplets["caption"].nunique() == len(triplets)  # each frame its own description


def test_workflow_is_lint_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO)],
        capture_output=True, text=True, env=run_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse API
    assert {
        "prepare",
        "contact-sheet",
        "check-config",
        "gather",
        "bootstrap",
        "train-generator",
        "synthesize",
        "train-segmenter",
        "evaluate-segmenter",
        "segmentation-table",
        "metrics-generation",
        "generation-table",
        "figure-grid",
        "figure-losses",
        "figure-segmentation",
        "report",
        "effective-config",
    } <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: ccis " + name in capsys.readouterr().out


def test_cli_bad_input_exits_nonzero_with_message(tmp_path, capsys):
    root = tmp_path / "ds"
    write_pairs(root / "images", root / "masks", ["a"])
    (root / "images" / "a.png").write_bytes(b"")
    code = main(
        ["prepare", "--split", "s", "--out", str(tmp_path / "o"), "--source", f"kvasir-seg={root}"]
    )
    assert code == 2
    assert "a.png: is an empty (zero-byte) file" in capsys.readouterr().err


def test_check_config_command(capsys):
    assert main(["check-config", str(REPO / "config.yaml"), "--schema",
                 str(REPO / "workflow/schemas/config.schema.yaml")]) == 0  # fmt: skip
    assert "valid; splits: train (train)" in capsys.readouterr().out


def test_contact_sheet(tmp_path):
    from ccis.data.prepare import PhantomSpec, prepare_split

    manifest = prepare_split("t", tmp_path, phantom=PhantomSpec(3, 0, 0, 96, 80))
    assert (
        main(["contact-sheet", str(manifest), str(tmp_path / "sheet.png"), "--columns", "2"]) == 0
    )
    import cv2

    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 * 240, 2 * 2 * 288, 3)
