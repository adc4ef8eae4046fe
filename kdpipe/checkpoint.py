"""Atomic writes and safe loads of checkpoints and small result files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import KdpipeError

log = logging.getLogger("kdpipe")

LOCK_FILE = "run.lock"
CHECKPOINT = "checkpoint.pt"  # a training run's state, written every epoch (kdpipe.engine), in its run directory


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with one clear error for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdpipeError(f"{what} {path}: unreadable, truncated or corrupted ({reason})") from exc


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path):
    """Hold an exclusive lock on ``run_dir`` (its ``run.lock``) for the life of the block.

    A second process on the same directory (e.g. a duplicate SLURM job after the submitting
    Snakemake died) is refused with one line naming the holder, instead of training alongside
    it.  The lock is ``flock`` on a file in the directory (NFS: POSIX locks underneath), so the
    kernel releases it when the holder exits in any way, even SIGKILL; the file itself stays.
    """
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                log.warning("cannot lock %s (%s); a second process on it would not be detected", path, exc)
            else:
                handle.seek(0)
                holder = handle.read().split() or ["?", "?", "?"]
                pid, host, since = (holder + ["?", "?", "?"])[:3]
                raise KdpipeError(
                    f"{run_dir} is in use by another kdpipe process (pid {pid} on {host}, since {since}; "
                    f"lock {path}): refusing to train alongside it; wait for it, or cancel it if it is an orphan"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock
