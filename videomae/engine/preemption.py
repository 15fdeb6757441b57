"""Preemption: SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@120`) or SIGTERM before the time limit.
The handler only raises a flag; the training loop checks it at the next step, saves a checkpoint,
requeues the job (`scontrol requeue`) and exits. The requeued job resumes from that checkpoint.

Ctrl-C (SIGINT) in an interactive run is the same request, made by hand: the first one finishes
the step, checkpoints and exits; a second one aborts at once (KeyboardInterrupt), for a run that
is stuck or a checkpoint nobody wants to wait for. A save cut short that way has no COMPLETE
marker, so the previous complete checkpoint stays the one a resume picks."""
from __future__ import annotations

import os
import signal
import subprocess

FIRST_CTRL_C = ("Ctrl-C: finishing this step, writing a checkpoint, then exiting (code 75, the same command "
                "resumes); press Ctrl-C again to abort at once without saving\n")


class Preemption:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM), ctrl_c: bool = True, announce: bool = True):
        """`announce`: print the one line a first Ctrl-C gets (one rank of many prints it)."""
        self.requested = False
        self.signal_name = ""
        self.interrupted = False
        self.announce = announce
        for sig in signals:
            signal.signal(sig, self._handle)
        if ctrl_c:
            signal.signal(signal.SIGINT, self._ctrl_c)

    def _handle(self, signum, _frame):
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def _ctrl_c(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt   # the second one: abort wherever the main thread is
        self.interrupted = True
        self._handle(signum, frame)
        if self.announce:
            # os.write, not print: the main thread may be inside a write to stderr right now, and a
            # buffered stream re-entered from a signal handler raises instead of writing
            try:
                os.write(2, FIRST_CTRL_C.encode())
            except OSError:
                pass


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job; returns what happened, for the log."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:  # an array task requeues alone
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job = env.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job: exiting without requeue"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return f"scontrol requeue {job} failed: {result.stderr.strip()}"
    return f"requeued SLURM job {job}"
