"""GPU check: SD v1.5-shaped cost of CCIS-Diff, appended to docs/performance.md.

One command, a few minutes on one modern GPU (the SD v1.5-shaped models have random
weights: nothing is downloaded):

    python benchmarks/gpu_check.py

It runs ``diffusion_bench.py --preset sd15`` (bf16, 512², batch 4): training-step time and
peak memory of the CCIS-Diff branch over plain ControlNet, and sampling images/s of
``CCISPipeline`` over diffusers' ``StableDiffusionControlNetPipeline`` at 20 DDIM steps
with CFG 7.0; then appends the numbers, the GPU and the date to docs/performance.md.
Without a GPU it says so and changes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROWS = (
    ("sd15_step", "training step (s)", "≤ 1.15"),
    ("sd15_memory", "peak GPU memory (MiB)", "≤ 1.15"),
    ("sd15_sampling", "sampling (images/s)", "≥ 0.85"),
)


def markdown(numbers: dict) -> str:
    """The GPU section of docs/performance.md."""
    today = datetime.date.today().isoformat()
    lines = [
        f"\n## GPU check — {numbers.get('device', 'GPU')}, {today}\n",
        "SD v1.5-shaped models (random weights), bf16, 512², batch 4; sampling with DDIM 20",
        "steps and CFG 7.0 (`python benchmarks/gpu_check.py`).\n",
        "| measure | CCIS-Diff | baseline | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label, target in ROWS:
        row = numbers[key]
        cells = f"{row['ccis']:.4g} | {row['baseline']:.4g} | {row['ratio']:.3f}"
        lines.append(f"| {label} | {cells} | {target} |")
    lines.append(
        "\nBaselines: ControlNet (training), diffusers `StableDiffusionControlNetPipeline` "
        "(sampling).\n"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "performance.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU on this machine: nothing measured, docs/performance.md unchanged")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "numbers.json"
        bench = [sys.executable, str(HERE / "diffusion_bench.py"), "--preset", "sd15"]
        code = subprocess.run([*bench, "--json", str(out)]).returncode
        numbers = json.loads(out.read_text())
    section = markdown(numbers)
    with open(args.doc, "a") as handle:
        handle.write(section)
    print(section)
    print(f"appended to {args.doc}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
