"""kdpipe: teacher-student knowledge transfer, from training to comparison tables.

The training functions are imported on first use (``kdpipe.train_kd``), so that importing a
light part of the package (the workflow's plan when Snakemake parses the Snakefile, the report
declarations) does not import torch: that costs seconds per job.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import KdpipeError  # noqa: E402

from .options import ENTRIES  # noqa: E402

# public name -> the module that defines it: one per entry point (kdpipe.options.ENTRIES)
_API = {entry.function: entry.module for entry in ENTRIES.values()}


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kdpipe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))


__all__ = ["KdpipeError", *_API, "__version__"]
