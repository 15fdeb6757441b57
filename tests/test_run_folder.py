"""Run folders end to end through tools/train.py: one run per OUTPUT_DIR, resumes that keep the
recipe (and may change the world size), honest recovery points, disk faults as one line."""
import errno
import gc
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from helpers import PYTHON, ROOT, env, final_json, losses, run_train, train_args
from videomae.engine.logs import read_metrics


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(("error:", "config error:"))]


def train_rows(out):
    rows = []
    for line in open(out / "metrics.jsonl"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line a kill cut short
    return [row for row in rows if row["type"] == "train"]


@pytest.mark.slow
def test_one_run_per_folder_stale_lock_and_replayed_steps(tmp_path, synthetic_root):
    """A second run in a busy folder refuses and names the holder; once the holder is killed, the
    next run takes the stale lock, removes what the killed saves left, resumes, and the steps it
    replays replace their rows in metrics.jsonl (with the same losses)."""
    out = tmp_path / "run"
    # a schedule the first run cannot finish before the kill, however fast the machine
    common = ["TRAIN.CKPT_STEPS", 2, "DEEPSPEED.ZERO_STAGE", 0, "TRAIN.EPOCHS", 10000]
    first = subprocess.Popen([PYTHON, *map(str, train_args(out, synthetic_root, *common))],
                             cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "run.lock").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "no lock"
            time.sleep(0.2)
        second = run_train(out, synthetic_root, *common, "TRAIN.MAX_STEPS", 3, check=False)
        assert second.returncode == 1
        [line] = error_lines(second.stderr)
        assert f"{out} is in use by another run (pid {first.pid} on " in line
        while first.poll() is None and len(train_rows(out)) < 5 and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean-up of its own: the lock stays behind, stale
        first.wait()
    assert first.returncode == -signal.SIGKILL and (out / "run.lock").exists()
    killed = {row["step"]: row["loss"] for row in train_rows(out)}
    assert len(killed) >= 5
    # what a kill during a save leaves: the newest tag folder without COMPLETE, temp files
    newest = (out / "checkpoints" / "LATEST").read_text()
    (out / "checkpoints" / newest / "COMPLETE").unlink()
    (out / "config.yaml.tmp.somehost.1234").write_text("partial")
    (out / "checkpoints" / "LATEST.tmp.somehost.1234").write_text("partial")
    last = max(killed) + 1
    third = run_train(out, synthetic_root, *common, "TRAIN.MAX_STEPS", last)
    text = third.stdout + third.stderr
    assert f"took over the stale lock of pid {first.pid}" in text
    [removed] = [line for line in text.splitlines() if line.startswith(f"removed what interrupted writes left in {out}")]
    assert newest in removed  # (the resumed run saves that step again, complete this time)
    assert not list(out.glob("*.tmp*")) and not list((out / "checkpoints").glob("*.tmp*"))
    resumed = int(text.split("resumed from step_")[1][:8])
    assert resumed == int(newest[5:]) - 2 < max(killed)  # the one before: some logged steps run again
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, last + 1))
    assert [r["step"] for r in read_metrics(str(out / "metrics.jsonl"), "train")] == list(range(1, last + 1))
    replayed = [step for step in killed if step > resumed]
    assert replayed
    for step in replayed:  # the same step again: the same loss, in one row
        assert rows[step - 1]["loss"] == pytest.approx(killed[step], rel=1e-6, abs=1e-7)
    assert not (out / "run.lock").exists()  # released when the run ended


