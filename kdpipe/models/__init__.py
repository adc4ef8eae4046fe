"""Model registry: ``build_model("resnet20", num_classes=10)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import KdpipeError
from .resnet import CifarResNet
from .taps import FeatureTaps

MODELS: dict[str, Callable[[int], nn.Module]] = {}


def register(name: str):
    def wrap(factory: Callable[[int], nn.Module]):
        MODELS[name] = factory
        return factory

    return wrap


def _register_cifar_resnet(depth: int) -> None:
    register(f"resnet{depth}")(lambda num_classes, depth=depth: CifarResNet(depth, num_classes))


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise KdpipeError(f"net name: unknown network {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "FeatureTaps", "build_model", "count_parameters", "register"]
