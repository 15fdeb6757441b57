"""How every tool ends: a mistake the user can fix is one line on stderr and a documented exit code,
never a traceback. A traceback is kept for what is a bug in this code.

    if __name__ == "__main__":
        sys.exit(run_tool(main))

Exit codes (the same table is in README.md):

      0  success
      1  data / checkpoint / runtime error: a list, a video, a checkpoint, a path, a non-finite loss
      2  usage / config error: the command line or the config needs fixing
     75  preempted outside SLURM, or stopped by one Ctrl-C: checkpointed; run the same command again to resume
    130  aborted by Ctrl-C (train: a second Ctrl-C); nothing more was saved
"""
from __future__ import annotations

import re
import sys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2         # argparse exits with 2 too
EXIT_PREEMPTED = 75    # sysexits.h EX_TEMPFAIL: "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class UsageError(ValueError):
    """A tool's own argument check failed (its argparse options, not the config)."""


# Matched by qualified class name along the exception's MRO, so that answering "is this one of
# ours?" never imports torch or DeepSpeed: a class whose module was never imported cannot have
# been raised.
_CONFIG_ERRORS = ("videomae.engine.config.ConfigError",)
_USAGE_ERRORS = ("videomae.cli.UsageError",)
_DATA_ERRORS = (
    "videomae.data.annotations.AnnotationError",
    "videomae.data.datasets.TooManyBadVideos",
    "videomae.data.datasets.EvalVideoError",
    "videomae.data.decoding.VideoDecodeError",
    "videomae.convert.formats.CheckpointError",
    "videomae.engine.trainer.NonFiniteLoss",
    "videomae.engine.trainer.Diverged",
    "videomae.engine.run_folder.RunFolderError",
)
# a path the user gave that is missing, a folder, or unreadable
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _is(err: BaseException, names: tuple[str, ...]) -> bool:
    return any(f"{cls.__module__}.{cls.__qualname__}" in names for cls in type(err).__mro__)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line. An exception raised in a DataLoader worker comes back as
    'Caught X in DataLoader worker process 0. Original Traceback ...': its last line is the message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = re.sub(rf"^[\w.]*{re.escape(type(err).__name__)}: ", "", last)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    return " ".join(text.split())


def classify(err: BaseException) -> tuple[int, str] | None:
    """(exit code, stderr line) for a known mistake; None for anything else (a bug: traceback)."""
    if _is(err, _CONFIG_ERRORS):
        return EXIT_USAGE, f"config error: {one_line(err)}"
    if _is(err, _USAGE_ERRORS):
        return EXIT_USAGE, f"error: {one_line(err)}"
    if _is(err, _DATA_ERRORS) or (isinstance(err, _PATH_ERRORS) and err.filename is not None):
        return EXIT_ERROR, f"error: {one_line(err)}"
    return None


def _plain_excepthook() -> None:
    """torch.distributed's init_process_group installs an excepthook that prefixes every traceback
    line with `[rank0]:`. That tells ranks apart under a launcher; a single process has nothing to
    tell apart, so it gets Python's own hook back."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1:
        sys.excepthook = sys.__excepthook__


def run_tool(main, argv=None) -> int:
    """Run a tool's `main(argv)`; its return value is the exit code (None counts as success)."""
    try:
        code = main(argv)
    except KeyboardInterrupt:  # Ctrl-C is not a bug: no traceback
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as err:
        known = classify(err)
        if known is None:
            _plain_excepthook()
            raise
        code, line = known
        print(line, file=sys.stderr, flush=True)
        return code
    return EXIT_OK if code is None else code
