"""A comparison as one SLURM job array: one array task per cell, each running this same tool for
its cell alone (`--cell I`: pretrain with tools/train.py under srun, then evaluate), with the
project's preemption handling (tools/slurm/train.sbatch): SIGUSR1 180 s before the time limit, a
checkpoint, `scontrol requeue` of that array task alone, and a resume when it runs again. Array
tasks ask for `--gpus-per-cell` GPUs each (one rank per GPU), so SLURM packs several cells on a
multi-GPU node. `--collect` then writes the report from the finished cells.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from ..cli import UsageError

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                    "compare_masking.py")


def cell_arguments(args, config: str, out: str) -> list[str]:
    """The tool's arguments every array task repeats (absolute paths: the job may start elsewhere)."""
    return ["--config", config, "--strategies", args.strategies, "--ratios", args.ratios, "--seeds", args.seeds,
            "--eval", args.eval, "--out", out,
            *(["--targets", args.targets] if getattr(args, "targets", "") else []),
            *(["--finetune-config", os.path.abspath(args.finetune_config),
               "--finetune-overrides", args.finetune_overrides] if getattr(args, "finetune_config", "") else []),
            *args.overrides]


def sbatch_script(args, cells, config: str, out: str) -> str:
    gpus = args.gpus_per_cell
    if gpus < 0:
        raise UsageError(f"--gpus-per-cell {gpus}: give 1 or more GPUs, or 0 for one CPU process per cell")
    resources = [f"#SBATCH --ntasks={max(gpus, 1)}"]
    if gpus > 0:
        resources.append("#SBATCH --gpus-per-task=1")
    names = "\n".join(f"#   {i}: {cell.name}" for i, cell in enumerate(cells))
    command = " ".join(shlex.quote(a) for a in ["--cell", "$CELL", *cell_arguments(args, config, out)])
    command = command.replace("'$CELL'", '"$SLURM_ARRAY_TASK_ID"')
    log_dir = os.path.join(out, "slurm")
    return f"""#!/bin/bash
# Masking comparison: one array task per cell; tools/compare_masking.py --collect writes the report.
{names}
#SBATCH --job-name=compare-masking
#SBATCH --array=0-{len(cells) - 1}
{chr(10).join(resources)}
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={log_dir}/cell-%a.out
set -euo pipefail
PYTHON=${{PYTHON:-{shlex.quote(sys.executable)}}}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
echo "[$(date -Is)] array task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}) on $SLURM_JOB_NODELIST"
exec "$PYTHON" {shlex.quote(TOOL)} {command}
"""


def submit(args, cells, config: str, out: str, log=print) -> int:
    script = sbatch_script(args, cells, config, out)
    if args.slurm_dry_run:
        log(script, end="")
        return 0
    os.makedirs(os.path.join(out, "slurm"), exist_ok=True)
    path = os.path.join(out, "slurm", "compare.sbatch")
    with open(path, "w") as handle:
        handle.write(script)
    command = ["sbatch", "--parsable", *shlex.split(args.sbatch or ""), path]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError(f"sbatch not found: is this a SLURM login node? (the script is {path})") from None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise UsageError(f"sbatch refused {path}: {reason}")
    job = result.stdout.strip().split(";")[0]
    collect = " ".join(shlex.quote(a) for a in [sys.executable, TOOL, "--collect",
                                                *cell_arguments(args, config, out)])
    log(f"submitted job array {job}: {len(cells)} cells ({path}; logs in {os.path.join(out, 'slurm')})\n"
        f"when it has finished, write the report with:\n  {collect}")
    return 0
