"""Paper-shape rehearsal: the paper configuration's commands at full model size.

Weights cannot be downloaded here, but shapes can. This script

1. writes a Stable Diffusion v1.5-shaped base with random weights (``ccis
   make-sd15-shaped``: UNet 860M, VAE, CLIP ViT-L/14 text encoder, CLIP's tokenizer), as a
   diffusers folder and as one original-layout ``.safetensors`` file, and loads both
   through ``load_sd15`` with the network unreachable: they must give the same weights;
2. renders a few phantom frames and captions them (``ccis prepare``, ``ccis caption`` with
   the base's tokenizer);
3. for every generator of ``configs/paper.yaml``: ``ccis train-generator`` for two steps
   with the paper's settings (learning rates, channels, gradient checkpointing; bf16
   autocast where this CPU has bf16 arithmetic, else fp32), checkpointing after the
   first, then the same command again, which resumes from that checkpoint, then ``ccis
   synthesize`` for two images (a few DDIM steps, CFG 7);
4. ``ccis train-segmenter`` for PraNet/res2net50d and Polyp-PVT/pvt_v2_b2 at 352² (batch
   2: one multi-scale step, three optimiser steps), from a random-weight ImageNet-layout
   backbone file (the paper's ``pretrained_file`` path), and ``ccis evaluate-segmenter``;
5. the model alone at the given resolution (SD-shaped UNet and branch, fp32, batch 1,
   one AdamW step after a warm-up step, ``--threads`` threads): CCIS-Diff over
   ControlNet in step time and memory growth, with and without gradient checkpointing,
   and CCIS-Diff with TAAM's bias as the float mask it used to be;

and prints one table: per stage, trainable and frozen parameters (a branch beside
diffusers' ControlNetModel at the same shape), peak resident memory of the command, time
per step and wall time; then CCIS-over-ControlNet ratios.

Each command runs alone, one after the other (peak memory is the process's own). At
512² it took 88 minutes on a shared 2-core CPU, at most 12 GiB per command (training
batch 1; the paper's 4 adds ~1.3 GiB of fp32 activations per image) and ~15 GB of disk
under ``--work`` (cleared as it goes; ``--keep`` keeps it).

    python benchmarks/paper_shape.py [--resolution 512] [--batch-size 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER = REPO / "configs" / "paper.yaml"
GIB = 2**30


@dataclass
class Row:
    """One line of the table."""

    stage: str
    trainable: int | None = None
    frozen: int | None = None
    controlnet: int | None = None  # diffusers' ControlNetModel at the same shape
    peak_gib: float | None = None
    step_s: float | None = None
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)


def run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd`` alone, output to ``log``; (wall seconds, peak resident GiB). Raises with
    the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(str(c) for c in cmd), flush=True)
    began = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"command failed ({code}): {' '.join(map(str, cmd))}\n{tail}")
    return wall, usage.ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


def ccis(*args) -> list[str]:
    return [sys.executable, "-m", "ccis.cli", *(str(a) for a in args)]


def offline_env() -> dict:
    """The environment of every command: offline, this repository's ``ccis`` first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def bf16_arithmetic() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16/AMX); emulated, a 3×3
    convolution of SD's first block takes ~200× its fp32 time, so fp32 is used then."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ----------------------------------------------------------------------------- workers


def worker_compare_bases(folder: str, single: str, config: str | None) -> dict:
    """Load the folder and the single file with every connection refused; compare weights."""
    import socket

    import torch

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (paper-shape rehearsal)")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    from ccis.diffusion.presets import load_sd15

    began = time.perf_counter()
    a = load_sd15(folder)
    folder_s = time.perf_counter() - began
    began = time.perf_counter()
    b = load_sd15(single, config=config)
    single_s = time.perf_counter() - began
    result = {"folder_s": folder_s, "single_s": single_s}
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        result[name] = {"tensors": len(sa), "same": same}
        del sa, sb
        a[name] = b[name] = None
    prompt = "a pink, round polyp"
    result["tokenizer_same"] = a["tokenizer"](prompt).input_ids == b["tokenizer"](prompt).input_ids
    return result


