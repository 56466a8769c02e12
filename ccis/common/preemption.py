"""Stop long jobs cleanly when the scheduler asks: checkpoint at a step boundary, then exit.

SLURM sends SIGTERM when it preempts or cancels a job (and SIGKILL ``KillWait`` seconds
later, 30 by default), and the SLURM profile's ``--signal=TERM@300`` sends it five minutes
before the time limit; SIGUSR1 is handled the same way for scripts that ask for it
(``sbatch --signal=B:USR1@300`` around ``exec ccis ...``; the profile cannot use it, as
it would kill the Snakemake running the rule inside the job). Either only sets a flag; the loop
reads it at its next step boundary, writes a checkpoint of that step, and raises
:class:`Preempted`, which ``ccis`` turns into exit code :data:`PREEMPTED_EXIT`. Re-running
the same command resumes from that checkpoint. Repeated signals change nothing: under
SLURM one stop often arrives twice (slurmstepd signals every process of the step, and a
launcher such as ``accelerate launch`` forwards its own copy), and dying on the second
would lose the checkpoint being written. SIGKILL still stops a process at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry".
PREEMPTED_EXIT = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(RuntimeError):
    """A job stopped on request after saving its progress; re-running it continues."""

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """Set by SIGTERM/SIGUSR1 while :func:`stop_requests` is active; read at step boundaries."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def agreed(self, accelerator=None) -> bool:
        """Whether any process was asked to stop. With several processes every one must stop
        at the same step (the checkpoint is collective), so the flag is reduced over them."""
        if accelerator is None or accelerator.num_processes == 1:
            return bool(self)
        import torch

        flag = torch.tensor([1.0 if self else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def stop(self, what: str, checkpoint: Path | None) -> Preempted:
        """The exception to raise once progress is saved (logged here, once)."""
        where = f"checkpoint {checkpoint}" if checkpoint else "the files written so far"
        message = (
            f"{what}: stopped on {self.signal_name or 'request'}; progress is in {where}. "
            f"Run the same command again to continue (exit code {PREEMPTED_EXIT})."
        )
        log.warning("%s", message)
        return Preempted(message, checkpoint)


@contextmanager
def stop_requests(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Catch ``signals`` while the block runs, recording them in the yielded request.

    Only the main thread can install signal handlers; elsewhere (a test runner's worker
    thread) the request simply never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if request:
            log.info("received %s again: already stopping", name)
            return
        request.signal_name = name
        log.warning("received %s: stopping at the next step boundary", name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
