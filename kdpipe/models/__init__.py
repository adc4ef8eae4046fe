"""Model registry: ``build_model("resnet20", num_classes=10)``.

The registry's names are known without importing torch (the workflow checks a config's network
names when Snakemake parses the Snakefile); the networks' modules are imported when one is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from ..errors import KdpipeError

if TYPE_CHECKING:
    from torch import nn

    from .taps import FeatureTaps

MODELS: dict[str, Callable[[int], "nn.Module"]] = {}


def register(name: str):
    def wrap(factory: Callable[[int], nn.Module]):
        MODELS[name] = factory
        return factory

    return wrap


def _register_cifar_resnet(depth: int, width: int = 16) -> None:
    """``resnet{depth}``: He et al.'s 16/32/64 channels; ``resnet{depth}w{width}``: the same net
    with ``width``/2x/4x channels (``resnet8w4``: 4/8/16, a sixteenth of resnet8's weights)."""
    name = f"resnet{depth}" if width == 16 else f"resnet{depth}w{width}"
    widths = (width, 2 * width, 4 * width)

    def build(num_classes: int, depth: int = depth, widths: tuple = widths):
        from .resnet import CifarResNet

        return CifarResNet(depth, num_classes, widths)

    register(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)
for _depth in (8, 14, 20):
    for _width in (4, 8):
        _register_cifar_resnet(_depth, _width)


def build_model(name: str, num_classes: int) -> "nn.Module":
    if name not in MODELS:
        raise KdpipeError(f"net name: unknown network {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def __getattr__(name: str):
    if name == "FeatureTaps":
        return importlib.import_module(".taps", __name__).FeatureTaps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "FeatureTaps", "build_model", "count_parameters", "register"]
