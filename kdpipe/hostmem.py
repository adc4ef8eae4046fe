"""Host memory of a process that trains on the CPU: keep what a step frees for the next step.

A training step on the CPU allocates and frees the same few dozen buffers of a megabyte or more each
time (activations, gradients, oneDNN's scratch space).  glibc's malloc returns blocks above its mmap
threshold to the kernel when they are freed and trims the heap's free top, so every step faults those
pages in again and the kernel zeroes them: ResNet-20 at batch 128 took 10,000-30,000 minor page faults a
step on the 2-core CPU, 3-6 % of its CPU time in the kernel.  :func:`keep_freed_memory` raises the mmap
threshold to glibc's largest (32 MiB on 64-bit) and the trim threshold to 1 GiB, so the process keeps
that memory and reuses it.  Where a number lands in memory does not change what is computed: results
stay bit for bit what they were; the process's resident memory stays near its peak instead of
shrinking between steps.

It changes nothing where the user chose glibc's malloc settings (``MALLOC_*_`` variables or
``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), with ``KDPIPE_MALLOC_TUNING=0``, or off glibc.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit (it refuses more)
TRIM_THRESHOLD = 1 << 30
SWITCH = "KDPIPE_MALLOC_TUNING"  # 0: leave glibc's defaults
GLIBC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
KEPT = "kept"

_state: str | None = None


def keep_freed_memory() -> str:
    """Tune this process's malloc (once) as the module says; returns what its allocator does now:
    :data:`KEPT`, or why it was left as it was."""
    global _state
    if _state is None:
        _state = _tune()
    return _state


def current() -> str | None:
    """What this process's allocator does (as :func:`keep_freed_memory` returns it); None before it ran
    (a process that trains on CUDA only)."""
    return _state


def _tune() -> str:
    if os.environ.get(SWITCH, "").strip() == "0":
        return f"glibc's defaults ({SWITCH}=0)"
    chosen = [name for name in GLIBC_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"as {chosen[0]} sets it"
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: libc's among them
    except OSError:
        return "the platform's (no C library found)"
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing; macOS has none)
        return "the platform's (not glibc)"
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "glibc's defaults (mallopt refused)"
    return KEPT
