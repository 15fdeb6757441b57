"""Real SLURM: the sbatch script runs a 2-task job (gloo, ZeRO-2) on the local one-node cluster,
and a signalled job checkpoints, requeues itself and resumes.

`.ci/run` starts the cluster (tools/slurm/local_cluster.sh). Run by hand without one, these tests
skip; under CI (CI=true) a missing cluster is a failure."""
import json
import os
import shutil
import subprocess
import time

import pytest

from helpers import ROOT, TINY, env, losses, run_train

pytestmark = pytest.mark.slurm


def cluster_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in result.stdout.split())


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """Skipped only on a machine without SLURM outside CI (a GPU box, a laptop); where `sbatch`
    exists, or under CI, a cluster that does not answer is a failure."""
    under_ci = os.environ.get("CI", "").lower() == "true"
    if not shutil.which("sbatch") and not under_ci:
        pytest.skip("no SLURM here (sbatch not found)")
    if not cluster_up():
        pytest.fail("the SLURM cluster does not answer: start it with sudo bash tools/slurm/local_cluster.sh start")


def slurm_env() -> dict:
    """The job's environment: our Python, and CPU ranks where the node has fewer GPUs than tasks."""
    python = os.environ.get("VIDEOMAE_PYTHON", str(ROOT / ".venv/bin/python"))
    return {**env(nproc=2), "PYTHON": python if os.path.exists(python) else shutil.which("python3")}


def sbatch(out_dir, data_root, log, *overrides, wait=True, ntasks=2):
    args = ["sbatch", "--parsable", "--ntasks", str(ntasks), "--cpus-per-task", "1", "-o", str(log),
            *(["--wait"] if wait else []), "tools/slurm/train.sbatch", "configs/demo/pretrain.yaml",
            "OUTPUT_DIR", str(out_dir), "DATA.ROOT", str(data_root), "DATA.LIST_DIR", str(data_root), *TINY,
            "DEEPSPEED.ZERO_STAGE", "2", *map(str, overrides)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=slurm_env(), timeout=900)
    return result


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
    return out.strip()


def test_two_task_job_trains_logs_and_checkpoints(tmp_path, synthetic_root):
    out, log = tmp_path / "run", tmp_path / "job.out"
    result = sbatch(out, synthetic_root, log, "TRAIN.MAX_STEPS", 3)
    text = log.read_text() if log.exists() else ""
    assert result.returncode == 0, result.stderr + text
    assert "2 process(es) (slurm, cpu)" in text and "ZeRO-2" in text
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["type"] == "train"] == [1, 2, 3]
    shards = list((out / "checkpoints" / "step_00000003").glob("*optim_states.pt"))
    assert len(shards) == 2
    assert (out / "model.pt").exists()


def signal_and_wait_for_requeue(job: str, metrics, log, *scancel):
    """Once the job trains, `scancel *scancel job`; then wait until the requeued job has finished."""
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until it is training
            if metrics.exists() and sum('"train"' in line for line in open(metrics)) >= 3:
                break
            if not job_state(job):  # ended before training: its log says why
                deadline = 0
            time.sleep(0.2)
        else:
            pytest.fail(f"job {job} did not start training:\n{log.read_text() if log.exists() else ''}")
        subprocess.run(["scancel", *scancel, job], check=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            state = job_state(job)
            if not state:
                break
            if state.startswith("PENDING") and "BeginTime" in state:
                # SLURM holds requeued jobs for a while; the test does not need to wait that out
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
            time.sleep(2)
        else:
            pytest.fail(f"job {job} did not finish after the requeue")
    finally:
        subprocess.run(["scancel", job], capture_output=True)


def test_signal_checkpoints_requeues_and_resumes(tmp_path, synthetic_root):
    out, log = tmp_path / "run", tmp_path / "job.out"
    result = sbatch(out, synthetic_root, log, "TRAIN.MAX_STEPS", 60, "TRAIN.EPOCHS", 100, wait=False)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    signal_and_wait_for_requeue(job, metrics, log, "--signal=USR1")
    rows = [json.loads(line) for line in open(metrics)]
    kinds = [r["type"] for r in rows]
    assert "preempted" in kinds and "requeued SLURM job" in rows[kinds.index("preempted")]["requeue"]
    preempted_at = rows[kinds.index("preempted")]["step"]
    resume = rows[kinds.index("resume")]
    assert resume["step"] == preempted_at and kinds.index("resume") > kinds.index("preempted")
    train_steps = [r["step"] for r in rows if r["type"] == "train"]
    assert train_steps[-1] == 60 and preempted_at + 1 in train_steps  # picked up right after
    text = log.read_text()
    assert "restart 1" in text and f"resumed from step_{preempted_at:08d}" in text


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_step_requeues_and_matches_a_straight_run(tmp_path, synthetic_root):
    """SLURM's preemption: SIGTERM to every process of the job step, loader workers included
    (`scancel --signal=TERM` signals all of a job's steps; `--full` would signal the batch script
    and srun as well, and srun answers SIGTERM by killing its step). The workers ignore it, the
    rank finishes its step, checkpoints and requeues; the requeued job ends where a straight run
    ends, with the same loss at every step."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    run = ("TRAIN.MAX_STEPS", 30, "TRAIN.EPOCHS", 100, "DATA.NUM_WORKERS", 2, "DEEPSPEED.ZERO_STAGE", 0)
    result = sbatch(out, synthetic_root, log, *run, wait=False, ntasks=1)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    signal_and_wait_for_requeue(job, out / "metrics.jsonl", log, "--signal=TERM")
    text = log.read_text()
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    preempted = [r for r in rows if r["type"] == "preempted"]
    assert len(preempted) == 1 and "requeued SLURM job" in preempted[0]["requeue"], text[-3000:]
    assert "SIGTERM received" in text and "restart 1" in text and "killed by signal" not in text
    assert f"resumed from step_{preempted[0]['step']:08d}" in text and (out / "model.pt").exists()
    straight = tmp_path / "straight"
    run_train(straight, synthetic_root, *run)
    assert len(losses(out)) == 30 and losses(out) == pytest.approx(losses(straight), rel=1e-5)


@pytest.mark.slow
def test_finetune_job_on_two_tasks(tmp_path, synthetic_root):
    """A pretraining checkpoint fine-tuned by a 2-task SLURM job, ending with the multi-view test
    merged across both ranks."""
    pre = tmp_path / "pre"
    assert sbatch(pre, synthetic_root, tmp_path / "pre.out", "TRAIN.MAX_STEPS", 2).returncode == 0
    out, log = tmp_path / "ft", tmp_path / "ft.out"
    args = ["sbatch", "--parsable", "--wait", "--ntasks", "2", "--cpus-per-task", "1", "-o", str(log),
            "tools/slurm/train.sbatch", "configs/demo/finetune.yaml", "OUTPUT_DIR", str(out),
            "DATA.ROOT", str(synthetic_root), "DATA.LIST_DIR", str(synthetic_root), *TINY,
            "DATA.NUM_CLASSES", "8", "TRAIN.EPOCHS", "1", "DEEPSPEED.ZERO_STAGE", "2",
            "MODEL.PRETRAINED", str(pre / "model.pt")]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=slurm_env(), timeout=900)
    text = log.read_text() if log.exists() else ""
    assert result.returncode == 0, result.stderr + text
    assert "2 process(es) (slurm, cpu)" in text and "pretraining-only (decoder)" in text
    metrics = json.load(open(out / "test_metrics.json"))
    assert metrics["videos"] == 8 and metrics["views"] == "2x3"
