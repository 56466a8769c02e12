"""Stop training when it diverges, before a non-finite step reaches a checkpoint.

Each trainer checks its loss (and gradient norm) before the optimiser step. A NaN or inf
stops the run with :class:`Diverged`, naming the step and the newest checkpoint, which
was written from finite weights and stays as it is; ``ccis`` exits with
:data:`DIVERGED_EXIT`. Every random draw is a function of (seed, step), so re-running the
same settings diverges again at the same step: lower the learning rate (or the mixed
precision), which starts the run afresh.

Mixed precision: under ``fp16`` accelerate uses a dynamic ``GradScaler``, which *expects*
an occasional inf gradient while it searches for its scale: it skips that optimiser step
and halves the scale. Those skipped steps are counted and logged, not treated as
divergence (a non-finite *loss* still is). ``bf16`` has fp32's exponent range and no
scaler: every non-finite value there is divergence.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from ccis.common.checkpoints import complete_checkpoints

if TYPE_CHECKING:  # torch is imported when used: `ccis` imports this module at every start
    import torch

DIVERGED_EXIT = 3


class Diverged(RuntimeError):
    """Training produced a non-finite loss or gradient."""


def last_good(checkpoints: str | os.PathLike) -> str:
    """The newest complete checkpoint in ``checkpoints``, in words."""
    found = complete_checkpoints(checkpoints)
    if not found:
        return f"none in {checkpoints} (a re-run starts from step 0)"
    step, path = found[-1]
    return f"{path} (step {step}, intact)"


def check_finite(
    value: torch.Tensor | float, what: str, job: str, step: int, checkpoints: str | os.PathLike
) -> None:
    """Raise :class:`Diverged` when ``value`` (a loss or gradient norm) is NaN or inf.

    ``step`` is the step being computed (1-based, as the loss log and checkpoints count).
    """
    number = float(value.detach().float().item() if hasattr(value, "detach") else value)
    if math.isfinite(number):
        return
    raise Diverged(
        f"{job} diverged at step {step}: the {what} is {number}. Nothing of this step was "
        f"saved; last good checkpoint: {last_good(checkpoints)}. The same settings diverge "
        "again at the same step: lower the learning rate (or use bf16 or no mixed "
        "precision), which starts afresh."
    )


def gradient_norm(parameters) -> torch.Tensor:
    """The total 2-norm of the parameters' gradients (NaN or inf if any entry is)."""
    import torch

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.nn.utils.get_total_norm(grads)


def describe_skips(skipped: int, steps: int, mixed_precision: str) -> str | None:
    """A log line about optimiser steps the fp16 loss scaler skipped, if any."""
    if not skipped:
        return None
    return (
        f"{mixed_precision} loss scaler skipped {skipped} of {steps} optimiser steps "
        "(inf/NaN gradients while it lowered its scale); those steps changed no weight"
    )
