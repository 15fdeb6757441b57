"""One run per OUTPUT_DIR: a lock for the life of the run, a resume that keeps the run's recipe,
and write failures (disk full, read-only folder) told as one line naming the path.

    OUTPUT_DIR/run.lock    {"host", "pid", "start", "time"} of the run that holds the folder

The lock is created with a hard link (atomic, and it fails when the name exists, also on NFS), so
two starters cannot both win. A lock whose process is gone on this host is stale and taken over; a
lock from another host cannot be checked from here and is respected until that run ends, the file is
removed, or `TRAIN.BREAK_LOCK True` takes it -- except that a requeued SLURM job takes over the lock
of its own earlier start (same job id, another restart count), wherever that ran.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time

import yaml

from .config import ConfigError, get_defaults

LOCK_NAME = "run.lock"

# keys a resumed run may change freely: how it is run, logged and checkpointed, not what it learns
RESUME_ALLOWED = {
    "OUTPUT_DIR", "DATA.NUM_WORKERS", "DATA.LOADER_TIMEOUT", "MODEL.COMPILE", "MODEL.GRAD_CHECKPOINTING",
    "TRAIN.MAX_STEPS", "TRAIN.LOG_PERIOD", "TRAIN.CKPT_PERIOD", "TRAIN.CKPT_STEPS", "TRAIN.KEEP_CHECKPOINTS",
    "TRAIN.EVAL_PERIOD", "TRAIN.VAL_VIDEOS", "TRAIN.AUTO_RESUME", "TRAIN.DIVERGENCE_FACTOR", "TRAIN.DIVERGENCE_PATIENCE",
    "TRAIN.BREAK_LOCK", "TRAIN.ALLOW_CHANGES", "DATA.MAX_BAD_RATIO",
    "TRAIN.RECIPE_GLOBAL_BATCH",   # only what the start-up warning compares with
}
RESUME_ALLOWED_SECTIONS = ("LOG.",)
# may change together with the world size as long as the global batch stays the same
BATCH_KEYS = ("TRAIN.BATCH_SIZE", "TRAIN.ACCUM_STEPS")


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: one line that says why and what to do."""


class RunLocked(RunFolderError):
    pass


class DiskFault(RunFolderError):
    pass


class ConfigChanged(ConfigError):
    """Resuming with another recipe: a config error (exit 2), since the fix is in the config."""


# -- write failures ---------------------------------------------------------------------------------
_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def disk_fault(err: OSError, what: str, path: str) -> DiskFault:
    cause = _CAUSES.get(err.errno, err.strerror or str(err))
    name = errno.errorcode.get(err.errno, "") if err.errno else ""
    where = err.filename if isinstance(err.filename, str) and err.filename else path
    if where.startswith(f"{path}.tmp"):
        where = path  # the temp file of `path`: name the file the user knows
    return DiskFault(f"cannot write {what} {where}: {cause}" + (f" ({name})" if name else ""))


@contextlib.contextmanager
def writing(what: str, path: str, cleanup: tuple[str, ...] = ()):
    """OSError while writing `path` -> DiskFault naming it; `cleanup` (temp files) is removed."""
    try:
        yield
    except OSError as err:
        for leftover in cleanup:
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise disk_fault(err, what, path) from None