def test_read_metrics_takes_the_last_row_per_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"type": "train", "step": 1, "loss": 3.0}, {"type": "train", "step": 2, "loss": 2.0},
            {"type": "resume", "step": 1}, {"type": "train", "step": 2, "loss": 2.5},
            {"type": "train", "step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(r["step"], r["loss"]) for r in read_metrics(str(path), "train")] == [(1, 3.0), (2, 2.5), (3, 1.0)]
    assert [r["type"] for r in read_metrics(str(path))] == ["train", "resume", "train", "train"]


@pytest.mark.slow
def test_changed_config_refuses_and_another_world_size_resumes(tmp_path, synthetic_root):
    """Another recipe (lr, global batch) is refused with the keys named; 2 ranks x 2 videos continue
    what 1 process x 2 videos x 2 accumulation steps began, and equal a straight run of it."""
    out, reference = tmp_path / "run", tmp_path / "reference"
    common = ["TRAIN.BATCH_SIZE", 2, "DEEPSPEED.ZERO_STAGE", 0]
    run_train(reference, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 4)
    run_train(out, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 2)
    saved = (out / "config.yaml").read_text()
    refused = run_train(out, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 4, "TRAIN.MAX_STEPS", 4,
                        "TRAIN.BASE_LR", 1e-3, "MASK.RATIO", 0.75, check=False)
    assert refused.returncode == 2
    [line] = error_lines(refused.stderr)
    assert "TRAIN.BASE_LR 0.02 -> 0.001" in line and "MASK.RATIO 0.9 -> 0.75" in line
    assert "2 x 2 x 1 = 4 -> 2 x 4 x 1 = 8" in line and "TRAIN.MAX_STEPS" not in line
    assert (out / "config.yaml").read_text() == saved  # the old run is not relabelled
    moved = run_train(out, synthetic_root, *common, "TRAIN.MAX_STEPS", 4, "LOG.TENSORBOARD", False, nproc=2)
    assert "resumed from step_00000002" in moved.stdout + moved.stderr
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(reference)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_max_steps_stops_without_changing_the_schedule(tmp_path, synthetic_root):
    """Stopping at 3 and resuming equals the straight run of the 6-step schedule (no warmup, so
    every step is on the cosine, which a MAX_STEPS horizon would have compressed)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["TRAIN.SCHEDULE_STEPS", 6, "TRAIN.WARMUP_EPOCHS", 0, "DEEPSPEED.ZERO_STAGE", 0]
    run_train(straight, synthetic_root, *common)
    first = run_train(split, synthetic_root, *common, "TRAIN.MAX_STEPS", 3)
    assert final_json(first.stdout)["step"] == 3
    run_train(split, synthetic_root, *common)
    a, b = read_metrics(str(straight / "metrics.jsonl"), "train"), read_metrics(str(split / "metrics.jsonl"), "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("lr", "loss"):
        torch.testing.assert_close(torch.tensor([r[key] for r in b]), torch.tensor([r[key] for r in a]),
                                   rtol=0, atol=1e-6)
    assert a[-1]["lr"] < a[0]["lr"] / 2  # the schedule ran to its end


LOUDER_LOSS = """
from videomae.engine import tasks

_train_step = tasks.PretrainTask.train_step

def train_step(self, engine, batch, ctx):
    loss, extra = _train_step(self, engine, batch, ctx)
    # from step 5 on the reported loss is 1000x (AdamW barely notices the scale of the gradients)
    return (loss * 1000 if ctx.step >= 4 else loss), extra

tasks.PretrainTask.train_step = train_step
"""


@pytest.mark.slow
def test_divergence_stops_at_the_last_good_checkpoint(tmp_path, synthetic_root):
    """A finite blow-up from step 5: the checkpoint of step 5 (between log steps) is not written,
    two suspect log steps (6, 8) stop the run with exit 1, naming step 4's checkpoint."""
    (tmp_path / "louder.py").write_text(LOUDER_LOSS)
    out = tmp_path / "run"
    result = run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 12, "TRAIN.CKPT_STEPS", 1, "TRAIN.LOG_PERIOD", 2,
                       "TRAIN.DIVERGENCE_PATIENCE", 2, "IMPORTS", tmp_path / "louder.py", "DEEPSPEED.ZERO_STAGE", 0,
                       check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert "loss diverged" in line and "at step 8" in line and "since step 6" in line
    assert f"last good checkpoint: {out / 'checkpoints' / 'step_00000004'}." in line
    assert "checkpoint at step 5 not written" in result.stdout
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000004"]
    assert [r["step"] for r in read_metrics(str(out / "metrics.jsonl"), "train")] == [1, 2, 4, 6, 8]


# a failing disk, simulated in the process that runs tools/train.py: writes to paths containing
# FAIL_PATH raise OSError(FAIL_ERRNO); the rest of the run is untouched
FAULTY_DISK = """
import builtins, errno, os, runpy, sys, torch
part, code = os.environ["FAIL_PATH"], int(os.environ["FAIL_ERRNO"])
_open, _save = builtins.open, torch.save

def fail(path):
    raise OSError(code, os.strerror(code), str(path))

def open_(file, mode="r", *args, **kwargs):
    if part in str(file) and any(m in mode for m in "wax+"):
        fail(file)
    return _open(file, mode, *args, **kwargs)

def save(obj, f, *args, **kwargs):
    if part in str(f):
        fail(f)
    return _save(obj, f, *args, **kwargs)

builtins.open, torch.save = open_, save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("part,code,what,cause", [
    ("/checkpoints/", errno.ENOSPC, "checkpoint", "no space left on the device (disk full) (ENOSPC)"),
    ("model.pt", errno.ENOSPC, "the weights", "no space left on the device (disk full) (ENOSPC)"),
    ("metrics.jsonl", errno.EDQUOT, "the metrics", "disk quota exceeded (EDQUOT)"),
    ("config.yaml", errno.ENOSPC, "the config", "no space left on the device (disk full) (ENOSPC)"),
    ("/run/", errno.EROFS, "the run lock", "read-only file system (EROFS)"),  # a read-only OUTPUT_DIR
])
def test_disk_faults_are_one_line(tmp_path, synthetic_root, part, code, what, cause):
    (tmp_path / "faulty_disk.py").write_text(FAULTY_DISK)
    out = tmp_path / "run"
    result = subprocess.run([PYTHON, str(tmp_path / "faulty_disk.py"),
                             *map(str, train_args(out, synthetic_root, "TRAIN.MAX_STEPS", 1))],
                            cwd=ROOT, env={**env(), "FAIL_PATH": part, "FAIL_ERRNO": str(code)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: cannot write {what} {out}") and line.endswith(cause), line
    assert not list(out.rglob("*.tmp*"))  # the failed write cleaned up after itself
    if part == "/checkpoints/":
        assert not (out / "checkpoints" / "step_00000001").exists()
    assert not (out / "run.lock").exists()


def test_real_full_disk(tmp_path):
    """On a real full file system (a 1 MiB tmpfs, where mounting is allowed): torch's writer says
    `unexpected pos` without a path; the weights file writer says which file and why, and the free
    space check refuses before writing."""
    from videomae.engine import checkpoint as ckpt
    from videomae.engine.run_folder import DiskFault

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (the injected faults above cover the messages)")
    try:
        big = {"w": torch.zeros(512 * 1024)}  # 2 MiB
        with pytest.raises(DiskFault, match=r"not enough free space for model.pt in .*small: .* free, about .* needed"):
            ckpt.save_model_file(big, str(mnt / "model.pt"))
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        message = None
        try:  # what torch says without the check
            torch.save({"w": torch.zeros(64 * 1024)}, str(mnt / "x.pt"))
        except RuntimeError as err:
            message = ckpt._write_failure(err, str(mnt / "x.pt"))
        gc.collect()  # the failed writer's file handle, before unmounting
        assert message == f"cannot write checkpoint {mnt / 'x.pt'}: no space left on the device (disk full)"
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_lock_of_another_host_is_respected_unless_broken_or_the_same_slurm_job(tmp_path, monkeypatch):
    from videomae.engine.run_folder import RunLock, RunLocked

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    other = {"host": "elsewhere", "pid": 1, "time": "2024-01-01 00:00:00", "slurm_job": "77", "restart": "0"}
    (tmp_path / "run.lock").write_text(json.dumps(other))
    with pytest.raises(RunLocked, match=r"in use by another run \(pid 1 on elsewhere.*remove .*run.lock or set "
                                        r"TRAIN.BREAK_LOCK True"):
        RunLock(str(tmp_path)).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued: its first start is over
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = RunLock(str(tmp_path))
    assert "earlier start of SLURM job 77" in lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text(json.dumps({**other, "slurm_job": "78"}))
    assert "TRAIN.BREAK_LOCK" in RunLock(str(tmp_path), break_lock=True).acquire()


def test_config_diff_allowlist_and_global_batch():
    from videomae.engine.config import load_config
    from videomae.engine.run_folder import config_changes

    old = load_config(None, ["TRAIN.BATCH_SIZE", "8", "TRAIN.ACCUM_STEPS", "2"])
    # an older config.yaml without today's keys: they count as their defaults
    saved = "\n".join(line for line in old.dump().splitlines() if "DIVERGENCE" not in line and "SCHEDULE" not in line)
    same_batch = load_config(None, ["TRAIN.BATCH_SIZE", "4", "TRAIN.ACCUM_STEPS", "1", "DATA.NUM_WORKERS", "2",
                                    "TRAIN.MAX_STEPS", "5", "LOG.TENSORBOARD", "False", "OUTPUT_DIR", "elsewhere"])
    assert config_changes(saved, same_batch, saved_world_size=2, world_size=8) == []
    changed = load_config(None, ["TRAIN.BATCH_SIZE", "8", "TRAIN.ACCUM_STEPS", "2", "TRAIN.SCHEDULE_STEPS", "100",
                                 "DATA.ROOT", "/fast/ssd"])
    assert config_changes(saved, changed, 2, 2) == ["DATA.ROOT '' -> '/fast/ssd'", "TRAIN.SCHEDULE_STEPS 0 -> 100"]
    assert config_changes(saved, changed, 2, 4)[-1].endswith("8 x 2 x 2 = 32 -> 8 x 2 x 4 = 64")
    accepted = load_config(None, ["TRAIN.BATCH_SIZE", "8", "TRAIN.ACCUM_STEPS", "2", "DATA.ROOT", "/fast/ssd",
                                  "TRAIN.ALLOW_CHANGES", "DATA.ROOT"])
    assert config_changes(saved, accepted, 2, 2) == []
