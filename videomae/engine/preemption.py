"""Preemption: SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@120`) or SIGTERM before the time limit.
The handler only raises a flag; the training loop checks it at the next step, saves a checkpoint,
requeues the job (`scontrol requeue`) and exits. The requeued job resumes from that checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess


class Preemption:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.requested = False
        self.signal_name = ""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name


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