def _masked_attention(query, key, value, bias):
    """TAAM's bias as the float attention mask it was before (for comparison)."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, None, None, :])


def worker_model_alone(variant: str, resolution: int, checkpointing: bool, threads: int) -> dict:
    """One AdamW step of a branch on the SD v1.5-shaped UNet (random weights, fp32, batch 1)
    after one warm-up step: CPU and wall seconds, and the resident memory it grew by."""
    import psutil
    import torch
    import torch.nn.functional as F
    from diffusers import ControlNetModel, UNet2DConditionModel

    import ccis.diffusion.taam as taam
    from ccis.diffusion.model import CCISControlNetModel
    from ccis.diffusion.presets import SD_CONDITIONING_CHANNELS
    from ccis.diffusion.sd15 import SD15_CONFIG
    from ccis.generator.train import optimizer_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = json.loads((SD15_CONFIG / "unet" / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config).requires_grad_(False).eval()
    if variant == "controlnet":
        branch = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=SD_CONDITIONING_CHANNELS,
            conditioning_channels=1,
        )
    else:
        branch = CCISControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=SD_CONDITIONING_CHANNELS
        )
        if variant == "ccis-masked":
            taam.key_bias_attention = _masked_attention
    if checkpointing:
        branch.enable_gradient_checkpointing()
    branch.train()
    optimizer = torch.optim.AdamW(optimizer_groups(branch, 1e-5, 1e-3))
    side = resolution // 8
    latents = torch.randn(1, 4, side, side)
    text = torch.randn(1, 77, 768)
    keys = torch.zeros(1, 77, dtype=torch.bool)
    keys[:, :14] = True  # a 12-word caption
    grid = torch.linspace(-1, 1, resolution)
    masks = ((grid[None, :] ** 2 + grid[:, None] ** 2) < 0.2).float()[None, None]
    extra = {} if variant == "controlnet" else {"text_key_mask": keys}

    def step() -> None:
        t = torch.randint(0, 1000, (1,))
        down, mid = branch(latents, t, text, masks, return_dict=False, **extra)
        pred = unet(
            latents,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        F.mse_loss(pred, torch.randn_like(pred)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = psutil.Process().memory_info().rss
    step()
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cpu_s": cpu, "wall_s": wall, "growth_gib": (peak - before) / GIB}


def spawn_worker(kind: str, log: Path, *args) -> dict:
    """A worker in its own process (its own peak memory); its JSON answer."""
    out = log.with_suffix(".json")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--answer",
        str(out),
        *(str(a) for a in args),
    ]
    wall, peak = run(cmd, log, offline_env())
    answer = json.loads(out.read_text())
    answer.update(command_wall_s=wall, command_peak_gib=peak)
    return answer


# ----------------------------------------------------------------------------- counts


def parameter_counts(generators: list[str], paper: dict, config_dir: Path) -> dict:
    """Trainable parameters of each branch and of diffusers' ControlNetModel, and the
    frozen base's, at the configuration's shape (meta device: no memory)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    from ccis.diffusion.sd15 import sd15_shaped
    from ccis.generator.registry import build_branch

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    model = paper["model"]
    with init_empty_weights():
        parts = sd15_shaped(config_dir=config_dir)
        unet = parts["unet"]
        counts = {"frozen": sum(count(parts[n]) for n in ("unet", "vae", "text_encoder"))}
        counts["diffusers ControlNet"] = count(
            ControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=tuple(model["conditioning_channels"]),
                conditioning_channels=1,
            )
        )
        for name in generators:
            counts[name] = count(
                build_branch(
                    name,
                    unet,
                    conditioning_embedding_out_channels=tuple(model["conditioning_channels"]),
                    extractor_channels=tuple(model["unicontrolnet"]["extractor_channels"]),
                    inject_channels=tuple(model["unicontrolnet"]["inject_channels"]),
                )
            )
    return counts


# ----------------------------------------------------------------------------- stages


def read_step_seconds(csv_path: Path) -> list[float]:
    import pandas as pd

    return pd.read_csv(csv_path)["seconds"].tolist()


