"""Compare masking strategies: pretrain one cell per (strategy, ratio, seed) with the same budget,
evaluate each on held-out data, and write one report.

    python tools/compare_masking.py --config configs/demo/pretrain.yaml --strategies tube,random,frame \
        --ratios 0.9 --seeds 0,1,2 --eval recon,knn,probe --out compare_runs [KEY VALUE ...]

`--eval finetune --finetune-config configs/demo/finetune.yaml` adds a short fine-tune per cell (the
expensive one; its budget is that config's).

Each cell pretrains with tools/train.py in DIR/cells/<strategy>-<ratio>-s<seed> (KEY VALUE pairs
apply to every cell; MASK.TYPE, MASK.RATIO, SEED and OUTPUT_DIR are set per cell). The same command
again skips finished cells and resumes unfinished ones; a cell whose stored config differs is
refused with the keys named. `--targets pixel,hog,frame_diff` adds MODEL.TARGET to the cells (folders
DIR/cells/<target>-<strategy>-<ratio>-s<seed>), filling the report's `target` column. `--collect` only builds the report, from the cells already finished
and evaluated. Writes DIR/results.csv, DIR/summary.md and DIR/summary.png (docs/compare.md).

`--slurm` submits the cells as one SLURM job array instead (one task per cell, preemption handled
as in tools/slurm/train.sbatch; `--slurm-dry-run` prints the script); `--collect` then reports.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from videomae.cli import run_tool  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pretraining config (TASK pretrain)")
    parser.add_argument("--strategies", default="tube,random,frame", help="registered masking strategies")
    parser.add_argument("--ratios", default="0.9", help="MASK.RATIO values")
    parser.add_argument("--targets", default="", help="reconstruction targets (MODEL.TARGET), e.g. pixel,hog,frame_diff: "
                                                      "one set of cells per target (default: the config's target)")
    parser.add_argument("--seeds", default="0,1,2", help="SEED values; cells of one seed are paired")
    parser.add_argument("--eval", default="recon,knn,probe", help="any of recon, knn, probe, finetune")
    parser.add_argument("--finetune-config", default="",
                        help="--eval finetune: the fine-tuning recipe (TASK finetune) run from each cell's weights "
                             "with the cell's seed, in DIR/cells/<cell>/finetune; reports its final test top-1")
    parser.add_argument("--finetune-overrides", default="",
                        help="KEY VALUE pairs for the fine-tuning runs, one quoted string, e.g. "
                             "\"DATA.ROOT /data/ssv2 TRAIN.EPOCHS 10\"")
    parser.add_argument("--out", required=True, help="folder for the cells and the report")
    parser.add_argument("--collect", action="store_true",
                        help="train and evaluate nothing: report the cells finished and evaluated so far")
    slurm = parser.add_argument_group("SLURM: one array task per cell")
    slurm.add_argument("--slurm", action="store_true",
                       help="write DIR/slurm/compare.sbatch (a job array, one task per cell) and submit it")
    slurm.add_argument("--slurm-dry-run", action="store_true", help="print that script, submit nothing")
    slurm.add_argument("--gpus-per-cell", type=int, default=1,
                       help="GPUs (one rank each) per cell; 0: one CPU process. The global batch is "
                            "TRAIN.BATCH_SIZE x this x TRAIN.ACCUM_STEPS, as in the recipe")
    slurm.add_argument("--sbatch", default="", help="more sbatch options, e.g. \"--time 24:00:00 --partition gpu\"")
    slurm.add_argument("--cell", type=int, default=None, help=argparse.SUPPRESS)   # what one array task runs
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every cell")
    args = parser.parse_args(argv)
    from videomae.compare.runner import run

    return run(args)


if __name__ == "__main__":
    sys.exit(run_tool(main))
