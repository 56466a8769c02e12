"""Train a segmenter (PraNet, Polyp-PVT, PVT-CASCADE) on real (+ synthetic) pairs, as the
reference scripts do.

Per batch, one optimiser step per multi-scale rate (0.75/1/1.25 → sizes rounded to
multiples of 32), loss = sum of structure losses of every output map (the released
code's form by default, ``ccis.segmentation.loss``), gradients clamped
*by value* to ±``clip`` (the references' ``clip_gradient`` calls ``grad.clamp_`` on every
parameter, i.e. ``torch.nn.utils.clip_grad_value_``, not a norm clip). Optimisers: Adam
for PraNet, AdamW with weight decay 1e-4 for Polyp-PVT and PVT-CASCADE, lr 1e-4, no
schedule (the references' step decay never triggers within their epoch counts). We keep
the last epoch's weights: the Polyp-PVT and CASCADE scripts pick the "best" epoch on test
data, which leaks the test set into model selection. The references loop ``range(1, epoch)``: their
"20" and "100" epochs are 19 and 99, which is what ``configs/paper.yaml`` asks for.

``repeat`` lists the training pairs that many times per epoch: ``real ×2`` sees the
real set twice an epoch, as many optimiser steps as real + one synthetic set of the
same size, so that "synthetic data helps" can be told apart from "more steps help".

A checkpoint is written after every epoch; a killed run resumes from the newest one.
Data order and stochastic depth are functions of (seed, epoch), so a resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ccis.common.atomic import atomic_dir
from ccis.common.checkpoints import resume_from, save_checkpoint
from ccis.common.divergence import check_finite, gradient_norm
from ccis.common.loss_log import append_row, trim_rows
from ccis.common.preemption import stop_requests
from ccis.common.provenance import claim, fingerprint
from ccis.segmentation.data import SegmentationData, epoch_batches, rescale, scale_sizes
from ccis.segmentation.loss import LOSSES, boundary_weights, structure_loss
from ccis.segmentation.models import build_segmenter
from ccis.segmentation.registry import segmenter

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
CONFIG = "config.json"
LOSS_LOG = "loss.csv"
POSITION = "position.json"
RNG = "rng.pt"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(
    model_name: str, params, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimiser of the model's reference script (Adam for PraNet, AdamW for Polyp-PVT;
    ``ccis.segmentation.registry``)."""
    cls = OPTIMIZERS[segmenter(model_name).optimizer]
    # foreach: one vectorised update instead of a Python loop over tensors (same maths);
    # it is the default on GPUs only, and the loop was a fifth of a CPU step.
    return cls(params, lr=learning_rate, weight_decay=weight_decay, foreach=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """Torch seed of ``epoch`` (stochastic depth): randomness by position, not history."""
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0])


