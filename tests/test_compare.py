"""tools/compare_masking.py: cells paired by seed, held-out evaluations, a report that survives a
killed runner, and the k-NN / probe arithmetic against plain re-implementations."""
import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import PYTHON, ROOT, TINY, env
from videomae.compare import evaluate
from videomae.compare.report import COLUMNS, write_report
from videomae.compare.runner import Cell

EVALS = ["recon", "knn", "probe"]
METRIC_NAMES = ["recon_common", "recon_own", "knn_top1", "probe_top1"]


def compare_args(out, data_root, *extra, flags=()):
    return ["tools/compare_masking.py", *flags, "--config", "configs/demo/pretrain.yaml", "--strategies", "tube,random",
            "--seeds", "0,1", "--ratios", "0.9", "--eval", ",".join(EVALS), "--out", str(out),
            "DATA.ROOT", str(data_root), "DATA.LIST_DIR", str(data_root), *TINY,
            "TRAIN.EPOCHS", "3", "TRAIN.CKPT_STEPS", "2", *map(str, extra)]


def run_compare(*args, check=True):
    result = subprocess.run([PYTHON, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env(),
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"compare failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def attempts(cell_dir: Path) -> int:
    """tools/train.py starts in a cell (the runner writes one header line per start)."""
    return sum(1 for line in open(cell_dir / "train.log") if line.startswith("# "))


def report_without_wall_time(out: Path) -> str:
    return "\n".join(line for line in (out / "summary.md").read_text().splitlines()
                     if not line.startswith("- wall time"))


def train_rows(metrics: Path) -> list:
    rows = []
    if metrics.exists():
        for line in open(metrics):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue   # a line cut short
    return [r for r in rows if r.get("type") == "train"]


@pytest.mark.slow
def test_report_rows_and_a_killed_runner_resumes_to_the_same_report(tmp_path, synthetic_root):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_compare(*compare_args(straight, synthetic_root))
    rows = read_csv(straight / "results.csv")
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 2 * 2 * len(METRIC_NAMES)   # strategies x seeds x metrics
    cells = {(r["strategy"], r["seed"]) for r in rows}
    assert cells == {("tube", "0"), ("tube", "1"), ("random", "0"), ("random", "1")}
    for row in rows:
        assert row["steps"] == "18" and float(row["wall_seconds"]) > 0
        assert row["checkpoint"] == f"cells/{row['strategy']}-0.9-s{row['seed']}/model.pt"
        assert (straight / row["checkpoint"]).exists()
        # a 2x4x4 grid: 28 of 32 cubes for both (int(0.9 x 32)), counted on the drawn masks
        assert float(row["effective_masked_share"]) == 28 / 32
    by = {(r["strategy"], r["seed"], r["metric"]): float(r["value"]) for r in rows}
    assert by[("random", "0", "recon_own")] == by[("random", "0", "recon_common")]   # random's own = common
    assert by[("tube", "0", "recon_own")] != by[("tube", "0", "recon_common")]
    assert (straight / "summary.png").stat().st_size > 0

    # the same comparison, the runner killed (with its train.py) in the middle of the second cell
    first, second = (killed / "cells" / name for name in ("tube-0.9-s0", "tube-0.9-s1"))
    log = open(tmp_path / "killed.log", "w")
    runner = subprocess.Popen([PYTHON, *compare_args(killed, synthetic_root)], cwd=ROOT, env=env(), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not ((second / "run.lock").exists() and len(train_rows(second / "metrics.jsonl")) >= 2):
            assert runner.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "the second cell did not start"
            time.sleep(0.02)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert (first / "compare_cell.json").exists() and not (second / "compare_cell.json").exists()
    first_weights = (first / "model.pt").stat().st_mtime_ns
    again = run_compare(*compare_args(killed, synthetic_root))
    assert "tube-0.9-s0: finished earlier (18 steps), skipped" in again.stdout
    assert attempts(first) == 1 and (first / "model.pt").stat().st_mtime_ns == first_weights
    assert attempts(second) == 2
    a, b = read_csv(straight / "results.csv"), read_csv(killed / "results.csv")
    for row in a + b:
        row.pop("wall_seconds")
    assert a == b
    assert report_without_wall_time(killed) == report_without_wall_time(straight)

    # --collect reports without training or evaluating
    before = read_csv(killed / "results.csv")
    os.remove(killed / "results.csv")
    collected = run_compare(*compare_args(killed, synthetic_root, flags=["--collect"]))
    assert read_csv(killed / "results.csv") == before
    assert "pretraining" not in collected.stdout and "evaluating" not in collected.stdout
    assert attempts(first) == 1

    # a changed recipe is refused by the cell's run folder, the keys named, in one line
    changed = run_compare(*compare_args(killed, synthetic_root, "TRAIN.BASE_LR", "0.01"), check=False)
    assert changed.returncode == 2
    [line] = [line for line in changed.stderr.splitlines() if line.strip()]
    assert line.startswith("cell tube-0.9-s0: config error: the config differs from the run being resumed")
    assert "TRAIN.BASE_LR" in line


PAIRING_SCRIPT = r"""
import hashlib, json, sys
sys.path.insert(0, ".")
from videomae.engine.config import load_config
from videomae.engine.tasks import PretrainTask
from videomae.engine.trainer import Trainer

out, data, *tiny = sys.argv[1:]
result = {}
for name, strategy, seed in (("tube0", "tube", 0), ("random0", "random", 0), ("tube1", "tube", 1)):
    cfg = load_config("configs/demo/pretrain.yaml", ["OUTPUT_DIR", f"{out}/{name}", "DATA.ROOT", data,
                      "DATA.LIST_DIR", data, *tiny, "MASK.TYPE", strategy, "SEED", str(seed)])
    trainer = Trainer(cfg, PretrainTask(cfg))   # what tools/train.py builds for a cell
    state = trainer.engine.module.state_dict()
    weights = hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in state.values())).hexdigest()
    trainer.loader.set_epoch(0, 0)
    batches = []
    for batch in trainer.loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    video = hashlib.sha256(b"".join(b["video"].numpy().tobytes() for b in batches)).hexdigest()
    result[name] = {"weights": weights, "video": video, "index": [b["index"].tolist() for b in batches]}
    trainer.loader.shutdown()
    trainer.release()
print(json.dumps(result))
"""


def test_same_seed_same_data_order_init_and_augmentation_across_strategies(tmp_path, synthetic_root):
    """Two strategies at one SEED build the same initial weights and read the same first batches
    (clips, order and augmented pixels); another SEED changes all three."""
    result = subprocess.run([PYTHON, "-c", PAIRING_SCRIPT, str(tmp_path), str(synthetic_root), *TINY], cwd=ROOT,
                            capture_output=True, text=True, env=env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["tube0"] == runs["random0"]
    for key in ("weights", "video", "index"):
        assert runs["tube1"][key] != runs["tube0"][key]


# -- the arithmetic -----------------------------------------------------------------------------------
def knn_by_hand(memory, memory_labels, queries, query_labels, k=20, t=0.07):
    correct = 0
    for q, label in zip(queries, query_labels):
        sims = [float(np.dot(q, m) / np.linalg.norm(q) / np.linalg.norm(m)) for m in memory]
        nearest = sorted(range(len(memory)), key=lambda i: -sims[i])[:min(k, len(memory))]
        votes = {}
        for i in nearest:
            votes[int(memory_labels[i])] = votes.get(int(memory_labels[i]), 0.0) + np.exp(sims[i] / t)
        correct += max(votes, key=votes.get) == label
    return 100.0 * correct / len(queries)


def test_knn_matches_a_plain_implementation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    for memory_size, k in ((60, 20), (12, 20), (60, 1)):   # k capped at the memory size in the second
        labels = rng.integers(0, 5, memory_size)
        memory = centres[labels] + rng.normal(scale=1.5, size=(memory_size, 16))
        qlabels = rng.integers(0, 5, 40)
        queries = centres[qlabels] + rng.normal(scale=1.5, size=(40, 16))
        got = evaluate.knn_top1(memory, labels, queries, qlabels, k=k)
        assert got == pytest.approx(knn_by_hand(memory, labels, queries, qlabels, k=k))
        assert 0 < got < 100   # the noise leaves some queries wrong: the case is not trivial


def test_probe_solves_its_stated_problem():
    """At the probe's answer the gradient of mean cross-entropy + wd/2 |W|^2 (written out in NumPy
    on the standardized features) vanishes, and the reported top-1 is that model's."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 10))
    y = rng.integers(0, 4, 80)
    x = 3 + 2 * (centres[y] + rng.normal(scale=1.2, size=(80, 10)))
    vy = rng.integers(0, 4, 30)
    vx = 3 + 2 * (centres[vy] + rng.normal(scale=1.2, size=(30, 10)))
    p = evaluate.fit_probe(x, y, 4, weight_decay=1e-2)
    z = (x - x.mean(0)) / x.std(0)
    w, b = p["weight"].numpy(), p["bias"].numpy()
    logits = z @ w + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    residual = (prob - np.eye(4)[y]) / len(y)
    assert np.abs(z.T @ residual + 1e-2 * w).max() < 1e-6
    assert np.abs(residual.sum(0)).max() < 1e-6
    vz = (vx - x.mean(0)) / x.std(0)
    expected = 100 * np.mean((vz @ w + b).argmax(1) == vy)
    assert evaluate.probe_top1(x, y, vx, vy, weight_decay=1e-2) == pytest.approx(expected)
    assert 25 < expected < 100


def test_features_come_from_the_encoder_in_eval_mode_without_gradient(tiny_kwargs):
    """Drop path on, model left in train mode: the features still come from eval mode without
    autograd (the same twice), no parameter gets a gradient, and the mode is given back."""
    import timm

    model = timm.create_model("pretrain_videomae_tiny_patch16_224", decoder_depth=1, drop_path_rate=0.5,
                              **{k: v for k, v in tiny_kwargs.items() if k != "depth"}, depth=2)
    model.train()
    seen = []
    model.encoder.register_forward_hook(lambda mod, inp, out: seen.append(
        (mod.training, torch.is_grad_enabled(), out.requires_grad)))
    videos = torch.randint(0, 256, (6, 3, 4, 32, 32), dtype=torch.uint8)
    loader = [{"video": videos[i:i + 3], "label": torch.tensor([0, 1, 2]), "index": torch.arange(i, i + 3)}
              for i in (3, 0)]   # out of order: the features come back in the dataset's order
    feats, labels = evaluate.encoder_features(model.encoder, loader, "cpu")
    again, _ = evaluate.encoder_features(model.encoder, loader, "cpu")
    assert seen and all(s == (False, False, False) for s in seen)
    assert model.training and model.encoder.training
    assert all(p.grad is None for p in model.parameters())
    np.testing.assert_array_equal(feats, again)
    assert feats.shape == (6, model.encoder.embed_dim) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    model.eval()
    with torch.no_grad():
        from videomae.engine.tasks import normalize_on_device
        direct = model.encoder(normalize_on_device(videos[:3], "cpu")).mean(1)
    torch.testing.assert_close(torch.from_numpy(feats[:3]), direct)


def test_common_mask_is_per_item_and_strategy_independent():
    from videomae.masking import build_masking

    grid = (4, 8, 8)
    common = build_masking("random", 0.9)
    a = evaluate.item_masks(common, torch.tensor([0, 1, 2, 3]), grid, "cpu")
    b = evaluate.item_masks(common, torch.tensor([2, 3]), grid, "cpu")
    assert torch.equal(a[2:], b)                     # an item's mask does not depend on its batch
    assert not torch.equal(a[0], a[1])
    # frame masking at T'=8 hides 7 of 8 time steps: 87.5%, not 90%
    assert evaluate.masked_share("frame", 0.9, (8, 4, 4), 16) == 0.875
    assert evaluate.masked_share("tube", 0.9, (8, 14, 14), 4) == int(0.9 * 196) / 196


# -- the report ---------------------------------------------------------------------------------------
def test_report_paired_differences_and_the_spread_sentence(tmp_path):
    from videomae.engine.config import load_config

    base = load_config(os.path.join(ROOT, "configs/demo/pretrain.yaml"))
    values = {("tube", 0): 50.0, ("tube", 1): 60.0, ("random", 0): 52.0, ("random", 1): 64.0,
              ("frame", 0): 80.0, ("frame", 1): 81.0}
    cells = [Cell(s, 0.9, seed) for s in ("tube", "random", "frame") for seed in (0, 1)]
    done = [(c, {"steps": 100, "wall_seconds": 1.0},
             {"effective_masked_share": 0.875 if c.strategy == "frame" else 0.9,
              "metrics": {"knn_top1": values[(c.strategy, c.seed)]}}) for c in cells]
    write_report(str(tmp_path), base, "configs/demo/pretrain.yaml", [], cells, ["knn"], done)
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == 6 and list(rows[0]) == COLUMNS
    text = (tmp_path / "summary.md").read_text()
    assert "| tube | 90.0% | 55.0 ± 7.1 (2) |" in text
    assert "| frame | 87.5% | 80.5 ± 0.7 (2) |" in text
    # random - tube: differences 2 and 4 -> 3.0 ± 1.4; spread max(7.07, 8.49) = 8.5 > 3: said so
    assert "| random | knn_top1 | 3.0 ± 1.4 (2) | 8.5 |" in text
    assert "random vs tube, knn_top1: the difference (3.0) is smaller than the spread between seeds (8.5)" in text
    # frame - tube: 25.5 > 7.1: no such sentence
    assert "| frame | knn_top1 | 25.5 ± 6.4 (2) | 7.1 |" in text
    assert "frame vs tube" not in text
    assert (tmp_path / "summary.png").exists()


def test_usage_errors_are_one_line(tmp_path, capsys):
    import importlib.util

    from videomae.cli import run_tool

    spec = importlib.util.spec_from_file_location("compare_masking", ROOT / "tools" / "compare_masking.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for extra, message in ((["--strategies", "tube,nosuch"], "unknown masking strategy nosuch"),
                           (["SEED", "3"], "SEED set per cell by the comparison"),
                           (["TRAIN.EPOCHS", "1", "--collect"], "--collect after the KEY VALUE overrides"),
                           (["--seeds", "0,x"], "--seeds '0,x': expected a comma-separated list of int")):
        code = run_tool(tool.main, ["--config", str(ROOT / "configs/demo/pretrain.yaml"), "--out", str(tmp_path),
                                    *extra])
        err = capsys.readouterr().err
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
        assert not (tmp_path / "cells").exists() or not os.listdir(tmp_path / "cells")


def test_range_verdict_calls_overlapping_seed_ranges_inconclusive():
    from videomae.compare.report import range_verdict

    assert range_verdict("a", [70.0, 75.0, 72.0], "b", [60.0, 69.9, 65.0]).startswith("a is ahead for every seed")
    assert range_verdict("a", [60.0, 62.0], "b", [70.0, 71.0]).startswith("b is ahead for every seed")
    assert range_verdict("a", [73.4, 60.0, 78.1], "b", [70.3, 53.1, 51.6]).startswith("Inconclusive: the ranges")
    assert range_verdict("a", [90.0], "b", [10.0]).startswith("Inconclusive: one seed")


@pytest.mark.slow
def test_finetune_eval_runs_once_per_cell_with_its_seed_and_reports_test_top1(tmp_path, synthetic_root):
    out = tmp_path / "cmp"
    finetune = ["DATA.ROOT", synthetic_root, "DATA.LIST_DIR", synthetic_root, *TINY, "TRAIN.MAX_STEPS", 2,
                "DATA.TEST_NUM_CLIPS", 1, "DATA.TEST_NUM_CROPS", 1]
    args = ["tools/compare_masking.py", "--config", "configs/demo/pretrain.yaml", "--strategies", "tube",
            "--seeds", "3", "--eval", "finetune", "--finetune-config", "configs/demo/finetune.yaml",
            "--finetune-overrides", " ".join(map(str, finetune)), "--out", out,
            "DATA.ROOT", synthetic_root, "DATA.LIST_DIR", synthetic_root, *TINY, "TRAIN.MAX_STEPS", 2]
    run_compare(*args)
    cell = out / "cells" / "tube-0.9-s3"
    config = (cell / "finetune" / "config.yaml").read_text()
    assert "SEED: 3" in config and str(cell / "model.pt") in config
    rows = read_csv(out / "results.csv")
    assert [(r["metric"], r["seed"]) for r in rows] == [("finetune_top1", "3")]
    record = json.loads((cell / "finetune" / "compare_cell.json").read_text())
    assert float(rows[0]["value"]) == pytest.approx(record["test_top1"])
    assert "finetune_top1" in (out / "summary.md").read_text()
    run_compare(*args)                       # again: the fine-tune is finished, not redone
    assert attempts(cell / "finetune") == 1
    collected = run_compare(*args[:1], "--collect", *args[1:])
    assert "left out" not in collected.stdout and read_csv(out / "results.csv")[0]["value"] == rows[0]["value"]


def test_finetune_eval_needs_a_finetune_config(tmp_path):
    result = run_compare("tools/compare_masking.py", "--config", "configs/demo/pretrain.yaml", "--eval", "knn,finetune",
                         "--out", tmp_path, check=False)
    assert result.returncode == 2 and "--eval finetune needs --finetune-config" in result.stderr
