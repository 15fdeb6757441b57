"""Messages a user can do nothing about, silenced once, here.

Importing DeepSpeed prints op-builder notes (async_io, CUTLASS, ...) and makes torch warn that it
found no CUDA toolkit (`CUDA_HOME`): neither matters for training with the prebuilt wheels, and in
a SLURM `.out` file they bury the lines that do. Starting its process group prints that an op was
"built successfully". Warnings and errors DeepSpeed logs later still show.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys

_NOISY_LOGGERS = ("torch.utils.cpp_extension",)


def import_deepspeed():
    """`import deepspeed`, without its import-time notes."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    from .distributed import use_cuda

    if not use_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, instead of DeepSpeed warning about it
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import deepspeed
    from deepspeed.utils import logger as ds_logger

    # its log handler was created while stdout pointed at the buffer: point it back
    for handler in ds_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is captured:
            handler.setStream(sys.stdout)
    ds_logger.setLevel(logging.WARNING)
    return deepspeed


@contextlib.contextmanager
def quiet_stdout():
    """For DeepSpeed calls that narrate on stdout (op builds, checkpoint shards)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
