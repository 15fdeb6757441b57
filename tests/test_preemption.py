"""Stopping a run by signal, as users and schedulers do: SIGTERM to the whole process group (what
SLURM's preemption, `scancel` and time limits send to every process of a step, loader workers
included) and Ctrl-C (SIGINT to the terminal's foreground process group). The first checkpoints and
exits with 75; a second Ctrl-C aborts at once and leaves the previous complete checkpoint to resume.
The requeue under real SLURM is in test_slurm.py."""
import json
import os
import signal
import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, env, losses, run_train, train_args
from videomae.engine import checkpoint as ckpt
from videomae.engine.preemption import FIRST_CTRL_C, Preemption

# a schedule the runs below cannot finish before they are signalled; MAX_STEPS only stops, so a run
# stopped at step k and resumed to k + 2 is compared with a straight run to k + 2 of the same schedule
LONG = ("TRAIN.EPOCHS", 1000, "DATA.NUM_WORKERS", 2)


# -- the mechanism, in this process --------------------------------------------------------------

@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_first_ctrl_c_asks_to_stop_and_says_so_the_second_aborts(restore_handlers, capfd):
    flag = Preemption()
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.requested and flag.signal_name == "SIGINT"
    assert capfd.readouterr().err == FIRST_CTRL_C
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_sigterm_only_asks_however_often_it_comes(restore_handlers, capfd):
    flag = Preemption(announce=False)
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested and flag.signal_name == "SIGTERM" and not flag.interrupted
    os.kill(os.getpid(), signal.SIGINT)   # a Ctrl-C after it: still a request (SLURM's reason stays)
    assert flag.signal_name == "SIGTERM" and flag.interrupted


class FakeEngine:
    """What `checkpoint.save` needs of a DeepSpeed engine; `interrupt` raises KeyboardInterrupt
    (a second Ctrl-C) halfway through writing the files."""

    def __init__(self):
        import torch

        self.module = torch.nn.Linear(2, 2)
        self.interrupt = False

    def save_checkpoint(self, ckpt_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(ckpt_dir, tag), exist_ok=True)
        with open(os.path.join(ckpt_dir, tag, "model_states.pt"), "w") as f:
            f.write("weights")
        if self.interrupt:
            raise KeyboardInterrupt
        with open(os.path.join(ckpt_dir, tag, "optim_states.pt"), "w") as f:
            f.write("moments")

    def zero_optimization_stage(self):
        return 0


def test_a_save_cut_short_is_never_complete(tmp_path, monkeypatch):
    engine, folder = FakeEngine(), str(tmp_path)
    ckpt.save(engine, folder, 1, {}, True, keep=1)
    engine.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(engine, folder, 2, {}, True, keep=1)
    assert ckpt.latest_tag(folder) == "step_00000001" and not os.path.exists(tmp_path / "step_00000002" / "COMPLETE")
    assert ckpt.remove_incomplete(folder) == ["step_00000002"]
    # the removal of an old checkpoint cut short leaves it incomplete, not "complete" with files missing
    engine.interrupt = False

    def cut_short(path, **_):
        os.remove(os.path.join(path, "model_states.pt"))
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(engine, folder, 3, {}, True, keep=1)
    assert ckpt.complete_tags(folder) == ["step_00000003"] and ckpt.latest_tag(folder) == "step_00000003"


# -- end to end through tools/train.py ------------------------------------------------------------

def start(out, data_root, stderr_path, *overrides):
    """tools/train.py in a session of its own, so that a signal can go to its whole process group
    (main process and loader workers), as a terminal's Ctrl-C and SLURM's SIGTERM do."""
    environment = {k: v for k, v in env().items() if not k.startswith("SLURM_")}
    return subprocess.Popen([PYTHON, *map(str, train_args(out, data_root, *LONG, *overrides))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=open(stderr_path, "w"), text=True, env=environment,
                            start_new_session=True)


def wait_for(proc, condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what}: did not happen (exit code {proc.poll()})")
        time.sleep(0.05)


def train_rows(out) -> int:
    metrics = out / "metrics.jsonl"
    return sum('"train"' in line for line in open(metrics)) if metrics.exists() else 0


def preempted_step(out) -> int:
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [r for r in rows if r["type"] == "preempted"][-1]["step"]


def signal_once_training_runs(out, data_root, err, sig) -> str:
    """Start a 2-worker run, send `sig` to its whole process group once it trains, and return its
    stderr after checking that it exited 75 (checkpointed, resumable)."""
    proc = start(out, data_root, err)
    wait_for(proc, lambda: train_rows(out) >= 2, "training starts")
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=300)
    stderr = err.read_text()
    assert proc.returncode == 75, stderr[-3000:]
    return stderr


