"""Masking-strategy comparisons: one pretraining run per (strategy, ratio, seed) cell -- and per
reconstruction target with `--targets` -- the same budget for every cell, held-out evaluations, one
report.

Each cell is `tools/train.py` in its own run folder `DIR/cells/<strategy>-<ratio>-s<seed>` (with
`--targets`: `DIR/cells/<target>-<strategy>-<ratio>-s<seed>`), with the comparison's config and
overrides plus `MASK.TYPE`, `MASK.RATIO`, `SEED` (and `MODEL.TARGET`). So each cell has the run
folder's lock, its refusal of a changed recipe (the keys named) and its resume from the newest
checkpoint; this module adds nothing of that kind. Cells of the same SEED are paired: the sampler's
order, the initialisation and the augmentation come from SEED alone, the masks from their own random
stream (`videomae/seeding.py`), so two strategies see the same clips in the same order from the same
start.

A cell is finished when train.py said so (its final JSON, status "finished") and wrote model.pt; the
runner then writes `compare_cell.json` (the train command, steps, wall seconds) and skips the cell
while the command stays the same. A changed command runs train.py again: it refuses a changed
recipe, or finishes at once where the change is one a resume may make.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from ..cli import EXIT_PREEMPTED, UsageError
from .evaluate import METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_TOOL = os.path.join(ROOT, "tools", "train.py")
CELL_FILE, TIME_FILE = "compare_cell.json", "compare_time.json"
# what the runner sets per cell: the user's overrides may not
CELL_KEYS = ("MASK.TYPE", "MASK.RATIO", "SEED", "OUTPUT_DIR")
TARGET_KEYS = ("MODEL.TARGET", "MODEL.NORM_TARGET")   # ... and with --targets, these


@dataclass(frozen=True)
class Cell:
    strategy: str
    ratio: float
    seed: int
    target: str = ""   # MODEL.TARGET of the cell; "" = the config's

    @property
    def name(self) -> str:
        return (f"{self.target}-" if self.target else "") + f"{self.strategy}-{self.ratio:g}-s{self.seed}"

    @property
    def label(self) -> str:
        """How the report names the cell's method: the strategy, and the target when compared."""
        return f"{self.target} / {self.strategy}" if self.target else self.strategy

    def folder(self, out: str) -> str:
        return os.path.join(out, "cells", self.name)

    def overrides(self, out: str) -> list[str]:
        target = ["MODEL.TARGET", self.target] if self.target else []
        return ["MASK.TYPE", self.strategy, "MASK.RATIO", f"{self.ratio:g}", "SEED", str(self.seed), *target,
                "OUTPUT_DIR", self.folder(out)]


