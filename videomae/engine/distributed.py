"""Who am I in the job: torchrun / deepspeed launcher, SLURM, or a single process.

Detection order: `RANK`/`WORLD_SIZE`/`LOCAL_RANK` (torchrun, the deepspeed launcher), then SLURM
(`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`), else one process. The
backend is nccl on GPUs and gloo on CPU; the same code path runs both.
"""
from __future__ import annotations

import atexit
import os
import re
import socket
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"        # torchrun | slurm | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host lists: `gpu[01-04,07],cpu3` -> gpu01 gpu02 gpu03 gpu04 gpu07 cpu3.
    Zero padding is kept; several bracket groups in one name expand as a product."""
    hosts, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            part = hostlist[start:i].strip()
            if part:
                hosts += _expand_one(part)
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced brackets in host list {hostlist!r}")
    return hosts


def _expand_one(name: str) -> list[str]:
    match = re.search(r"\[([^\]]+)\]", name)
    if not match:
        return [name]
    head, tail = name[: match.start()], name[match.end():]
    values = []
    for item in match.group(1).split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            values += [str(v).zfill(len(lo)) for v in range(int(lo), int(hi) + 1)]
        else:
            values.append(item)
    return [expanded for v in values for expanded in _expand_one(head + v + tail)]


def free_port() -> int:
    """A port nothing listens on now, for a rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect(env: dict | None = None) -> DistInfo:
    """Read the launcher's environment. Pure: it changes nothing (see `setup_env`)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                        env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    # only inside an `srun` step: the batch script itself also sees SLURM_NTASKS but is one process
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        hosts = expand_hostlist(nodelist) if nodelist else ["127.0.0.1"]
        # every task derives the same port from the job id, so no rendezvous is needed to agree
        job = int(env.get("SLURM_JOB_ID", 0))
        port = int(env.get("MASTER_PORT", 0)) or 20000 + job % 20000
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                        env.get("MASTER_ADDR") or hosts[0], port, "slurm")
    return DistInfo(master_port=int(env.get("MASTER_PORT", 0)) or free_port())


def setup_env(info: DistInfo) -> None:
    """Export what torch.distributed's env:// rendezvous reads."""
    os.environ.update(RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK=str(info.local_rank),
                      MASTER_ADDR=info.master_addr, MASTER_PORT=str(info.master_port))


def use_cuda() -> bool:
    """GPUs when there are any, unless `VIDEOMAE_DEVICE=cpu` says otherwise (e.g. more ranks on one
    machine than it has GPUs: NCCL refuses two ranks on one GPU, gloo on CPU does not)."""
    wanted = os.environ.get("VIDEOMAE_DEVICE", "auto").lower()
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"VIDEOMAE_DEVICE={wanted!r}: use auto, cpu or cuda")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("VIDEOMAE_DEVICE=cuda but torch sees no GPU")
    return wanted != "cpu" and torch.cuda.is_available()


def device_for(info: DistInfo) -> torch.device:
    if use_cuda():
        if info.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {info.local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                               "visible): start at most one process per GPU, or set VIDEOMAE_DEVICE=cpu")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


_CURRENT: tuple[DistInfo, torch.device] | None = None


def init_distributed(timeout_minutes: int = 30) -> tuple[DistInfo, torch.device]:
    """Detect, export env, pick the device, and start the process group (nccl on GPU, gloo on CPU)."""
    import datetime

    from .quiet import import_deepspeed, quiet_stdout

    deepspeed = import_deepspeed()
    global _CURRENT
    if torch.distributed.is_initialized() and _CURRENT is not None:
        return _CURRENT  # another run in the same process (the demo): the same world
    info = detect()
    setup_env(info)
    device = device_for(info)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        with quiet_stdout():  # "... shm_comm_op built successfully"
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       timeout=datetime.timedelta(minutes=timeout_minutes))
        atexit.register(shutdown_distributed)
    _CURRENT = (info, device)
    return _CURRENT


def shutdown_distributed() -> None:
    """Tear the process group down while the interpreter is still whole. Left to interpreter
    finalization, gloo's worker threads can still hold work objects whose destruction needs the
    GIL, and a rank that finished first dies with `terminate called without an active exception`
    (SIGABRT, exit 134) although its work is done."""
    global _CURRENT
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CURRENT = None


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