def train_segmenter(
    model_name: str,
    backbone: str,
    manifests: list[str | os.PathLike],
    out: str | os.PathLike,
    work: str | os.PathLike,
    epochs: int,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    size: int = 352,
    scales: tuple[float, ...] = (0.75, 1.0, 1.25),
    clip: float = 0.5,
    seed: int = 0,
    weight_decay: float | None = None,
    drop_path_rate: float | None = None,
    pretrained_file: str | os.PathLike | None = None,
    threads: int | None = None,
    loss: str = "reference",
    soft_masks: bool = True,
    repeat: int = 1,
) -> Path:
    """Train ``model_name`` on ``manifests`` and write ``out`` (weights, config, loss log).

    ``work`` keeps the per-epoch checkpoints and the loss log between runs (resume).
    ``weight_decay`` and ``drop_path_rate`` default to the model's reference values;
    ``loss`` (reference | weighted), ``soft_masks`` and ``repeat`` are described above.
    """
    entry = segmenter(model_name)
    if epochs < 1 or batch_size < 1 or size < 32 or not scales or repeat < 1:
        raise ValueError(
            f"need epochs ≥ 1, batch size ≥ 1, size ≥ 32, a scale and repeat ≥ 1; got "
            f"{epochs}, {batch_size}, {size}, {list(scales)}, {repeat}"
        )
    if loss not in LOSSES:
        raise ValueError(f"unknown structure-loss form {loss!r}; known: {', '.join(LOSSES)}")
    if threads:
        torch.set_num_threads(threads)
    if weight_decay is None:
        weight_decay = entry.weight_decay
    if drop_path_rate is None:
        drop_path_rate = entry.drop_path_rate
    manifests = [Path(m) for m in manifests]
    work, out = Path(work), Path(out)
    settings = dict(
        model=model_name, backbone=backbone, batch_size=batch_size,
        learning_rate=learning_rate, size=size, scales=[float(s) for s in scales], clip=clip,
        seed=seed, weight_decay=weight_decay, drop_path_rate=drop_path_rate,
        optimizer=entry.optimizer,
        pretrained_file=str(pretrained_file) if pretrained_file else None,
        loss=loss, soft_masks=soft_masks, repeat=repeat,
        checkpoint_unit="batch",  # (was "epoch": such old work folders are started afresh)
    )  # fmt: skip
    # Epochs may be raised to train on; anything else changes the run, so clear old work.
    inputs = manifests + ([Path(pretrained_file)] if pretrained_file else [])
    from accelerate import Accelerator

    # One process on the CPU or a GPU; `accelerate launch` runs one per GPU (data parallel,
    # each process takes every world-th image of a batch, so the batch stays global).
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    settings["processes"] = world  # orders the data
    if accelerator.is_main_process:
        claim(work, fingerprint(settings, inputs))
    accelerator.wait_for_everyone()

    data = SegmentationData(manifests, size, soft_masks=soft_masks)
    count = len(data) * repeat  # positions per epoch; position i is pair i mod len(data)
    torch.manual_seed(seed)  # initialisation of the decoder layers
    model = build_segmenter(model_name, backbone, pretrained_file, drop_path_rate)
    device = accelerator.device  # the GPU when there is one; the demo runs on the CPU
    optimizer = make_optimizer(model_name, model.parameters(), learning_rate, weight_decay)
    net = model  # the module itself; ``model`` becomes its (possibly wrapped) training copy
    model, optimizer = accelerator.prepare(model, optimizer)
    sizes = scale_sizes(size, list(scales))
    log.info(
        "training %s (%s, %.1fM parameters) on %d pairs × %d: %d epochs, batch %d, sizes %s, "
        "%s lr %g wd %g, clamp ±%g, %s loss, %s masks, seed %d, %d threads, on %s × %d "
        "processes",
        model_name, backbone, sum(p.numel() for p in model.parameters()) / 1e6, len(data),
        repeat, epochs, batch_size, sizes, settings["optimizer"], learning_rate, weight_decay,
        clip, loss, "soft" if soft_masks else "binary", seed, torch.get_num_threads(), device,
        world,
    )  # fmt: skip

    # Checkpoints are numbered in batches (``epoch * per_epoch + batch``): one is written at
    # the end of every epoch and, on a stop request (SIGTERM, SIGUSR1), after the batch in
    # hand. A mid-epoch one also keeps the epoch's losses so far and the RNG state (drop
    # path draws from it), so the rest of the epoch continues exactly.
    per_epoch = len(epoch_batches(count, batch_size, seed, 0))
    position: dict = {"losses": [], "seconds": 0.0}
    resumed_rng: dict = {}

    def write(folder: Path) -> None:
        save_file(_cpu_state(net), folder / WEIGHTS)
        torch.save(optimizer.state_dict(), folder / OPTIMIZER)
        (folder / POSITION).write_text(json.dumps(position))
        torch.save(_rng_state(), folder / RNG)

    def load(folder: Path) -> None:
        net.load_state_dict(load_file(folder / WEIGHTS))
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER, weights_only=True))
        position.update(json.loads((folder / POSITION).read_text()))
        resumed_rng.update(torch.load(folder / RNG, weights_only=True))

    checkpoints = work / "checkpoints"
    start_step = resume_from(checkpoints, load)
    start, skip = divmod(start_step, per_epoch)  # whole epochs done, batches of the next
    loss_log = work / LOSS_LOG
    if accelerator.is_main_process:
        trim_rows(loss_log, start)
    accelerator.wait_for_everyone()
    if start >= epochs:
        log.info("%s already holds epoch %d of %d", checkpoints, start, epochs)
    elif skip:
        log.info("continuing epoch %d at batch %d of %d", start + 1, skip + 1, per_epoch)

    progress = tqdm(
        total=epochs * per_epoch, initial=min(start_step, epochs * per_epoch),
        desc=f"train {model_name}", unit="batch", disable=not accelerator.is_main_process,
    )  # fmt: skip
    with stop_requests() as stop:
        for epoch in range(start, epochs):
            began = time.perf_counter()
            torch.manual_seed(epoch_seed(seed, epoch))
            model.train()
            losses, seconds_before, first = [], 0.0, 0
            if epoch == start and skip:
                _set_rng_state(resumed_rng)
                losses, seconds_before, first = position["losses"], position["seconds"], skip
            batches = epoch_batches(count, batch_size, seed, epoch)
            for b, positions in enumerate(batches[first:], start=first):
                indices = positions % len(data)
                # (a last batch smaller than the process count repeats an image on some)
                mine = indices[rank::world] if len(indices) >= world else indices[:1]
                images, masks = data.batch(mine)
                for step_size in sizes:  # one optimiser step per scale, as the references
                    x, m = (t.to(device) for t in rescale(images, masks, step_size))
                    weights = boundary_weights(m)  # shared by the output maps
                    total = sum(structure_loss(logits, m, weights, loss) for logits in model(x))
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(total)
                    # Before the step: a NaN must reach no weight a checkpoint could save. The
                    # value clamp keeps NaN, so the clamped gradients show it too.
                    mean = accelerator.reduce(total.detach(), reduction="mean")
                    accelerator.clip_grad_value_(model.parameters(), clip)
                    here = (f"training {model_name} (epoch {epoch + 1}, batch {b + 1})",
                            epoch * per_epoch + b + 1, checkpoints)  # fmt: skip
                    check_finite(mean, "loss", *here)
                    check_finite(gradient_norm(model.parameters()), "gradient norm", *here)
                    optimizer.step()
                    losses.append(float(mean))
                progress.update()
                progress.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.4f}")
                if b + 1 < len(batches) and stop.agreed(accelerator):
                    done = epoch * per_epoch + b + 1
                    position.update(
                        losses=losses, seconds=seconds_before + time.perf_counter() - began
                    )
                    accelerator.wait_for_everyone()
                    if accelerator.is_main_process:
                        save_checkpoint(checkpoints, done, write, keep=1)
                    accelerator.wait_for_everyone()
                    raise stop.stop(
                        f"training {model_name} (epoch {epoch + 1}, batch {b + 1} of "
                        f"{len(batches)})",
                        checkpoints / f"checkpoint-{done}",
                    )
            seconds = seconds_before + time.perf_counter() - began
            position.update(losses=[], seconds=0.0)  # an epoch-end checkpoint needs neither
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                append_row(
                    loss_log,
                    ("epoch", "loss", "seconds"),
                    (epoch + 1, f"{np.mean(losses):.6f}", f"{seconds:.2f}"),
                )
                save_checkpoint(checkpoints, (epoch + 1) * per_epoch, write, keep=1)
            accelerator.wait_for_everyone()
            log.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, epochs, np.mean(losses), seconds)
            if epoch + 1 < epochs and stop.agreed(accelerator):
                raise stop.stop(
                    f"training {model_name} (after epoch {epoch + 1})",
                    checkpoints / f"checkpoint-{(epoch + 1) * per_epoch}",
                )
    progress.close()

    # The run may have stopped at a later epoch before (epochs lowered): use its weights.
    final = max(start, epochs)
    config = dict(settings, epochs=final, train_manifests=[str(m) for m in manifests],
                  train_pairs=len(data), steps_per_epoch=per_epoch * len(sizes))  # fmt: skip
    config.pop("checkpoint_unit")  # how work is stored, not what the model is
    if not accelerator.is_main_process:
        return out
    with atomic_dir(out) as tmp:
        save_file(_cpu_state(net), tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
        if loss_log.exists():
            shutil.copy(loss_log, tmp / LOSS_LOG)
    log.info("wrote %s (%s after %d epochs)", out, model_name, final)
    return out


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _rng_state() -> dict[str, object]:
    """Torch's CPU (and CUDA) random state, for a checkpoint taken in mid-epoch."""
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