def assert_resumes_like_a_straight_run(out, data_root, tmp_path, stop: int):
    """Resume to `stop` and compare every step's loss with an uninterrupted run of the same schedule."""
    resumed = run_train(out, data_root, *LONG, "TRAIN.MAX_STEPS", stop)
    assert "resumed from" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    run_train(straight, data_root, *LONG, "TRAIN.MAX_STEPS", stop)
    assert len(losses(straight)) == stop
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)


@pytest.mark.slow
def test_sigterm_to_the_process_group_checkpoints_exits_75_and_resumes(tmp_path, synthetic_root):
    """Outside SLURM: SIGTERM to every process of a 2-worker run; the workers ignore it, the main
    process finishes the step, writes a complete checkpoint and exits 75 naming the command."""
    out = tmp_path / "run"
    stderr = signal_once_training_runs(out, synthetic_root, tmp_path / "stderr", signal.SIGTERM)
    assert "resume with the same command" in stderr and "Traceback" not in stderr
    step = preempted_step(out)
    assert ckpt.latest_tag(str(out / "checkpoints")) == ckpt.tag_for(step)
    assert_resumes_like_a_straight_run(out, synthetic_root, tmp_path, step + 2)


def test_ctrl_c_checkpoints_and_exits_75(tmp_path, synthetic_root):
    out = tmp_path / "run"
    stderr = signal_once_training_runs(out, synthetic_root, tmp_path / "stderr", signal.SIGINT)
    assert stderr.count("press Ctrl-C again to abort") == 1 and "Traceback" not in stderr
    assert "resume with the same command" in stderr
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["requeue"] for r in rows if r["type"] == "preempted"] == ["stopped by Ctrl-C: not requeued"]
    step = preempted_step(out)
    assert ckpt.latest_tag(str(out / "checkpoints")) == ckpt.tag_for(step)   # resumes like SIGTERM's, above


@pytest.mark.slow
def test_second_ctrl_c_aborts_and_the_previous_checkpoint_resumes(tmp_path, synthetic_root):
    """The second Ctrl-C is sent once the first was acted on (its line is on stderr): the run
    aborts with 130 wherever it is (possibly inside the checkpoint the first one asked for), and
    what is left resumes from the newest complete checkpoint to a straight run's losses."""
    out, err = tmp_path / "run", tmp_path / "stderr"
    ckpt_dir = out / "checkpoints"
    # many micro-batches per step: the first Ctrl-C has the rest of a long step to wait for
    proc = start(out, synthetic_root, err, "TRAIN.CKPT_STEPS", 2, "TRAIN.BATCH_SIZE", 1, "TRAIN.ACCUM_STEPS", 4)
    wait_for(proc, lambda: ckpt.latest_tag(str(ckpt_dir)) is not None and train_rows(out) >= 3,
             "a checkpoint is written")
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(proc, lambda: "press Ctrl-C again" in err.read_text(), "the first Ctrl-C is acknowledged")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=300)
    stderr = err.read_text()
    assert proc.returncode == 130, stderr[-3000:]
    assert "aborted by a second Ctrl-C" in stderr and "Traceback" not in stderr
    last = ckpt.latest_tag(str(ckpt_dir))
    assert last is not None and f"resumes from {ckpt_dir / last}" in stderr
    stop = int(last.split("_")[1]) + 2
    resumed = run_train(out, synthetic_root, *LONG, "TRAIN.CKPT_STEPS", 2, "TRAIN.BATCH_SIZE", 1,
                        "TRAIN.ACCUM_STEPS", 4, "TRAIN.MAX_STEPS", stop)
    assert f"resumed from {last}" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    run_train(straight, synthetic_root, *LONG, "TRAIN.BATCH_SIZE", 1, "TRAIN.ACCUM_STEPS", 4,
              "TRAIN.MAX_STEPS", stop)
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)
