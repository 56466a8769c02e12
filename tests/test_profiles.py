"""Cluster and GPU profiles: they name only rules the workflow has, the SLURM profile sends
every rule that declares a GPU to the GPU partition, and a dry run through each plans every
job with the right resources."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO, snakemake

PROFILES = REPO / "workflow" / "profiles"


def _jobs(log: str) -> dict[str, list[str]]:
    """Rule name -> the resources lines of its planned jobs, from a dry run's output."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=rule \w+:)", log):
        head = re.match(r"rule (\w+):", block)
        resources = re.search(r"resources: (.*)", block)
        if head and resources:
            jobs.setdefault(head.group(1), []).append(resources.group(1))
    return jobs


def _rules(workdir) -> set[str]:
    """Every rule of the workflow, from `snakemake --list-rules`."""
    listed = snakemake(workdir, "--list-rules").stdout
    return {line.split(" ", 1)[0] for line in listed.splitlines() if line.strip()}


def _gpu_rules_in_source() -> set[str]:
    """Rules written `rule <name>:` whose `resources:` declare a `gpu` (from the rule files;
    the dry run below covers the rules the figure loop names)."""
    names = set()
    for path in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), re.M):
            if re.search(r"^\s+gpu=", body, re.M):
                names.add(name)
    return names


def _slurm_dry_run(workdir):
    """A dry run through the SLURM profile with two GPUs per training job and an ablation
    configured, so that every GPU rule (the Fig. 4 grid included) plans jobs."""
    (workdir / "gpus.yaml").write_text(
        "generators: [ccis, controlnet, ccis_no_taam]\ntrain: {gpus: 2}\nsegmentation: {gpus: 2}\n"
    )
    dry = snakemake(
        workdir, "-n", "--workflow-profile", str(PROFILES / "slurm"), "--configfile", "gpus.yaml"
    )
    return dry.stdout + dry.stderr


@pytest.mark.parametrize("profile", ["slurm", "local-gpu"])
def test_profile_names_only_rules_of_the_workflow(profile, micro_workdir):
    settings = yaml.safe_load((PROFILES / profile / "config.yaml").read_text())
    named = {rule for key in ("set-resources", "set-threads") for rule in settings.get(key) or {}}
    unknown = named - _rules(micro_workdir)
    assert not unknown, f"{profile} names rules the workflow lacks: {sorted(unknown)}"


def test_slurm_profile_sends_every_gpu_rule_to_the_gpu_partition(micro_workdir):
    jobs = _jobs(_slurm_dry_run(micro_workdir))
    planned = {
        rule for rule, lines in jobs.items() if any(re.search(r"\bgpu=[1-9]", r) for r in lines)
    }
    gpu_rules = planned | _gpu_rules_in_source()
    assert {"train_generator", "figure_fig3", "figure_fig4", "train_segmenter"} <= gpu_rules
    settings = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())["set-resources"]
    routed = {rule for rule, res in settings.items() if res.get("slurm_partition") == "gpu"}
    assert not gpu_rules - routed, (
        f"GPU rules left on the CPU partition: {sorted(gpu_rules - routed)}"
    )
    for rule in planned:
        assert all("slurm_partition=gpu" in r for r in jobs[rule]), rule


def test_slurm_profile_dry_run_requests_gpus_for_gpu_rules(micro_workdir):
    log = _slurm_dry_run(micro_workdir)
    jobs = _jobs(log)
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
        launch = f"exec accelerate launch --multi_gpu --num_processes 2 -m ccis.cli {command}"
        assert launch in log
    # Trainers get SIGTERM before the time limit (they checkpoint and exit 75) and, through
    # `exec`, receive it themselves rather than through a shell that would die of it.
    for rule in ("bootstrap", "train_generator", "synthesize", "train_segmenter"):
        assert all("--signal=TERM@300" in r for r in jobs.get(rule, [])), rule
    assert "exec ccis synthesize" in log


def test_local_gpu_profile_dry_run(micro_workdir):
    dry = snakemake(micro_workdir, "-n", "--workflow-profile", str(PROFILES / "local-gpu"))
    assert "rule train_segmenter" in dry.stdout + dry.stderr
