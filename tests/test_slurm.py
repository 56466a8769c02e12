"""The SLURM profile on a real (one-node) SLURM cluster: jobs are submitted, a training job
warned by SIGTERM (as the profile's `--signal=TERM@300` does before the time limit)
checkpoints and exits 75 inside its srun step, and Snakemake's retry resumes it to the end.

Opt-in (it submits jobs): CCIS_SLURM_TEST=1 with a cluster running, e.g. the one-node
cluster of tests/slurm/single_node.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_env

pytestmark = pytest.mark.skipif(
    os.environ.get("CCIS_SLURM_TEST") != "1" or shutil.which("sbatch") is None,
    reason="set CCIS_SLURM_TEST=1 with a SLURM cluster (tests/slurm/single_node.sh)",
)


def _squeue() -> dict[str, str]:
    """Job id -> comment (the plugin writes the rule name there) of queued/running jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True)
    return {line.split("|")[0]: line for line in out.stdout.splitlines() if line}


def test_slurm_profile_runs_and_a_signalled_training_job_resumes(tmp_path):
    shutil.copy(REPO / ".test" / "config.yaml", tmp_path / "config.yaml")
    # Long enough to be signalled mid-run; checkpoints far apart, so the resumed step is
    # the one the signal produced.
    (tmp_path / "long.yaml").write_text("train: {steps: 300, checkpoint_every: 1000}\n")
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
        "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--configfile", "long.yaml", "--slurm-status-command", "squeue",
        # The profile asks 8 CPUs for these: such jobs would stay pending on a small node.
        "--set-threads", "prepare=1", "caption=1", "--jobs", "2",
        "results/models/ccis",
    ]  # fmt: skip
    with open(tmp_path / "snakemake.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(), stdout=log, stderr=log)
        loss = tmp_path / "results" / "work" / "train" / "ccis" / "loss.csv"
        signalled = None
        deadline = time.time() + 1500
        while proc.poll() is None and time.time() < deadline:
            if signalled is None and loss.is_file() and len(loss.read_text().splitlines()) > 20:
                jobs = [j for j, line in _squeue().items() if "train_generator" in line]
                if jobs:
                    signalled = jobs[0]
                    # To the job's steps (not the batch shell), as --signal=TERM@300 does.
                    # (USR1 there would kill the Snakemake that runs the rule inside the
                    # job; on TERM it waits for the trainer to checkpoint.)
                    subprocess.run(["scancel", "--signal=TERM", signalled], check=True)
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "snakemake.log").read_text()
    assert proc.returncode == 0, text[-5000:]
    assert signalled, "the training job was never seen running"
    train_log = (tmp_path / "results" / "logs" / "train_generator" / "ccis.log").read_text()
    resumed = re.search(r"resumed from \S+checkpoint-(\d+) \(step (\d+)\)", train_log)
    # Checkpoints every 1000 steps of 300: only the stop request can have written this one.
    assert resumed and 20 <= int(resumed.group(2)) < 300, train_log[-3000:]
    first = tmp_path / ".snakemake" / "slurm_logs" / "rule_train_generator" / "ccis"
    first = (first / f"{signalled}.log").read_text()
    # The rule's Snakemake saw the trainer fail (exit 75) and was not killed itself.
    assert "Error in rule train_generator" in first and "User defined signal" not in first
    assert (tmp_path / "results" / "models" / "ccis" / "config.json").is_file()
