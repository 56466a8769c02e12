"""Cluster and GPU profiles: a dry run through each plans every job with the right resources."""

from __future__ import annotations

import re

from conftest import REPO, snakemake


def _jobs(log: str) -> dict[str, list[str]]:
    """Rule name -> the resources lines of its planned jobs, from a dry run's output."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=rule \w+:)", log):
        head = re.match(r"rule (\w+):", block)
        resources = re.search(r"resources: (.*)", block)
        if head and resources:
            jobs.setdefault(head.group(1), []).append(resources.group(1))
    return jobs


def test_slurm_profile_dry_run_requests_gpus_for_gpu_rules(micro_workdir):
    (micro_workdir / "gpus.yaml").write_text("train: {gpus: 2}\nsegmentation: {gpus: 2}\n")
    dry = snakemake(
        micro_workdir,
        "-n",
        "--workflow-profile",
        str(REPO / "workflow" / "profiles" / "slurm"),
        "--configfile",
        "gpus.yaml",
    )
    jobs = _jobs(dry.stdout + dry.stderr)
    assert {
        "prepare",
        "caption",
        "train_generator",
        "train_segmenter",
        "figure_fig3",
        "report",
    } <= set(jobs)
    for rule in ("train_generator", "synthesize", "train_segmenter"):
        for resources in jobs[rule]:
            assert "slurm_partition=gpu" in resources and re.search(r"\bgpu=[12]\b", resources)
    assert all("gpu=2" in r for r in jobs["train_generator"])
    assert all("slurm_partition=cpu" in r and "gpu=" not in r for r in jobs["caption"])
    # Two GPUs: branch training goes through `accelerate launch`, one process each.
    # (the profile prints shell commands).
    for command in ("train-generator", "train-segmenter"):
        launch = f"accelerate launch --multi_gpu --num_processes 2 -m ccis.cli {command}"
        assert launch in dry.stdout + dry.stderr


def test_local_gpu_profile_dry_run(micro_workdir):
    dry = snakemake(
        micro_workdir, "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / "local-gpu")
    )
    assert "rule train_segmenter" in dry.stdout + dry.stderr