def temp_name(path: str) -> str:
    """Unique per process and host: two starters never write the same temp file."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"


def is_temp_name(name: str) -> bool:
    return ".tmp" in name


def remove_temp_files(out_dir: str) -> list[str]:
    """Temp files that killed writes of config.yaml, metrics.jsonl or model.pt left (at start, by
    the lock holder; another starter's lock temp files are left alone)."""
    if not os.path.isdir(out_dir):
        return []
    removed = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith(("config.yaml.tmp", "metrics.jsonl.tmp", "model.pt.tmp")):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, name))
                removed.append(name)
    return removed


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_free_space(folder: str, needed: int, what: str) -> None:
    """Refuse to start a write that cannot fit (a half-written checkpoint costs the space anyway)."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    free = os.statvfs(probe)
    available = free.f_bavail * free.f_frsize
    if available < needed:
        raise DiskFault(f"not enough free space for {what} in {folder}: {format_bytes(available)} free, about "
                        f"{format_bytes(needed)} needed; free some space or set OUTPUT_DIR elsewhere")


# -- the lock ---------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not taken for the lock holder."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = _process_start(pid)
    return start is None or now is None or now == start


def _read_lock(path: str) -> dict | None:
    try:
        with open(path) as handle:
            holder = json.loads(handle.read() or "null")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _slurm_start() -> dict:
    """This SLURM job and how often it was requeued: one job never runs twice at the same time,
    so a lock of the same job from an earlier start is stale wherever that start ran."""
    env = os.environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return {}
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return {"slurm_job": job, "restart": env.get("SLURM_RESTART_COUNT", "0")}


class RunLock:
    def __init__(self, out_dir: str, break_lock: bool = False):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.break_lock = break_lock
        self.mine: dict | None = None

    def acquire(self) -> str:
        """Take the lock; returns a note for the log ("" or what was taken over)."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), **_slurm_start()}
        tmp = temp_name(self.path)
        with writing("the run lock", self.path, cleanup=(tmp,)):
            with open(tmp, "w") as handle:
                handle.write(json.dumps(me) + "\n")
            try:
                note = ""
                for _ in range(3):
                    try:
                        os.link(tmp, self.path)  # atomic, and fails when the lock exists
                        self.mine = me
                        return note
                    except FileExistsError:
                        holder = _read_lock(self.path)
                    if holder is not None:
                        note = self._take_over_note(holder)  # raises RunLocked when it must be respected
                        self._move_aside(holder)
            finally:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        self._refuse(_read_lock(self.path) or {})

    def _move_aside(self, holder: dict) -> None:
        """Remove the lock `holder` left, unless another starter has replaced it meanwhile (then
        it is put back, and the next round refuses)."""
        aside = temp_name(self.path + ".stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != holder:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        os.remove(aside)

    def _take_over_note(self, holder: dict) -> str:
        """The note for taking `holder`'s lock, or RunLocked when it must be respected."""
        host, pid = holder.get("host"), holder.get("pid")
        if not holder:
            # unreadable: a starter is between creating and writing it (not with links), or junk
            if self.break_lock:
                return f"took over the unreadable lock {self.path} (TRAIN.BREAK_LOCK)"
            self._refuse(holder)
        slurm = _slurm_start()
        if slurm and holder.get("slurm_job") == slurm["slurm_job"] and holder.get("restart") != slurm["restart"]:
            # a requeued job may start on another host while its killed first start left the lock
            return f"took over the lock of an earlier start of SLURM job {slurm['slurm_job']} (pid {pid} on {host})"
        if host == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid():
                return ""  # this process ran here before (several runs in one process)
            if not _alive(pid, holder.get("start")):
                return f"took over the stale lock of pid {pid} on {host} (that process is gone)"
        if self.break_lock:
            return f"took over the lock of pid {pid} on {host} (TRAIN.BREAK_LOCK)"
        self._refuse(holder)

    def _refuse(self, holder: dict):
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('time')}" if holder
               else "lock file unreadable")
        other_host = holder and holder.get("host") != socket.gethostname()
        raise RunLocked(f"{os.path.dirname(self.path)} is in use by another run ({who}); wait for it to end or "
                        f"choose another OUTPUT_DIR" + ("; if that run is gone, remove " + self.path +
                                                        " or set TRAIN.BREAK_LOCK True" if other_host or not holder
                                                        else ""))

    def release(self) -> None:
        """Remove the lock if it is still ours (a forced takeover may have replaced it)."""
        if self.mine is None:
            return
        holder = _read_lock(self.path)
        if holder and holder.get("pid") == self.mine["pid"] and holder.get("host") == self.mine["host"] \
                and holder.get("start") == self.mine["start"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
        self.mine = None


# -- the recipe of a resumed run --------------------------------------------------------------------
def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _allowed(key: str, extra: set) -> bool:
    return key in RESUME_ALLOWED or key in extra or key.startswith(RESUME_ALLOWED_SECTIONS)


def config_changes(saved_yaml: str, cfg, saved_world_size: int, world_size: int) -> list[str]:
    """What `cfg` changes in the saved run's config outside the allowlist, as `KEY old -> new`.
    The saved file is parsed as data (safe YAML, nothing imported); keys it lacks (saved by an
    older version) are compared at their defaults."""
    saved = yaml.safe_load(saved_yaml) or {}
    defaults = _flatten(yaml.safe_load(get_defaults().dump()))
    new = _flatten(yaml.safe_load(cfg.dump()))
    old = {**defaults, **{k: v for k, v in _flatten(saved).items() if k in defaults}}
    extra = {k.strip() for k in str(cfg.TRAIN.ALLOW_CHANGES).split(",") if k.strip()}
    changes = [f"{key} {old[key]!r} -> {new[key]!r}" for key in sorted(new)
               if key not in BATCH_KEYS and not _allowed(key, extra) and old.get(key) != new[key]]
    old_global = old["TRAIN.BATCH_SIZE"] * old["TRAIN.ACCUM_STEPS"] * saved_world_size
    new_global = new["TRAIN.BATCH_SIZE"] * new["TRAIN.ACCUM_STEPS"] * world_size
    if old_global != new_global and not set(BATCH_KEYS) <= extra:
        changes.append(f"global batch (TRAIN.BATCH_SIZE x TRAIN.ACCUM_STEPS x world size) {old['TRAIN.BATCH_SIZE']} "
                       f"x {old['TRAIN.ACCUM_STEPS']} x {saved_world_size} = {old_global} -> {new['TRAIN.BATCH_SIZE']}"
                       f" x {new['TRAIN.ACCUM_STEPS']} x {world_size} = {new_global}")
    return changes


def check_resume_config(out_dir: str, cfg, saved_world_size: int, world_size: int, tag: str) -> None:
    """Refuse to resume the run in `out_dir` with a different recipe: the new config would relabel
    the old run's checkpoints and weights."""
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.exists(path):
        return  # a folder from before config.yaml was written: nothing to compare
    with open(path, encoding="utf-8", errors="replace") as handle:
        changes = config_changes(handle.read(), cfg, saved_world_size, world_size)
    if changes:
        keys = ",".join(change.split(" ", 1)[0] for change in changes if not change.startswith("global batch"))
        raise ConfigChanged(
            f"the config differs from the run being resumed in {out_dir} ({tag}): {'; '.join(changes)}. Resume with "
            f"that run's config ({path}), choose another OUTPUT_DIR, or accept the change with TRAIN.ALLOW_CHANGES "
            f"{keys or 'TRAIN.BATCH_SIZE,TRAIN.ACCUM_STEPS'}")
