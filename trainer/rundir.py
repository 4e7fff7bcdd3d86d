"""The run directory: one writer at a time, atomic checkpoints, old results never silently replaced.

A run directory holds `checkpoint.pt` (everything a resumed run needs),
`metrics.jsonl` (one line per step) and the end-of-run plot. A process
writes it only while it holds `.lock`, an `flock` the OS drops when the
process dies (kill -9 included); the lock file names its holder, so a second
writer is told who has the directory, and a lock left by a dead process is
taken over with a message.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import socket
import time
from collections.abc import Callable

import torch

from rollout_bandits.validation import fail

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
PLOT = "learning_curve.png"
LOCK = ".lock"
FORMAT = "rollout_bandits.train/v1"


def _holder_text(raw: bytes) -> str | None:
    try:
        h = json.loads(raw.decode())
        return f"pid {h['pid']} on {h['host']} (started {h['started']})"
    except (ValueError, KeyError, TypeError):
        return None


class RunLock:
    """Exclusive use of a run directory for the duration of a `with` block."""

    def __init__(self, out_dir: str, log: Callable[[str], None] = print):
        self.path = os.path.join(out_dir, LOCK)
        self.out_dir, self.log, self.fd = out_dir, log, None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder_text(os.pread(fd, 4096, 0))
            os.close(fd)
            fail("TrainConfig", "out_dir", f"{self.out_dir!r}, in use by {holder or 'another process'}",
                 "a run directory no other process is writing (wait for that run or stop it)")
        previous = _holder_text(os.pread(fd, 4096, 0))
        if previous:  # a holder that released the lock cleanly empties the file
            self.log(f"taking over the lock of {previous} on {self.out_dir}: that process is no longer running")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return False


def save_checkpoint(path: str, state: dict) -> None:
    """Temp file, fsync, rename, fsync of the folder: a crash at any point leaves either the old
    checkpoint or the new one, never a torn file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(out_dir: str, log: Callable[[str], None]) -> None:
    """Temp checkpoints of writers that died mid-write (call with the lock held: no live writer)."""
    for tmp in sorted(glob.glob(os.path.join(glob.escape(out_dir), f"{CHECKPOINT}.tmp.*"))):
        os.remove(tmp)
        log(f"removed {tmp}, left by a run that stopped while writing its checkpoint")


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    if not os.path.isfile(path):
        fail("checkpoint", "path", f"{path!r}, which does not exist", "a checkpoint to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # torch raises many types on a torn or foreign file
        fail("checkpoint", "path", f"{path!r}, which is corrupt or not a rollout-bandits checkpoint "
             f"({type(err).__name__}: {err})", "a checkpoint written by `rollout-bandits train`")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fail("checkpoint", "path", f"{path!r}, which is not a rollout-bandits checkpoint",
             "a checkpoint written by `rollout-bandits train`")
    state["config"].pop("overwrite", None)  # a field of checkpoints written before it became a flag
    return state


def stored_config(out_dir: str) -> dict:
    """The config a run directory's checkpoint was written with (weights memory-mapped, not read)."""
    return load_checkpoint(os.path.join(out_dir, CHECKPOINT), mmap=True)["config"]


def check_run_dir(out_dir: str, *, resume: bool, overwrite: bool) -> list[str]:
    """Read-only checks before a run starts; returns the files an `overwrite` will replace."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail("TrainConfig", "out_dir", f"{out_dir!r}, which is a file", "a directory (or a path to create)")
    ckpt = os.path.join(out_dir, CHECKPOINT)
    if resume:
        if not os.path.isfile(ckpt):
            fail("checkpoint", "path", f"{ckpt!r}, which does not exist", "a checkpoint to resume (nothing to resume)")
        return []
    old = [name for name in (CHECKPOINT, METRICS, PLOT) if os.path.exists(os.path.join(out_dir, name))]
    if old and not overwrite:
        what = ("already holds a checkpoint" if CHECKPOINT in old
                else "holds the metrics of an earlier run that stopped before its first checkpoint")
        fail("TrainConfig", "out_dir", f"{out_dir!r}, which {what} ({', '.join(old)})",
             "a new directory; pass --resume to continue that run or --overwrite to replace it "
             "(nothing was changed)")
    return old


def latest_run(root: str, prefix: str) -> str:
    """The newest `root/<prefix>*` folder that holds a checkpoint (the names sort by time)."""
    runs = sorted(d for d in glob.glob(os.path.join(glob.escape(root), prefix + "*"))
                  if os.path.isfile(os.path.join(d, CHECKPOINT)))
    if not runs:
        fail("run", "resume", f"no {os.path.join(root, prefix + '*')} folder with a checkpoint",
             "a run of `rollout-bandits run` to continue")
    return runs[-1]
