"""Atomic writes and safe loads of checkpoints and small result files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import re
import socket
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

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


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


class _Writes:
    """A file's ``write`` that keeps the OSError it raised: torch.save reports a failed write (a full disk) as
    a RuntimeError of its zip writer ("unexpected pos ..."), which :func:`atomic_save` turns back into it."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` streamed into the temporary file (no copy of the serialised object in memory: a teacher
    cache's table can be tens of GB); the same bytes as a save into a buffer, whatever the file's name."""

    def save(fh: BinaryIO) -> None:
        writes = _Writes(fh)
        try:
            torch.save(obj, writes)
        except RuntimeError:
            if writes.error is not None:
                raise writes.error from None
            raise

    _atomic_write(path, save)


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


# What kdpipe.engine reads from a run's checkpoint.pt (``fingerprint`` too, but as optional).
RUN_CHECKPOINT_KEYS = ("epoch", "task", "history", "best", "train_time_s", "resumed_at", "rng")


def safe_load(path: str | Path, what: str = "checkpoint", advice: str = "", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with one clear error for missing, damaged or refused files.

    ``what`` names the file's role (the flag, e.g. ``t_model``) in the error, ``advice`` ends it.  Whatever
    the weights-only unpickler raises on a file it cannot or may not read is one :class:`KdpipeError` line --
    never torch's advice to load without ``weights_only``; warnings of a load that fails are not shown.
    ``mmap``: the tensors map the file instead of being read into memory (what is never touched is never read).
    """
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"{what} {path}: no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except MemoryError as exc:
            raise KdpipeError(
                f"{what} {path}: out of host memory while loading it ({path.stat().st_size} bytes on disk; "
                "a damaged file can claim a huge size)"
            ) from exc
        except Exception as exc:  # any failure to read an untrusted file is one error line
            raise KdpipeError(_load_error(path, what, exc) + advice) from exc
    for w in caught:  # a load that worked shows its warnings as it would have
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return obj


RUN_CHECKPOINT_ADVICE = "; move it away to train the run from epoch 0"


def load_run_checkpoint(path: str | Path) -> dict:
    """A run's own ``checkpoint.pt`` (:func:`safe_load`), holding what :class:`kdpipe.engine.Training` resumes
    from; else one line saying to move it away."""
    state = safe_load(path, "checkpoint", RUN_CHECKPOINT_ADVICE)
    if not isinstance(state, dict):
        problem = f"a {type(state).__name__}, not a dict"
    elif any(key not in state for key in RUN_CHECKPOINT_KEYS):
        problem = "no " + ", ".join(key for key in RUN_CHECKPOINT_KEYS if key not in state)
    elif not isinstance(state.get("fingerprint", {}), dict):
        problem = "its fingerprint is not a dict"
    else:
        return state
    raise KdpipeError(f"checkpoint {path}: not a kdpipe training checkpoint ({problem}){RUN_CHECKPOINT_ADVICE}")


def safe_load_state_dict(path: str | Path, what: str, expected: str = "a kdpipe model.pt") -> dict:
    """A file that must hold a state dict (parameter name -> tensor), weights-only, else one line."""
    state = safe_load(path, what)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        kind = "a dict with non-tensor values" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise KdpipeError(f"{what} {path}: not a state dict of tensors ({kind}); expected {expected}")
    return state


def _load_error(path: Path, what: str, exc: Exception) -> str:
    """The error line for a file ``torch.load(weights_only=True)`` raised ``exc`` on: what the unpickler
    refused or why the file is unreadable, never torch's advice to load it without ``weights_only``."""
    text = str(exc)
    if "weights only load failed" in text.lower() or "Cannot use ``weights_only=True``" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            return (
                f"{what} {path}: refused: it names {_one_line(found[1].rstrip('.,;'))}, which a weights-only load "
                f"does not allow (only tensors and plain containers); kdpipe never runs code from a file"
            )
        return (  # junk bytes, or a pickle protocol the unpickler stops at before naming anything
            f"{what} {path}: unreadable, truncated or corrupted, or holding what a weights-only load does not "
            f"allow ({_one_line(_unpickler_complaint(text))}); kdpipe never runs code from a file"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    if not isinstance(exc, (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError)):
        kind = type(exc).__qualname__
        kind = kind if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{kind}"
        reason = f"{kind}: {reason}" if reason else kind  # KeyError: 101 rather than a bare 101
    return f"{what} {path}: unreadable, truncated or corrupted ({_one_line(reason or type(exc).__name__)})"


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` for an error line: control characters escaped, at most ``limit`` characters."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickler_complaint(text: str) -> str:
    """The weights-only unpickler's own complaint in torch's message, without torch's advice around it."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return re.split(r"\s+Please use `torch\.serialization", found[1])[0].strip()
    if "TorchScript" in text:
        return "a TorchScript archive"
    if "legacy .tar" in text:
        return "the legacy .tar format"
    return "not a tensor checkpoint"


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
