"""tools/compare_masking.py --slurm: one array task per cell with the project's preemption
handling, and --collect's report from what the array left."""
import csv
import subprocess

import pytest

from helpers import PYTHON, ROOT, TINY, env
from test_slurm import slurm_cluster, slurm_env  # noqa: F401 -- the fixture skips or fails as there

SMALL = ["--strategies", "tube,random", "--seeds", "0", "--ratios", "0.9", "--eval", "recon"]


def compare(out, data_root, *flags, environment=None):
    args = [PYTHON, "tools/compare_masking.py", *flags, "--config", "configs/demo/pretrain.yaml", *SMALL,
            "--out", str(out), "DATA.ROOT", str(data_root), "DATA.LIST_DIR", str(data_root), *TINY,
            "TRAIN.EPOCHS", "1"]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=environment or env(), timeout=900)


def test_dry_run_prints_an_array_with_preemption_handling(tmp_path, synthetic_root, capsys):
    import importlib.util

    from videomae.cli import run_tool

    spec = importlib.util.spec_from_file_location("compare_masking", ROOT / "tools" / "compare_masking.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def dry_run(gpus, *options):
        code = run_tool(tool.main, ["--slurm-dry-run", "--gpus-per-cell", gpus, *options, "--config",
                                    str(ROOT / "configs/demo/pretrain.yaml"), *SMALL, "--out", str(tmp_path / "cmp"),
                                    "DATA.ROOT", str(synthetic_root), "DATA.LIST_DIR", str(synthetic_root)])
        return code, capsys.readouterr()

    code, printed = dry_run("2")
    assert code == 0, printed.err
    for line in ("#SBATCH --array=0-1", "#SBATCH --ntasks=2", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --signal=USR1@180", "#SBATCH --requeue", "#   0: tube-0.9-s0", "#   1: random-0.9-s0"):
        assert line in printed.out.splitlines()
    assert '--cell "$SLURM_ARRAY_TASK_ID"' in printed.out
    assert not (tmp_path / "cmp").exists()          # a dry run writes nothing
    code, cpu = dry_run("0")
    assert "#SBATCH --ntasks=1" in cpu.out and "gpus-per-task" not in cpu.out
    code, bad = dry_run("-1")
    assert code == 2 and "--gpus-per-cell -1" in bad.err
    # every array task repeats the options that decide its cell and its evaluations
    code, more = dry_run("1", "--targets", "pixel,hog", "--finetune-config",
                         str(ROOT / "configs/demo/finetune.yaml"), "--finetune-overrides", "TRAIN.EPOCHS 1")
    assert code == 0, more.err
    assert "#   3: hog-random-0.9-s0" in more.out.splitlines()
    for option in ("--targets pixel,hog", "--finetune-config", "'TRAIN.EPOCHS 1'"):
        assert option in more.out, option


@pytest.mark.slow
@pytest.mark.slurm
def test_two_cell_array_on_the_cluster_then_collect(tmp_path, synthetic_root, slurm_cluster):  # noqa: F811
    out = tmp_path / "cmp"
    # --wait: sbatch returns when every array task has ended
    submitted = compare(out, synthetic_root, "--slurm", "--gpus-per-cell", "0", "--sbatch=--wait --cpus-per-task 1",
                        environment=slurm_env())
    logs = "\n".join(p.read_text() for p in sorted((out / "slurm").glob("cell-*.out"))) \
        if (out / "slurm").exists() else ""
    assert submitted.returncode == 0, submitted.stderr + logs
    assert "submitted job array" in submitted.stdout and "--collect" in submitted.stdout
    for name in ("tube-0.9-s0", "random-0.9-s0"):
        assert (out / "cells" / name / "compare_cell.json").exists(), logs
        assert (out / "cells" / name / "compare_eval.json").exists(), logs
    assert "array task 0" in (out / "slurm" / "cell-0.out").read_text()

    collected = compare(out, synthetic_root, "--collect")
    assert collected.returncode == 0, collected.stderr
    assert "pretraining" not in collected.stdout and "evaluating" not in collected.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["strategy"], r["metric"]) for r in rows) == [
        ("random", "recon_common"), ("random", "recon_own"), ("tube", "recon_common"), ("tube", "recon_own")]
    assert all(r["steps"] == "6" for r in rows)          # 24 videos / batch 4, one epoch
    # the same cell in this process: already finished, not trained again
    again = compare(out, synthetic_root)
    assert again.returncode == 0 and again.stdout.count("finished earlier (6 steps), skipped") == 2