def synthesis_step_seconds(log: Path) -> float | None:
    found = re.findall(r"\(([\d.]+) s per DDIM step", log.read_text())
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: temp)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="training batch (paper: 4; ~16 GiB at 512² in fp32 on the CPU)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddim-steps", type=int, default=3)
    parser.add_argument("--generators", nargs="*", help="default: configs/paper.yaml's")
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="development: a narrower SD v1.5-layout configuration folder",
    )
    parser.add_argument("--skip-model-alone", action="store_true")
    parser.add_argument("--skip-segmenters", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        a = args.worker_args
        if args.worker == "compare-bases":
            answer = worker_compare_bases(a[0], a[1], a[2] if len(a) > 2 else None)
        else:
            answer = worker_model_alone(a[0], int(a[1]), a[2] == "1", int(a[3]))
        args.answer.write_text(json.dumps(answer))
        return

    paper = yaml.safe_load(PAPER.read_text())
    generators = args.generators or paper["generators"]
    work = args.work or Path(tempfile.mkdtemp(prefix="ccis-paper-shape-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    env = offline_env()
    threads = ["--threads", str(args.threads)]
    precision = "bf16" if bf16_arithmetic() else "no"
    rows: list[Row] = []
    started = time.perf_counter()
    print(
        f"working in {work}; mixed precision: {precision} "
        f"({'native bf16' if precision == 'bf16' else 'this CPU has no bf16 arithmetic'})"
    )

    # 1. The base, both forms, and the offline single-file load.
    from ccis.diffusion.sd15 import SD15_CONFIG, save_sd15_shaped

    config_dir = args.config_dir or SD15_CONFIG
    base_dir = work / "base"
    if args.config_dir is None:
        wall, peak = run(ccis("make-sd15-shaped", base_dir, *threads), logs / "make.log", env)
    else:  # development: the same writer at narrower widths
        began = time.perf_counter()
        save_sd15_shaped(base_dir, config_dir=config_dir)
        wall, peak = time.perf_counter() - began, float("nan")
    folder, single = base_dir / "diffusers", base_dir / "sd15.safetensors"
    counts = parameter_counts(generators, paper, config_dir)
    rows.append(
        Row(
            "make-sd15-shaped",
            frozen=counts["frozen"],
            peak_gib=peak,
            wall_s=wall,
            notes=[f"file {single.stat().st_size / GIB:.2f} GiB"],
        )
    )
    compare = spawn_worker(
        "compare-bases",
        logs / "compare.log",
        folder,
        single,
        *([config_dir] if args.config_dir else []),
    )
    same = all(compare[n]["same"] for n in ("unet", "vae", "text_encoder"))
    rows.append(
        Row(
            "load_sd15 folder + single file (offline)",
            peak_gib=compare["command_peak_gib"],
            wall_s=compare["command_wall_s"],
            notes=[
                f"folder {compare['folder_s']:.0f} s, file {compare['single_s']:.0f} s",
                "same weights" if same else "WEIGHTS DIFFER",
            ],
        )
    )
    if not same or not compare["tokenizer_same"]:
        raise SystemExit(f"folder and single file differ: {compare}")

    # 2. Data: phantom frames, captioned with the base's tokenizer counting tokens.
    side = args.resolution
    data = work / "data"
    for split, count, centre in (("train", 4, 0), ("test", 4, 1)):
        run(
            ccis(
                "prepare",
                "--split",
                split,
                "--out",
                data,
                "--phantom-count",
                count,
                "--centre",
                centre,
                "--width",
                side + side // 8,
                "--height",
                side,
            ),
            logs / f"prepare-{split}.log",
            env,
        )
    triplets = work / "captions" / "train.parquet"
    run(
        ccis(
            "caption",
            "--manifest",
            data / "train.parquet",
            "--out",
            triplets,
            "--tokenizer",
            folder / "tokenizer",
        ),
        logs / "caption.log",
        env,
    )

    # 3. Every generator: train 2 steps, resume, synthesize 2 images.
    model, train = paper["model"], paper["train"]
    train_args = [
        "--steps",
        2,
        "--checkpoint-every",
        1,
        "--validate-every",
        0,
        "--batch-size",
        args.batch_size,
        "--resolution",
        args.resolution,
        "--learning-rate",
        train["learning_rate"],
        "--lambda-learning-rate",
        train["lambda_learning_rate"],
        "--taam-lambda",
        train["taam_lambda"],
        "--max-grad-norm",
        train["max_grad_norm"],
        "--mixed-precision",
        precision,
        "--conditioning-channels",
        ",".join(map(str, model["conditioning_channels"])),
        "--extractor-channels",
        ",".join(map(str, model["unicontrolnet"]["extractor_channels"])),
        "--inject-channels",
        ",".join(map(str, model["unicontrolnet"]["inject_channels"])),
        *(["--gradient-checkpointing"] if train["gradient_checkpointing"] else []),
        *threads,
    ]
    synthesis = paper["synthesis"]
    measured: dict[str, Row] = {}
    for name in generators:
        out, gen_work = work / "models" / name, work / "train" / name
        # The base as a single file: the form a user offline is most likely to have.
        cmd = ccis(
            "train-generator",
            "--generator",
            name,
            "--triplets",
            triplets,
            "--base",
            single if args.config_dir is None else folder,
            "--out",
            out,
            "--work",
            gen_work,
            *train_args,
        )
        wall, peak = run(cmd, logs / f"train-{name}.log", env)
        first = read_step_seconds(gen_work / "loss.csv")
        # The same command again: the finished run left checkpoint-1, so it resumes there
        # and trains step 2 again (the loss log keeps one row per step).
        resume_wall, resume_peak = run(cmd, logs / f"resume-{name}.log", env)
        resumed_text = (logs / f"resume-{name}.log").read_text()
        if "resumed from" not in resumed_text:
            raise SystemExit(f"{name}: the second run did not resume:\n{resumed_text[-3000:]}")
        steps = read_step_seconds(gen_work / "loss.csv")
        row = Row(
            f"train-generator {name}",
            trainable=counts[name],
            frozen=counts["frozen"],
            controlnet=counts["diffusers ControlNet"],
            peak_gib=max(peak, resume_peak),
            step_s=min(first + steps),
            wall_s=wall,
            notes=[
                f"steps {', '.join(f'{s:.1f}' for s in first)} s; resumed at 1, "
                f"step 2 again {steps[-1]:.1f} s ({resume_wall:.0f} s wall)"
            ],
        )
        rows.append(row)
        measured[name] = row
        syn_log = logs / f"synthesize-{name}.log"
        wall, peak = run(
            ccis(
                "synthesize",
                "--generator",
                name,
                "--base",
                folder,
                "--branch",
                out,
                "--triplets",
                triplets,
                "--out",
                work / "synthetic" / f"{name}.parquet",
                "--images",
                work / "synthetic" / name,
                "--shard",
                "0/2",
                "--steps",
                args.ddim_steps,
                "--guidance-scale",
                synthesis["guidance_scale"],
                "--resolution",
                args.resolution,
                "--batch-size",
                2,
                *threads,
            ),
            syn_log,
            env,
        )
        rows.append(
            Row(
                f"synthesize {name} (2 images)",
                peak_gib=peak,
                wall_s=wall,
                step_s=synthesis_step_seconds(syn_log),
                notes=[
                    f"DDIM {args.ddim_steps}, CFG {synthesis['guidance_scale']:g}: s per step "
                    "for 2 images (UNet batch 4), prompts and VAE decoding included"
                ],
            )
        )
        if not args.keep:
            shutil.rmtree(gen_work, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)

    # 4. The segmenters at 352², from random-weight ImageNet-layout backbone files.
    if not args.skip_segmenters:
        seg = paper["segmentation"]
        two = work / "data2"
        run(
            ccis(
                "prepare",
                "--split",
                "train",
                "--out",
                two,
                "--phantom-count",
                2,
                "--width",
                396,
                "--height",
                352,
            ),
            logs / "prepare-seg.log",
            env,
        )
        for name in seg["models"]:
            backbone = seg[name]["backbone"]
            weights = work / "timm" / f"{backbone}.safetensors"
            _random_backbone_file(backbone, weights)
            out = work / "segmentation" / name
            options = [
                ("--learning-rate", seg[name].get("learning_rate")),
                ("--weight-decay", seg[name].get("weight_decay")),
                ("--drop-path-rate", seg[name].get("drop_path_rate")),
            ]
            cmd = ccis(
                "train-segmenter",
                "--model",
                name,
                "--backbone",
                backbone,
                "--train",
                two / "train.parquet",
                "--out",
                out,
                "--work",
                work / "segwork" / name,
                "--epochs",
                1,
                "--batch-size",
                2,
                "--size",
                seg["size"],
                "--scales",
                ",".join(map(str, seg["scales"])),
                "--clip",
                seg["clip"],
                "--pretrained-file",
                weights,
                *[x for k, v in options if v is not None for x in (k, v)],
                *threads,
            )
            wall, peak = run(cmd, logs / f"segmenter-{name}.log", env)
            import pandas as pd

            epoch_s = float(pd.read_csv(out / "loss.csv")["seconds"].iloc[0])
            trainable = _segmenter_parameters(out)
            rows.append(
                Row(
                    f"train-segmenter {name} ({backbone}, {seg['size']}²)",
                    trainable=trainable,
                    frozen=0,
                    peak_gib=peak,
                    wall_s=wall,
                    step_s=epoch_s,
                    notes=[f"batch 2 at {len(seg['scales'])} scales: s per multi-scale step"],
                )
            )
            wall, peak = run(
                ccis(
                    "evaluate-segmenter",
                    "--model-dir",
                    out,
                    "--test",
                    f"phantom={data / 'test.parquet'}",
                    "--out",
                    work / "segmentation" / f"{name}.parquet",
                    "--model",
                    name,
                    "--setting",
                    "real",
                    "--seed",
                    0,
                    *threads,
                ),
                logs / f"evaluate-{name}.log",
                env,
            )
            rows.append(
                Row(
                    f"evaluate-segmenter {name} (4 images)", peak_gib=peak, wall_s=wall, step_s=None
                )
            )

    # 5. The model alone.
    alone: dict[tuple[str, bool], dict] = {}
    if not args.skip_model_alone:
        for checkpointing in (False, True):
            variants = ["controlnet", "ccis"] + ([] if checkpointing else ["ccis-masked"])
            for variant in variants:
                log = logs / f"alone-{variant}-{int(checkpointing)}.log"
                alone[variant, checkpointing] = spawn_worker(
                    "model-alone", log, variant, args.resolution, int(checkpointing), args.threads
                )

    print_table(rows, measured, alone, args, precision, time.perf_counter() - started)
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _random_backbone_file(backbone: str, path: Path) -> None:
    """The full timm model's state dict (classifier included) with random weights: the
    layout of the ImageNet file the paper configuration's ``pretrained_file`` names."""
    import timm
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = timm.create_model(backbone, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _segmenter_parameters(folder: Path) -> int:
    """Trainable parameters of a trained segmenter (backbone included: it is fine-tuned)."""
    from ccis.segmentation.predict import load_segmenter

    return sum(p.numel() for p in load_segmenter(folder).parameters() if p.requires_grad)


def _fmt(value, spec: str, missing: str = "–") -> str:
    if value is None or value != value:  # None or NaN
        return missing
    return format(value, spec)


def print_table(rows, measured, alone, args, precision: str, total_s: float) -> None:
    print()
    print(
        f"Paper-shape rehearsal at {args.resolution}², training batch {args.batch_size}, "
        f"{'bf16 autocast' if precision == 'bf16' else 'fp32 (no bf16 arithmetic on this CPU)'}, "
        f"gradient checkpointing, {args.threads} threads; total {total_s / 60:.1f} min"
    )
    print()
    header = (
        "| stage | trainable | frozen | diffusers ControlNet | peak RSS (GiB) | "
        "s/step | wall (s) | notes |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = f" ({r.trainable / r.controlnet:.4f}×)" if r.trainable and r.controlnet else ""
        cells = [
            r.stage,
            _fmt(r.trainable, ",") + ratio,
            _fmt(r.frozen, ","),
            _fmt(r.controlnet, ","),
            _fmt(r.peak_gib, ".2f"),
            _fmt(r.step_s, ".2f"),
            _fmt(r.wall_s, ".0f"),
            "; ".join(r.notes),
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    if "ccis" in measured and "controlnet" in measured:
        a, b = measured["ccis"], measured["controlnet"]
        print(
            f"train-generator, CCIS-Diff / ControlNet at {args.resolution}² (whole command): "
            f"step time {a.step_s / b.step_s:.3f}×, peak RSS {a.peak_gib / b.peak_gib:.3f}×"
        )
    if alone:
        print()
        print(
            f"Model alone at {args.resolution}² (SD v1.5-shaped UNet + branch, random weights, "
            f"fp32, batch 1, one AdamW step after a warm-up, {args.threads} threads):"
        )
        print("| branch | checkpointing | CPU s/step | wall s/step | memory growth (GiB) |")
        print("|---|---|---:|---:|---:|")
        for (variant, ckpt), r in alone.items():
            print(
                f"| {variant} | {'yes' if ckpt else 'no'} | {r['cpu_s']:.1f} | "
                f"{r['wall_s']:.1f} | {r['growth_gib']:.2f} |"
            )
        for ckpt in (False, True):
            if ("ccis", ckpt) in alone and ("controlnet", ckpt) in alone:
                a, b = alone["ccis", ckpt], alone["controlnet", ckpt]
                print(
                    f"CCIS-Diff / ControlNet, {'with' if ckpt else 'without'} gradient "
                    f"checkpointing: step time {a['cpu_s'] / b['cpu_s']:.3f}× (CPU), "
                    f"{a['wall_s'] / b['wall_s']:.3f}× (wall); memory "
                    f"{a['growth_gib'] / b['growth_gib']:.3f}× (target ≤ 1.15 each)"
                )
        if ("ccis-masked", False) in alone:
            a, b = alone["ccis-masked", False], alone["controlnet", False]
            print(
                f"(TAAM as a float mask, as before: step time {a['cpu_s'] / b['cpu_s']:.3f}× "
                f"(CPU), memory {a['growth_gib'] / b['growth_gib']:.3f}×)"
            )


if __name__ == "__main__":
    main()
