"""Running tools/train.py as a user would, on the small synthetic set."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from videomae.engine import distributed

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# a tiny, fast run: 4 frames of 32x32, 8x8 cubes -> 32 tokens
TINY = ["MODEL.NUM_FRAMES", "4", "MODEL.IMG_SIZE", "32", "MODEL.PATCH_SIZE", "8", "MODEL.DECODER_DEPTH", "1",
        "DATA.NUM_REPEATS", "1", "DATA.NUM_WORKERS", "0", "DATA.SAMPLING_RATE", "2", "TRAIN.BATCH_SIZE", "4",
        "TRAIN.LOG_PERIOD", "1", "TRAIN.WARMUP_EPOCHS", "1", "LOG.PROGRESS", "False",
        "DEEPSPEED.PRECISION", "fp32"]


def train_args(out_dir, data_root, *overrides):
    return ["tools/train.py", "--config", "configs/demo/pretrain.yaml", "OUTPUT_DIR", str(out_dir),
            "DATA.ROOT", str(data_root), "DATA.LIST_DIR", str(data_root), *TINY, *map(str, overrides)]


def free_port() -> str:
    """A port nothing listens on now, for a launcher's rendezvous."""
    return str(distributed.free_port())


# node ids of the tests that ran a tool on a GPU; conftest prints how many passed
CUDA_TESTS: set = set()


def device_for_ranks(nproc: int) -> str:
    """What `nproc` ranks of a tool run on here: one GPU each where there are enough (the tools pick
    the GPU themselves), else CPU with gloo (NCCL refuses two ranks on one GPU)."""
    return "cuda" if torch.cuda.device_count() >= nproc else "cpu"


def env(nproc: int = 1):
    extra = {}
    if device_for_ranks(nproc) == "cpu":
        extra = {"VIDEOMAE_DEVICE": "cpu", "DS_ACCELERATOR": "cpu"}
    elif "PYTEST_CURRENT_TEST" in os.environ:
        CUDA_TESTS.add(os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run_tool(script, *args, nproc=1, check=True, timeout=600):
    """`python script args`, or under torchrun with `nproc` processes."""
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_port", free_port()]
    cmd = [PYTHON, *launcher, str(script), *map(str, args)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env(nproc), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def run_train(out_dir, data_root, *overrides, nproc=1, check=True, timeout=600):
    return run_tool(*train_args(out_dir, data_root, *overrides), nproc=nproc, check=check, timeout=timeout)


def final_json(stdout: str) -> dict:
    """The summary a tool prints last; other lines (and other ranks' logs) may surround it."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary in the output:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


def losses(out_dir):
    rows = [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]
    return [r["loss"] for r in rows if r["type"] == "train"]


# Not part of an error report: what DeepSpeed and torch print while starting on a machine without
# CUDA, FFmpeg's and decord's own log lines about a file they cannot read (the report's one line
# says the same with the list file:line; two loader workers' lines may interleave, so decord's
# "[hh:mm:ss] file.cc:N:" prefix is matched anywhere in a line), and progress bars. A tool's
# normal progress (load report, training log) goes to stdout.
NOISE = re.compile(r"^DeepSpeed \S+ built successfully$|cpp_extension\.py:\d+\] No CUDA runtime is found"
                   r"|^\[[\w,]+ @ 0x[0-9a-f]+\] |\d\d:\d\d:\d\d\] \S+\.cc:\d+: |^\w+: +\d+%\|")


def load_tool(path):
    """A tool script as a module, by its file: putting tools/ on sys.path would let tools/test.py
    shadow the standard library's `test` package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tool_" + Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
