"""Run logs: JSON lines (`metrics.jsonl`), TensorBoard scalars, a progress bar -- rank 0 only.

`metrics.jsonl` holds one row per (type, step). A resumed run replays the steps after its checkpoint,
so on start the rows beyond that step are dropped (the file is rewritten atomically) and TensorBoard
hides its events from there on (`purge_step`); `read_metrics` also keeps only the last row per
(type, step), for files written before this rule or cut short in between."""
from __future__ import annotations

import json
import os
import sys
import time


def keep_metrics_through(path: str, step: int) -> int:
    """Drop the rows of steps after `step` (they are about to be replayed); returns how many."""
    from .run_folder import temp_name, writing

    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) == len(lines):
        return 0
    tmp = temp_name(path)
    with writing("the metrics", path, cleanup=(tmp,)):
        with open(tmp, "w") as handle:
            handle.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _row_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")  # a line cut short by a kill: drop it with the replayed ones


class RunLogger:
    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool = True, progress: bool = True,
                 resume_step: int | None = None):
        """`resume_step`: the step the run continues from (0 for a fresh start): rows and
        TensorBoard events of later steps are dropped, since those steps run again."""
        from .run_folder import writing

        self.enabled, self.show_progress = enabled, progress and enabled
        self._jsonl = self._tb = self._bar = self._lines = None
        if not enabled:
            return
        self.path = os.path.join(out_dir, "metrics.jsonl")
        with writing("the metrics", self.path):
            os.makedirs(out_dir, exist_ok=True)
            self.dropped = keep_metrics_through(self.path, resume_step) if resume_step is not None else 0
            self._jsonl = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = resume_step + 1 if resume_step is not None else None
                with writing("TensorBoard events in", os.path.join(out_dir, "tensorboard")):
                    self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=purge)
            except ImportError:  # tensorboard is a dependency, but a lean install still trains
                self._tb = None

    def record(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        from .run_folder import writing

        with writing("the metrics", self.path):
            self._jsonl.write(json.dumps({"type": kind, "step": step, "time": round(time.time(), 3), **values})
                              + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def progress(self, total: int, initial: int, desc: str, seconds: float = 30.0, run_total: int | None = None,
                 run_done: int = 0):
        """A progress display for one epoch: a tqdm bar on a terminal; in a log file or a pipe (SLURM
        `.out`, `| tee`) one plain line every `seconds`, never a carriage return."""
        if not self.show_progress:
            return None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, unit="step",
                             mininterval=0.5, file=sys.stderr)
        elif self._lines is None:
            self._bar = self._lines = ProgressLines(desc, total, initial, seconds, run_total or total, run_done)
        else:  # one display for the whole run: an epoch boundary prints nothing of its own
            self._bar = self._lines
            self._lines.desc, self._lines.total, self._lines.n = desc, total, initial
        return self._bar
    def info(self, message: str) -> None:
        if self.enabled:
            if self._bar is not None:
                self._bar.write(message)
            else:
                print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._lines is not None:
            self._lines.finish()
            self._lines = None
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class ProgressLines:
    """The progress of a run as plain lines, for streams nobody watches redraw: at most one line every
    `seconds` (and one when the run ends), with the step, the fields the loop hands over, and the
    time left for the whole run at the pace measured since this display started."""

    def __init__(self, desc: str, total: int, initial: int, seconds: float, run_total: int, run_done: int,
                 stream=None):
        self.desc, self.total, self.n, self.seconds = desc, total, initial, seconds
        self.run_total, self.run_done, self.stream = run_total, run_done, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.steps_since_start, self.fields, self.printed_at = 0, {}, run_done

    def set_postfix(self, refresh: bool = False, **fields) -> None:
        self.fields = fields

    def update(self, n: int = 1) -> None:
        self.n += n
        self.run_done += n
        self.steps_since_start += n
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        per_step = (now - self.start) / max(self.steps_since_start, 1)
        eta = format_seconds(per_step * max(self.run_total - self.run_done, 0))
        fields = " | ".join(f"{k} {v}" for k, v in self.fields.items())
        self.stream.write(f"{self.desc} step {self.n}/{self.total} (run {self.run_done}/{self.run_total})"
                          f"{' | ' + fields if fields else ''} | ETA {eta}\n")
        self.stream.flush()
        self.printed_at = self.run_done  # the run's count: the epoch's restarts at every epoch

    def write(self, message: str) -> None:
        print(message, flush=True)  # as tqdm.write does: messages on stdout, progress on stderr

    def close(self) -> None:
        pass  # an epoch ends silently; the run's last line comes from finish()

    def finish(self) -> None:
        if self.printed_at != self.run_done:
            self._print(time.monotonic())


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def read_metrics(path: str, kind: str | None = None) -> list[dict]:
    """The rows of `kind` (all kinds when None), the last one per (type, step), in file order."""
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    last = {(r["type"], r.get("step")): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if last[(r["type"], r.get("step"))] == i
            and (kind is None or r["type"] == kind)]
