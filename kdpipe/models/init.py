"""The weight initialisation the CIFAR reference definitions share (He et al. 2015, as written there)."""

from __future__ import annotations

from torch import nn


def he_init(model: nn.Module, linear_std: float | None = None) -> None:
    """Convolutions Kaiming normal (fan-out, ReLU gain), their biases 0; batch norms weight 1, bias 0.

    ``linear_std``: also the linear layers N(0, linear_std), biases 0 (RepDistiller's VGG and
    MobileNetV2); otherwise they keep PyTorch's default.  Modules are visited in ``model.modules()``
    order, so a seed gives the same weights as each reference's own loop.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
