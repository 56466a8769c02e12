"""Every performance figure of the project in one table (and, optionally, one Markdown file).

Runs the other benchmark scripts, each in its own process, and prints:
demo DAG wall time per stage (from Snakemake's benchmark files) and in total; caption
pairs/s; CCIS-Diff over ControlNet training-step and memory ratios and the sampling ratio
over diffusers' StableDiffusionControlNetPipeline (tiny preset on the CPU); segmentation
training and inference images/s of the demo backbones.

    python benchmarks/run_all.py [--markdown docs/performance.md] [--skip demo]

The demo run alone takes about as long as the default DAG (minutes); everything runs on
the CPU here. The SD v1.5-shaped GPU numbers come from ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "demo": ["demo_time.py"],
    "caption": ["caption_bench.py"],
    "diffusion": ["diffusion_bench.py", "--preset", "tiny"],
    "segmentation": ["segmentation_bench.py"],
}


def run(name: str, folder: Path, extra: list[str]) -> dict | None:
    """Run one benchmark script; its numbers (JSON) or None when it failed."""
    out = folder / f"{name}.json"
    cmd = [sys.executable, str(HERE / SCRIPTS[name][0]), *SCRIPTS[name][1:], *extra]
    cmd += ["--json", str(out)]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=HERE.parent)  # a missed target still reports its numbers
    return json.loads(out.read_text()) if out.exists() else None


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, no GPU used; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def rows(numbers: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of the summary table."""
    table: list[tuple[str, str]] = []
    demo = numbers.get("demo")
    if demo:
        for rule, seconds in sorted(demo["per_rule_s"].items(), key=lambda kv: -kv[1]):
            label = f"demo: {rule} ({demo['jobs'][rule]} jobs, job time)"
            table.append((label, f"{seconds:.1f} s"))
        total = demo["total_s"]
        table.append(("demo: whole DAG, wall time", f"{total:.0f} s ({total / 60:.1f} min)"))
    caption = numbers.get("caption")
    if caption:
        rate = f"{caption['pairs_per_s']:.0f} pairs/s"
        table.append(("caption: measure + template caption", rate))
    diffusion = numbers.get("diffusion")
    if diffusion:
        for key, label in (
            ("tiny_step", "CCIS/ControlNet training step (tiny, CPU)"),
            ("tiny_memory", "CCIS/ControlNet peak memory (tiny, CPU)"),
            ("tiny_sampling", "CCISPipeline/diffusers sampling (tiny, CPU)"),
        ):
            if key in diffusion:
                table.append((label, f"{diffusion[key]['ratio']:.3f}"))
    segmentation = numbers.get("segmentation")
    if segmentation:
        for model, entry in segmentation.items():
            table.append(
                (
                    f"segmentation: {model} ({entry['backbone']}, {entry['size']}²)",
                    f"train {entry['train_images_per_s']:.1f} img/s, "
                    f"inference {entry['inference_images_per_s']:.1f} img/s",
                )
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="write the table to this Markdown file")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(SCRIPTS))
    parser.add_argument("--keep", type=Path, help="run the demo in this folder and keep it")
    args = parser.parse_args()
    numbers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCRIPTS:
            if name not in args.skip:
                extra = ["--keep", str(args.keep)] if name == "demo" and args.keep else []
                numbers[name] = run(name, Path(tmp), extra)
    table = rows(numbers)
    width = max(len(m) for m, _ in table) if table else 10
    print(f"\n{machine()}\n")
    for measure, value in table:
        print(f"{measure:<{width}}  {value}")
    if args.markdown:
        lines = [
            "# Performance\n",
            f"Measured with `python benchmarks/run_all.py` on: {machine()}.\n",
            "| measure | value |",
            "|---|---|",
            *(f"| {m} | {v} |" for m, v in table),
            "",
        ]
        args.markdown.write_text("\n".join(lines))
        print(f"\nwrote {args.markdown}")


if __name__ == "__main__":
    main()
