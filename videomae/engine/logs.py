"""Run logs: JSON lines (`metrics.jsonl`), TensorBoard scalars, a progress bar -- rank 0 only."""
from __future__ import annotations

import json
import os
import sys
import time


class RunLogger:
    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool = True, progress: bool = True):
        self.enabled, self.show_progress = enabled, progress and enabled
        self._jsonl = self._tb = self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a lean install still trains
                self._tb = None

    def record(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"type": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def progress(self, total: int, initial: int, desc: str):
        if not self.show_progress:
            return None
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        # batch logs get a line every 30 s instead of a carriage-return storm
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, unit="step",
                         mininterval=0.5 if interactive else 30.0, file=sys.stderr)
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
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str, kind: str | None = None) -> list[dict]:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [r for r in rows if kind is None or r["type"] == kind]
