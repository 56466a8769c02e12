"""Wall time of the default demo DAG from scratch, per stage and in total.

Runs ``snakemake --cores all`` with the repository's ``config.yaml`` in a fresh working
folder (nothing reused), then prints the wall time of every rule, summed over its jobs,
from Snakemake's ``benchmark:`` files, and the total wall time of the run.

    python benchmarks/demo_time.py [--keep DIR] [--cores all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ccis-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", args.cores, "--quiet", "all"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=workdir)
    total = time.perf_counter() - start

    per_rule: dict[str, float] = defaultdict(float)
    jobs: dict[str, int] = defaultdict(int)
    bench = workdir / "results" / "benchmarks"
    for tsv in sorted(bench.rglob("*.tsv")):
        rule = tsv.relative_to(bench).parts[0].removesuffix(".tsv")
        per_rule[rule] += float(pd.read_csv(tsv, sep="\t")["s"].sum())
        jobs[rule] += 1
    print(f"default demo DAG ({os.cpu_count()} cores, --cores {args.cores}), from scratch")
    print(f"{'stage':<20}{'jobs':>6}{'job time (s)':>14}")
    for rule, seconds in sorted(per_rule.items(), key=lambda kv: -kv[1]):
        print(f"{rule:<20}{jobs[rule]:>6}{seconds:>14.1f}")
    print(f"{'total wall time':<20}{'':>6}{total:>14.1f}  ({total / 60:.1f} min; jobs overlap on "
          f"{args.cores} cores)")  # fmt: skip
    if args.json:
        numbers = {"total_s": total, "cores": args.cores, "per_rule_s": per_rule, "jobs": jobs}
        args.json.write_text(json.dumps(numbers))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
