"""Bad training videos over the whole run: counted over every worker and rank, each file listed
once, and a stop rule that a list below the limit does not trip by chance.

Counting. A training item says which loads failed on its way (`load_failures`, see
`videomae.data.datasets`), and a batch how many loads it took (`loads`); the main process of each
rank adds up the batches it trains on (`BadVideoLedger.note`). Only a `VideoDecodeError` is a bad
load: an undecodable file, or one with fewer frames than DATA.MIN_FRAMES. The ranks combine their
counts only when they combine the loss anyway: at log steps, as three more numbers in the step
statistics' one all-reduce (`StepStats.read`), and once more at each epoch's end, so that the
epoch's row is complete. No step has a collective of its own. The bad files that some rank met for
the first time since the last combination are gathered then, and only when there are any.

Counts are kept for the whole run, not per worker or per epoch: the loader's workers persist over
epochs, and a resumed run takes the counts saved in its checkpoint. Each epoch's own counts go to
its `epoch` row in `metrics.jsonl` (`loads`, `bad_loads`, `bad_files`), TensorBoard
(`epoch/bad_loads`, ...) and, when there were bad loads, a log line.

Listing. Each bad file is listed once for the run, the first time any rank meets it: a log line
with its list file:line and the reason, and a row `path<TAB>list file:line<TAB>reason` in
`OUTPUT_DIR/bad_videos.txt`. A resumed run reads that file back and does not list them again; a
fresh run starts it empty.

Stop rule. With b bad among n loads over the whole run, the list holding N videos and the limit
r = DATA.MAX_BAD_RATIO, training stops when

    n >= min(MIN_SAMPLE, N)   and   wilson_lower(b, n) > r,

wilson_lower being the lower end of the Wilson score interval at one-sided confidence 99.9%
(z = 3.09): the run stops only when the data say, beyond reasonable doubt, that more than r of the
loads fail. A list whose bad share is below r passes any one check with probability above 99.9%
(and a list far below r, such as 3.7% at r = 5%, practically always); a list with 20% bad files
stops within its first pass or two. The minimum sample -- 100 loads, or one pass over a list shorter
than that -- keeps the first few draws from deciding alone (a bad file among the first three loads
would otherwise stop the run). r = 0 stops at the first bad load; r = 1 never stops. The stop is
`TooManyBadVideos`: one line with the counts, the limit and how to override it, exit code 1.
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from ..data.datasets import TooManyBadVideos, read_failure_log

Z_ONE_SIDED_999 = 3.090232306167813   # standard normal quantile at 0.999
MIN_SAMPLE = 100


def wilson_lower(bad: int, loads: int, z: float = Z_ONE_SIDED_999) -> float:
    """Lower end of the Wilson score interval for the share `bad / loads` (0 without loads)."""
    if loads <= 0:
        return 0.0
    p, z2 = bad / loads, z * z
    centre = p + z2 / (2 * loads)
    margin = z * math.sqrt(p * (1 - p) / loads + z2 / (4 * loads * loads))
    return max(0.0, (centre - margin) / (1 + z2 / loads))


def min_sample(list_size: int) -> int:
    return max(1, min(MIN_SAMPLE, list_size))


def should_stop(bad: int, loads: int, limit: float, list_size: int) -> bool:
    """The stop rule of the module docstring."""
    if bad <= 0:
        return False
    if limit <= 0:
        return True
    return loads >= min_sample(list_size) and wilson_lower(bad, loads) > limit


class BadVideoLedger:
    """One rank's view of the run's bad videos (see the module docstring). `info` logs a line
    (rank 0's logger); only rank 0 writes `log_file`."""

    def __init__(self, records, max_ratio: float, log_file: str | None, is_main: bool, world_size: int,
                 device, info=print, resume: bool = False):
        self.records, self.max_ratio, self.log_file = records, max_ratio, log_file
        self.is_main, self.world_size, self.device, self.info = is_main, world_size, device, info
        self.pending = [0, 0]          # this rank since the last combination: loads, bad loads
        self.met: set[int] = set()     # videos this rank has reported (each once)
        self.new: list[tuple[int, str]] = []   # reported by this rank, not yet combined
        self.listed: set[str] = set()  # paths listed for the run (the same on every rank)
        self.loads = self.bad = 0      # the whole run, every rank, as of the last combination
        self.epoch_loads = self.epoch_bad = 0
        if log_file and resume and os.path.exists(log_file):
            self.listed.update(read_failure_log(log_file))
        elif log_file and is_main and not resume and os.path.exists(log_file):
            os.remove(log_file)   # a fresh run in this folder: its own list

    # -- every batch, no communication ----------------------------------------------------------
    def note(self, batch: dict) -> None:
        """Count a batch about to be trained on, and take its load metadata out of it."""
        loads = batch.pop("loads", None)
        failures = batch.pop("load_failures", ())
        if loads is None:
            return
        self.pending[0] += sum(loads)
        self.pending[1] += len(failures)
        for index, reason in failures:
            if index not in self.met:
                self.met.add(index)
                self.new.append((int(index), reason))

    # -- combination: log steps (piggybacked) and epoch ends ----------------------------------------
    def counts(self) -> list[float]:
        """This rank's part of the next combination: loads, bad loads, newly met bad files."""
        return [float(self.pending[0]), float(self.pending[1]), float(len(self.new))]

    def combined(self, totals) -> None:
        """Take the sum of every rank's `counts()`; list new bad files; stop if the rule says so."""
        loads, bad, new = (int(round(x)) for x in totals)
        self.pending = [0, 0]
        self.loads, self.bad = self.loads + loads, self.bad + bad
        self.epoch_loads, self.epoch_bad = self.epoch_loads + loads, self.epoch_bad + bad
        if new:   # every rank knows this from the sum: all of them take part in the gather or none
            entries = self.new
            if self.world_size > 1:
                gathered = [None] * self.world_size
                dist.all_gather_object(gathered, self.new)
                entries = [e for part in gathered for e in part]
            self._list(entries)
        self.new = []
        self.check()

    def sync(self) -> None:
        """Combine outside a log step (an epoch's end): one small all-reduce of its own."""
        totals = self.counts()
        if self.world_size > 1:
            tensor = torch.tensor(totals, dtype=torch.float64, device=self.device)
            dist.all_reduce(tensor)
            totals = tensor.tolist()
        self.combined(totals)

    def _list(self, entries) -> None:
        rows = []
        for index, reason in entries:
            record = self.records[index]
            if record.path in self.listed:
                continue
            self.listed.add(record.path)
            rows.append(f"{record.path}\t{record.where}\t{reason}\n")
            if self.is_main:
                self.info(f"bad video {record.where or record.path} (another video is read in its place): {reason}")
        if rows and self.is_main and self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as handle:
                handle.writelines(rows)

    # -- the rule, the epoch's counts, checkpoints ----------------------------------------------------
    def check(self) -> None:
        if should_stop(self.bad, self.loads, self.max_ratio, len(self.records)):
            raise TooManyBadVideos(self.stop_message())

    def stop_message(self) -> str:
        listed = self.records[0].where.rsplit(":", 1)[0] if self.records and self.records[0].where else "the list"
        where = f", listed in {self.log_file}" if self.log_file else ""
        bound = (f"at 99.9% confidence at least {wilson_lower(self.bad, self.loads):.1%}" if self.max_ratio > 0
                 else "any bad video stops the run")
        return (f"{self.bad} of {self.loads} training video loads failed ({len(self.listed)} different files of "
                f"{len(self.records)} in {listed}{where}); the bad share is {bound}, above DATA.MAX_BAD_RATIO="
                f"{self.max_ratio:g}. Drop the bad files from the list (tools/check_videos.py finds them) or "
                "raise DATA.MAX_BAD_RATIO (1.0 never stops)")

    def end_epoch(self, epoch: int) -> dict:
        """The epoch's counts for its row (after `sync`), with a log line when some loads failed."""
        row = {"loads": self.epoch_loads, "bad_loads": self.epoch_bad, "bad_files": len(self.listed)}
        if self.epoch_bad:
            self.info(f"epoch {epoch}: {self.epoch_bad} of {self.epoch_loads} video loads failed; run so far: "
                      f"{self.bad} of {self.loads}, {len(self.listed)} different files"
                      + (f" (listed in {self.log_file})" if self.log_file else ""))
        self.epoch_loads = self.epoch_bad = 0
        return row

    def state(self) -> dict:
        """For the checkpoint: the run's counts as of the last combination."""
        return {"loads": self.loads, "bad": self.bad}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.loads, self.bad = int(state.get("loads", 0)), int(state.get("bad", 0))