def split_list(text: str, kind, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise UsageError(f"--{what} {text!r}: expected a comma-separated list of {kind.__name__} values") from None
    if not values:
        raise UsageError(f"--{what} is empty")
    if len(set(values)) != len(values):
        raise UsageError(f"--{what} {text!r} names a value twice")
    return values


def check_overrides(overrides: list[str], targets: bool = False) -> None:
    options = [k for k in overrides if k.startswith("--")]
    if options:
        raise UsageError(f"{options[0]} after the KEY VALUE overrides: put the options first")
    if len(overrides) % 2:
        raise UsageError(f"overrides come in KEY VALUE pairs; {overrides[-1]!r} has no value")
    fixed = [k for k in overrides[0::2] if k in CELL_KEYS]
    if fixed:
        raise UsageError(f"{', '.join(fixed)} set per cell by the comparison (--strategies, --ratios, --seeds, "
                         "--out); drop them from the overrides")
    if targets:
        fixed = [k for k in overrides[0::2] if k in TARGET_KEYS]
        if fixed:
            raise UsageError(f"{', '.join(fixed)} set per cell by --targets; drop them from the overrides")


def plan(args) -> tuple[list[Cell], list[str]]:
    """The cells, in report order, and the evaluations; unknown strategies or evaluations are a
    usage error (after the config's IMPORTS, so strategies of your own are known)."""
    from ..masking import MASKING_REGISTRY

    strategies = split_list(args.strategies, str, "strategies")
    unknown = [s for s in strategies if s not in MASKING_REGISTRY]
    if unknown:
        known = ", ".join(sorted(MASKING_REGISTRY))
        raise UsageError(f"unknown masking strategy {', '.join(unknown)}; registered: {known} "
                         "(a strategy of your own: IMPORTS my_masks.py)")
    ratios = split_list(args.ratios, float, "ratios")
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise UsageError(f"--ratios: {bad[0]} is not in (0, 1)")
    seeds = split_list(args.seeds, int, "seeds")
    if any(s < 0 for s in seeds):
        raise UsageError("--seeds must be non-negative")
    evals = split_list(args.eval, str, "eval") if args.eval else []
    unknown = [e for e in evals if e not in METRICS]
    if unknown:
        raise UsageError(f"--eval {unknown[0]!r}: choose from {', '.join(METRICS)}")
    targets = [""]
    if getattr(args, "targets", ""):
        from ..targets import TARGET_REGISTRY

        targets = split_list(args.targets, str, "targets")
        unknown = [t for t in targets if t not in TARGET_REGISTRY]
        if unknown:
            raise UsageError(f"unknown reconstruction target {', '.join(unknown)}; registered: "
                             f"{', '.join(sorted(TARGET_REGISTRY))} (a target of your own: IMPORTS my_targets.py)")
    cells = [Cell(s, r, seed, t) for r in ratios for t in targets for s in strategies for seed in seeds]
    return cells, [e for e in METRICS if e in evals]


def read_json(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def finished(cell_dir: str, command: list[str]) -> dict | None:
    """The cell's record if it finished with exactly this train command, else None."""
    record = read_json(os.path.join(cell_dir, CELL_FILE))
    if record and record.get("train_args") == command and os.path.exists(os.path.join(cell_dir, "model.pt")):
        return record
    return None


class CellFailed(RuntimeError):
    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code = code


def train_cell(cell: Cell, cell_dir: str, command: list[str], log, launcher: tuple = (), extra=None) -> dict:
    """Run tools/train.py for the cell (it resumes by itself from the run folder); its output goes
    to `cell_dir/train.log`. Returns the cell's record; CellFailed carries train.py's exit code
    and its one-line reason. `launcher`: what starts the ranks (srun in a SLURM array task); the
    record keeps the train command alone, so a cell finished under SLURM counts as finished here."""
    os.makedirs(cell_dir, exist_ok=True)
    times = read_json(os.path.join(cell_dir, TIME_FILE)) or {"seconds": 0.0}
    start = time.monotonic()
    summary, reason = None, ""
    with open(os.path.join(cell_dir, "train.log"), "a") as logfile:
        logfile.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        logfile.flush()
        proc = subprocess.Popen([*launcher, sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            logfile.write(line)
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                except ValueError:
                    pass
            elif line.startswith(("error:", "config error:")):
                reason = line.strip()
        code = proc.wait()
    # time of the attempts that returned (a killed attempt's time is lost with it)
    times["seconds"] += time.monotonic() - start
    write_json(os.path.join(cell_dir, TIME_FILE), times)
    if code == EXIT_PREEMPTED or (summary or {}).get("status") == "preempted":
        requeued = (summary or {}).get("requeued")
        raise CellFailed(EXIT_PREEMPTED, f"cell {cell.name} was preempted (checkpoint saved); " +
                         ("SLURM requeued it" if requeued else "run the same command again to resume it"))
    if code != 0 or not summary or summary.get("status") != "finished":
        where = os.path.join(cell_dir, "train.log")
        reason = reason or f"tools/train.py exited with {code}"
        raise CellFailed(code or 1, f"cell {cell.name}: {reason} (log: {where})")
    record = {"train_args": command, "steps": summary["step"], "wall_seconds": round(times["seconds"], 1),
              **(extra or {})}
    if "test_top1" in summary:
        record["test_top1"] = summary["test_top1"]
    write_json(os.path.join(cell_dir, CELL_FILE), record)
    return record


def finetune_command(args, cell_dir: str, seed: int) -> list[str]:
    return [TRAIN_TOOL, "--config", os.path.abspath(args.finetune_config), *shlex.split(args.finetune_overrides or ""),
            "MODEL.PRETRAINED", os.path.join(cell_dir, "model.pt"), "SEED", str(seed),
            "OUTPUT_DIR", os.path.join(cell_dir, "finetune")]


def finetuned(cell_dir: str, command: list[str]) -> dict | None:
    """The fine-tuning record if it finished with this command from the cell's current weights."""
    from .evaluate import model_stamp

    record = finished(os.path.join(cell_dir, "finetune"), command)
    if record and record.get("pretrained_stamp") == model_stamp(os.path.join(cell_dir, "model.pt")) \
            and "test_top1" in record:
        return record
    return None


def finetune_cell(cell: Cell, cell_dir: str, command: list[str], log, launcher: tuple = ()) -> float:
    """`finetune`: a fine-tuning run from the cell's weights with the cell's seed (in
    cell_dir/finetune, resumed and skipped like the pretraining); returns its final test top-1."""
    from .evaluate import model_stamp

    record = finetuned(cell_dir, command)
    if record is None:
        stamp = model_stamp(os.path.join(cell_dir, "model.pt"))
        record = train_cell(cell, os.path.join(cell_dir, "finetune"), command, log, launcher,
                            extra={"pretrained_stamp": stamp})
        if "test_top1" not in record:
            raise CellFailed(1, f"cell {cell.name}: the fine-tuning run reported no test top-1 "
                                "(--finetune-config must be a TASK finetune config)")
    return record["test_top1"]


def check_finetune(args, evals: list[str]) -> None:
    from ..engine.config import load_config

    if "finetune" not in evals:
        return
    if not getattr(args, "finetune_config", None):
        raise UsageError("--eval finetune needs --finetune-config CONFIG (a TASK finetune config whose model "
                         "matches the pretraining's geometry)")
    cfg = load_config(args.finetune_config, shlex.split(args.finetune_overrides or ""))
    if cfg.TASK != "finetune":
        raise UsageError(f"--finetune-config {args.finetune_config} has TASK {cfg.TASK}; give a TASK finetune config")


def run(args, log=print) -> int:
    from ..engine.config import load_config
    from ..engine.distributed import use_cuda

    import torch

    check_overrides(args.overrides, bool(getattr(args, "targets", "")))
    config = os.path.abspath(args.config)
    base = load_config(config, args.overrides)   # imports IMPORTS: strategies of your own are known
    if base.TASK != "pretrain":
        raise UsageError(f"{args.config} has TASK {base.TASK}; a masking comparison pretrains (TASK pretrain)")
    cells, evals = plan(args)
    check_finetune(args, evals)
    out = os.path.abspath(args.out)
    if getattr(args, "slurm", False) or getattr(args, "slurm_dry_run", False):
        from .slurm import submit

        if args.collect:
            raise UsageError("--collect writes the report here; submit with --slurm first, then --collect")
        return submit(args, cells, config, out, log)
    only = getattr(args, "cell", None)
    if only is not None and not 0 <= only < len(cells):
        raise UsageError(f"--cell {only}: this comparison has cells 0..{len(cells) - 1}")
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    device = torch.device("cuda" if use_cuda() else "cpu")
    # an array task starts its ranks with srun: a job step, so SLURM's warning signal reaches train.py
    launcher = ("srun", "--kill-on-bad-exit=1") if only is not None and "SLURM_JOB_ID" in os.environ else ()
    done = []
    for i, cell in enumerate(cells, 1):
        if only is not None and i - 1 != only:
            continue
        cell_dir = cell.folder(out)
        command = [TRAIN_TOOL, "--config", config, *args.overrides, *cell.overrides(out)]
        record = finished(cell_dir, command)
        if args.collect:
            if record is None:
                log(f"[{i}/{len(cells)}] {cell.name}: not finished, left out")
                continue
        elif record is None:
            log(f"[{i}/{len(cells)}] {cell.name}: pretraining ({cell_dir})")
            try:
                record = train_cell(cell, cell_dir, command, log, launcher)
            except CellFailed as err:
                log(str(err), file=sys.stderr)
                return err.code
        else:
            log(f"[{i}/{len(cells)}] {cell.name}: finished earlier ({record['steps']} steps), skipped")
        cfg = load_config(config, [*args.overrides, *cell.overrides(out)])
        if args.collect:
            from .evaluate import EVAL_VERSION, model_stamp

            cached = read_json(os.path.join(cell_dir, "compare_eval.json")) or {}
            metrics = cached.get("metrics", {})
            if "finetune" in evals:
                ft = finetuned(cell_dir, finetune_command(args, cell_dir, cell.seed))
                if ft is not None:
                    metrics["finetune_top1"] = ft["test_top1"]
            wanted = [m for e in evals for m in METRICS[e]]
            if cached.get("stamp") != model_stamp(os.path.join(cell_dir, "model.pt")) or \
                    cached.get("version") != EVAL_VERSION or any(m not in metrics for m in wanted):
                log(f"[{i}/{len(cells)}] {cell.name}: not evaluated, left out")
                continue
            result = {"effective_masked_share": cached["effective_masked_share"],
                      "metrics": {m: metrics[m] for m in wanted}}
        else:
            from .evaluate import evaluate_cell

            if evals:
                log(f"[{i}/{len(cells)}] {cell.name}: evaluating {', '.join(evals)}")
            result = evaluate_cell(cfg, cell_dir, evals, device)
            if "finetune" in evals:
                log(f"[{i}/{len(cells)}] {cell.name}: fine-tuning ({os.path.join(cell_dir, 'finetune')})")
                try:
                    result["metrics"]["finetune_top1"] = finetune_cell(
                        cell, cell_dir, finetune_command(args, cell_dir, cell.seed), log, launcher)
                except CellFailed as err:
                    log(str(err), file=sys.stderr)
                    return err.code
        done.append((cell, record, result))
    if only is not None:   # one array task: the report comes from --collect once all have run
        log(f"cell {cells[only].name}: finished and evaluated")
        return 0
    from .report import write_report

    paths = write_report(out, base, config, args.overrides, cells, evals, done)
    log("report: " + ", ".join(paths))
    return 0
