"""Registry of distillation losses: ``LOSSES["rkd"]`` is the RKD loss class."""

from __future__ import annotations

from .base import Adapter, DistillBatch, DistillLoss, TapShapes

LOSSES: dict[str, type[DistillLoss]] = {}


def register(cls: type[DistillLoss]) -> type[DistillLoss]:
    LOSSES[cls.name] = cls
    return cls


def _import_all() -> None:
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_all()

__all__ = ["LOSSES", "Adapter", "DistillBatch", "DistillLoss", "TapShapes", "register"]
