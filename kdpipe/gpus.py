"""Several local training jobs per GPU: small CIFAR networks leave most of a large GPU idle.

``KDPIPE_JOBS_PER_GPU=k`` (``make run JOBS_PER_GPU=k``; 1 by default) is read twice from the same
variable: by the Snakefile, where ``--resources gpu=N`` counts GPUs and becomes N × k job slots
(every training job takes one), and by each training job, which takes a free slot of its own on
the GPU with the fewest held slots (a lock file per GPU and slot, released when the process
ends).  With one visible GPU every job uses device 0.  Under SLURM each job sees only the GPU (or
the share of one) it was given, so the variable is for local runs only.

Light at import (the Snakefile imports it): torch is imported where a device is counted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

from .errors import KdpipeError

log = logging.getLogger("kdpipe")

JOBS_PER_GPU_VAR = "KDPIPE_JOBS_PER_GPU"


def jobs_per_gpu() -> int:
    """Training jobs that share one GPU on a local run: ``KDPIPE_JOBS_PER_GPU``, 1 when unset."""
    value = os.environ.get(JOBS_PER_GPU_VAR, "").strip() or "1"
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise KdpipeError(
            f"{JOBS_PER_GPU_VAR}={value!r}: training jobs per GPU must be a positive integer (1 = one job per GPU)"
        )
    return int(value)


# ---------------------------------------------------------------- the Snakefile side


_GIVEN_GPUS: dict[int, int] = {}  # id(workflow) -> its --resources gpu=N as given, before packing


def pack_local_gpus(workflow) -> str | None:
    """Turn a local run's ``--resources gpu=N`` (GPUs) into N × jobs_per_gpu() training-job slots.

    Returns the line to print when jobs share GPUs, else None (no GPU bound given, or one job per GPU).
    """
    per_gpu = jobs_per_gpu()
    given = workflow.global_resources.get("gpu")  # --resources gpu=N, or the local profile's
    if given is None or not isinstance(given.value, int):
        return None
    gpus = _GIVEN_GPUS.setdefault(id(workflow), given.value)  # a second parse scales N, not N x k
    if per_gpu == 1:
        return None
    total = gpus * per_gpu
    workflow.global_resources["gpu"] = total
    return f"{per_gpu} training jobs per GPU ({JOBS_PER_GPU_VAR}): --resources gpu={gpus} runs up to {total} at once"


# ---------------------------------------------------------------- the job side


def lock_dir() -> Path:
    """This user's GPU slot locks, shared by every kdpipe process on the machine."""
    return Path(tempfile.gettempdir()) / f"kdpipe-gpu-locks-{os.getuid()}"


def _try_lock(path: Path) -> IO | None:
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_slot(locks: Path, gpus: int, per_gpu: int) -> tuple[int, IO] | None:
    """A free slot on the GPU with the fewest held slots (the lowest index among equals): its GPU
    and the open, locked file that holds it; None when all ``gpus`` × ``per_gpu`` slots are held.

    Claimers take turns (``claim.lock``), so two jobs that start together see each other's slot.
    """
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "claim.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        free = {}
        for gpu in range(gpus):
            free[gpu] = []
            for slot in range(per_gpu):
                probe = _try_lock(locks / f"gpu{gpu}-slot{slot}.lock")
                if probe is not None:
                    probe.close()  # closing releases it: nobody else claims while we hold the turn
                    free[gpu].append(slot)
        candidates = [gpu for gpu in range(gpus) if free[gpu]]
        for gpu in sorted(candidates, key=lambda g: (per_gpu - len(free[g]), g)):
            handle = _try_lock(locks / f"gpu{gpu}-slot{free[gpu][0]}.lock")
            if handle is not None:
                return gpu, handle
    return None


_HELD: tuple[int, IO] | None = None  # (GPU, its slot's open lock file) this process holds


def claim_gpu(locks: Path | None = None) -> int:
    """The GPU this process trains on when several are visible and no scheduler assigned one.

    Local Snakemake runs jobs side by side without telling them which device to use; each takes
    a slot (:func:`claim_slot`, ``jobs_per_gpu()`` slots per GPU) and keeps it until it exits.
    Under SLURM (or with CUDA_VISIBLE_DEVICES naming one GPU) a job sees only its own GPU: device 0.
    """
    global _HELD
    import torch

    per_gpu = jobs_per_gpu()  # a bad value is refused on any machine, not only on one with several GPUs
    count = torch.cuda.device_count()
    if count <= 1:
        return 0
    if _HELD is not None:
        return _HELD[0]
    claimed = claim_slot(locks or lock_dir(), count, per_gpu)
    if claimed is None:
        log.warning("all %d GPUs x %d slots are held by other kdpipe jobs; sharing GPU 0", count, per_gpu)
        return 0
    _HELD = claimed
    return claimed[0]
