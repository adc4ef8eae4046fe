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


def _register_net(name: str, module: str, cls: str, *args, **kwargs) -> None:
    """``name`` builds ``<module>.<cls>(*args, num_classes=..., **kwargs)``; the module (and torch) is
    imported then."""

    def build(num_classes: int):
        return getattr(importlib.import_module(f".{module}", __name__), cls)(*args, num_classes=num_classes, **kwargs)

    register(name)(build)


# He et al.'s CIFAR ResNets, resnet{depth} (16/32/64 channels), and thin variants resnet{depth}w{width}
# (width/2x/4x channels; resnet8w4: 4/8/16, a sixteenth of resnet8's weights).
for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_net(f"resnet{_depth}", "resnet", "CifarResNet", _depth)
for _depth in (8, 14, 20):
    for _width in (4, 8):
        _register_net(
            f"resnet{_depth}w{_width}", "resnet", "CifarResNet", _depth, widths=(_width, 2 * _width, 4 * _width)
        )

# RepDistiller's and mdistiller's CIFAR nets (their models/ files, at 100 classes the same parameter
# counts; tests/test_models_repdistiller_*.py).  resnet{8,32}x4: a 32-channel stem, then 64/128/256
# channels -- four times He et al.'s stages (not resnet{depth}w4, which is a quarter as wide).
for _depth in (8, 32):
    _register_net(f"resnet{_depth}x4", "resnet", "CifarResNet", _depth, widths=(64, 128, 256), stem_width=32)
_register_net("resnet50", "resnet_bottleneck", "BottleneckResNet", (3, 4, 6, 3))  # resnetv2.py: 4 stages
for _depth in (16, 40):
    for _width in (1, 2):
        _register_net(f"wrn_{_depth}_{_width}", "wrn", "WideResNet", _depth, _width)
for _depth in (8, 11, 13, 16, 19):
    _register_net(f"vgg{_depth}", "vgg", "CifarVGG", _depth)  # vgg.py's vgg*_bn
_register_net("mobilenet_v2", "mobilenetv2", "CifarMobileNetV2")  # mobilenetv2.py's mobile_half
_register_net("shufflenet_v1", "shufflenet", "CifarShuffleNetV1")
_register_net("shufflenet_v2", "shufflenet", "CifarShuffleNetV2")


def build_model(name: str, num_classes: int) -> "nn.Module":
    if name not in MODELS:
        raise KdpipeError(f"net name: unknown network {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)


def head_modules(model: "nn.Module") -> list:
    """The modules after a network's last stage: its classifier, and WRN's final BatchNorm, MobileNetV2's
    and ShuffleNetV2's last 1x1 convolution with its BatchNorm.  The others (the stem and the stages) are
    what RepDistiller's ``get_feat_modules()`` returns for the same net."""
    children = list(model.named_children())
    names = [name for name, _ in children]
    if "stages" not in names:
        raise KdpipeError(f"{type(model).__name__} has no 'stages': its head is not known")
    return [module for _, module in children[names.index("stages") + 1 :]]


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def __getattr__(name: str):
    if name == "FeatureTaps":
        return importlib.import_module(".taps", __name__).FeatureTaps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "FeatureTaps", "build_model", "count_parameters", "head_modules", "register"]
