"""Train: pretraining, fine-tuning or linear probing, as the config's TASK says.

    python tools/train.py --config configs/pretrain/ssv2_vit_b.yaml OUTPUT_DIR runs/x TRAIN.BATCH_SIZE 16
    torchrun --nproc_per_node 8 tools/train.py --config ...
    deepspeed tools/train.py --config ...
    sbatch tools/slurm/train.sbatch configs/pretrain/k400_vit_b.yaml OUTPUT_DIR runs/k400

A run in an OUTPUT_DIR that holds checkpoints resumes from the newest complete one.
`--print-config` prints the resolved config (includes and overrides applied, validated) and exits.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from videomae.cli import EXIT_INTERRUPTED, EXIT_PREEMPTED, run_tool  # noqa: E402
from videomae.engine.config import ConfigError, load_config  # noqa: E402


def build_task(cfg):
    from videomae.engine.tasks import PretrainTask

    tasks = {"pretrain": PretrainTask}
    try:
        from videomae.engine.classification import ClassificationTask, LinearProbeTask
        tasks.update(finetune=ClassificationTask, linprobe=LinearProbeTask)
    except ImportError:
        pass
    if cfg.TASK not in tasks:
        raise ConfigError(f"TASK {cfg.TASK!r} is not available; choose from {sorted(tasks)}")
    return tasks[cfg.TASK](cfg)


def batch_warning(cfg, world: int) -> str | None:
    """One line when the global batch (videos per optimizer step) differs from the recipe's
    (TRAIN.RECIPE_GLOBAL_BATCH), with the TRAIN.ACCUM_STEPS that restores it where one does. The lr
    follows the batch (BASE_LR x batch / 256) either way; the published figures are for the recipe's."""
    t = cfg.TRAIN
    recipe, per_step = t.RECIPE_GLOBAL_BATCH, t.BATCH_SIZE * world
    if not recipe or per_step * t.ACCUM_STEPS == recipe:
        return None
    fix = (f"; TRAIN.ACCUM_STEPS {recipe // per_step} restores it" if recipe % per_step == 0
           else "; choose TRAIN.BATCH_SIZE x TRAIN.ACCUM_STEPS to restore it (docs/reproduce.md)")
    return (f"warning: global batch {per_step * t.ACCUM_STEPS} (TRAIN.BATCH_SIZE {t.BATCH_SIZE} x {world} processes "
            f"x TRAIN.ACCUM_STEPS {t.ACCUM_STEPS}) differs from the recipe's {recipe} (TRAIN.RECIPE_GLOBAL_BATCH){fix}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may inherit with _BASE_)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit without running")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs, e.g. TRAIN.EPOCHS 10")
    args = parser.parse_args(argv)
    if "--print-config" in args.overrides:   # after the first KEY VALUE pair, REMAINDER took it in
        args.overrides.remove("--print-config")
        args.print_config = True
    cfg = load_config(args.config, args.overrides)   # before any data loads
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    from videomae.engine.distributed import detect

    info = detect()
    warning = batch_warning(cfg, info.world_size)
    if warning and info.rank == 0:
        print(warning, file=sys.stderr, flush=True)
    from videomae.engine.trainer import Trainer

    trainer = Trainer(cfg, build_task(cfg))
    try:
        result = trainer.fit()
    except KeyboardInterrupt:   # a second Ctrl-C (the first one checkpoints and exits with 75)
        if trainer.info.is_main:
            from videomae.engine.checkpoint import latest_tag

            last = latest_tag(trainer.ckpt_dir)
            where = (f"the same command resumes from {os.path.join(trainer.ckpt_dir, last)}" if last
                     else "no complete checkpoint yet")
            print(f"aborted by a second Ctrl-C at step {trainer.step}; nothing more was saved; {where}",
                  file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if trainer.info.is_main:
        print(json.dumps(result), flush=True)
    if result["status"] == "preempted" and not result["requeued"]:
        # checkpointed, nobody will restart it: say how, and do not let `train && test` chains go on
        if trainer.info.is_main:
            command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
            print(f"preempted at step {result['step']}, checkpoint saved; resume with the same command:\n"
                  f"  {command}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))   # a known mistake: one line and the exit code of README's table
