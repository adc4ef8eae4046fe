"""Factor transfer (FT): paraphraser, translator and the two FT objectives.

Kim, Park and Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018.

Two stages (Sec. 3 of the paper):

1. A *paraphraser* P -- a convolutional autoencoder -- is trained, with the teacher
   frozen, on the teacher's last-stage feature map x (C, H, W).  Its encoder output is
   the teacher's *factor* F_T, with f = round(C * k) channels, k being the "factor
   rate".  The paraphraser objective is the reconstruction loss (Eq. 1)

       L_rec = || x - P(x) ||^2,

   implemented here as the mean squared error over all elements
   (:func:`reconstruction_loss`).

2. The student's last-stage map goes through a *translator* (a convolutional encoder
   shaped like the paraphraser's encoder), giving the student factor F_S, and the
   student is trained with L_student = L_cls + beta * L_FT, where the factor-transfer
   loss (Eq. 3) is

       L_FT = || F_T / ||F_T||_2  -  F_S / ||F_S||_2 ||_p ,   p = 1,

   each sample's factor being flattened to a vector and L2-normalised before taking
   the L1 distance (:func:`factor_transfer_loss`).  The paraphraser (and so F_T) is
   frozen in this stage.  As reduction we take the mean over all B * D elements
   (D = the flattened factor size), the scale that KD-Zoo's default beta = 200 assumes.

Architecture (Knowledge-Distillation-Zoo's, whose FT numbers our tables quote): every layer
is a 3x3 convolution (stride 1, padding 1) followed by BatchNorm (when ``bn``; the
convolutions then have no bias, else they do) and LeakyReLU(0.1) -- the decoder's last
layer included (``decoder_out="lrelu"``): the reconstruction targets are post-ReLU maps.
``decoder_out="linear"`` ends the decoder in a plain transposed convolution with a bias
instead, which can reproduce any sign.  KD-Zoo uses BN on CIFAR-10 and none on CIFAR-100
(:func:`kdpipe.methods.ft.use_batchnorm`); RepDistiller in the translator only.  Initialisation
(``init="kaiming"``) as KD-Zoo: Kaiming-normal (fan_out, ReLU gain) for the convolutions, zero
biases, BN weight 1 and bias 0; the transposed convolutions keep PyTorch's default initialisation
(KD-Zoo's initialiser only matches ``nn.Conv2d``).  ``init="torch"``: every layer keeps PyTorch's
default (RepDistiller's ``models/util.py`` initialises nothing).

This module holds only the building blocks; wiring into an entry point lives elsewhere.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KdpipeError
from ..options import find_option

__all__ = [
    "DECODER_OUTS",
    "FACTOR_FORMS",
    "INITS",
    "factor_channels",
    "Paraphraser",
    "Translator",
    "reconstruction_loss",
    "factor_transfer_loss",
]

_SLOPE = 0.1
_EPS = 1e-12
DECODER_OUTS = ("lrelu", "linear")
# How the FT loss reads a factor: flat = KD-Zoo's (each sample's whole factor flattened and L2-normalised);
# spatial = RepDistiller's distiller_zoo/FT.py (FactorTransfer p1=2, p2=1): the channel mean of the squared
# factor, a (H*W) map per sample, L2-normalised.
FACTOR_FORMS = find_option("ft", "factor_form").choices
INITS = find_option("ft", "ft_init").choices  # kaiming (KD-Zoo's), torch (PyTorch's defaults: RepDistiller's)


def factor_channels(in_channels: int, k: float) -> int:
    """Channels of the factor: ``max(1, int(in_channels * k))`` (KD-Zoo truncates); k is the paper's 'factor rate'."""
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if not k > 0:
        raise ValueError(f"factor rate k must be > 0, got {k}")
    return max(1, int(int(in_channels) * float(k)))


def _layer(cin: int, cout: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv(cin, cout, 3, stride=1, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(_SLOPE))
    return layers


def _encoder(in_channels: int, factor: int, bn: bool) -> nn.Sequential:
    return nn.Sequential(
        *_layer(in_channels, in_channels, bn),
        *_layer(in_channels, factor, bn),
        *_layer(factor, factor, bn),
    )


def _init(module: nn.Module, how: str) -> None:
    """``kaiming``: KD-Zoo's initialisation, Kaiming-normal (fan_out, relu) convolutions with zero bias, BN 1 / 0;
    ``torch``: the layers as PyTorch made them."""
    if how not in INITS:
        raise KdpipeError(f"ft_init: got {how!r}; allowed: {', '.join(INITS)}")
    if how == "torch":
        return
    for m in module.modules():
        if type(m) is nn.Conv2d:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Paraphraser(nn.Module):
    """Convolutional autoencoder trained on the teacher's last-stage feature map (in_channels, H, W).

    encoder: Conv(in->in), Conv(in->f), Conv(f->f), each [BN] LeakyReLU(0.1)
    decoder: ConvT(f->f), ConvT(f->in), each [BN] LeakyReLU(0.1), then ConvT(in->in) followed by
             [BN] LeakyReLU(0.1) (``decoder_out="lrelu"``, KD-Zoo) or nothing, with a bias
             (``decoder_out="linear"``)

    3x3 kernels, stride 1, padding 1 everywhere, so H, W are preserved; ``[BN]`` when ``bn``.
    ``f = factor_channels(in_channels, k)``.
    """

    def __init__(self, in_channels: int, k: float, bn: bool = True, decoder_out: str = "lrelu", init: str = "kaiming"):
        super().__init__()
        if decoder_out not in DECODER_OUTS:
            raise KdpipeError(f"para_decoder_out: got {decoder_out!r}; allowed: {', '.join(DECODER_OUTS)}")
        self.in_channels = int(in_channels)
        self.k = float(k)
        self.bn = bool(bn)
        self.decoder_out = decoder_out
        self.factor = factor_channels(self.in_channels, self.k)
        f, c = self.factor, self.in_channels
        self.encoder = _encoder(c, f, self.bn)
        if decoder_out == "lrelu":
            last = _layer(c, c, self.bn, transposed=True)
        else:
            last = [nn.ConvTranspose2d(c, c, 3, stride=1, padding=1, bias=True)]
        self.decoder = nn.Sequential(
            *_layer(f, f, self.bn, transposed=True),
            *_layer(f, c, self.bn, transposed=True),
            *last,
        )
        _init(self, init)

    def extra_repr(self) -> str:
        return f"k={self.k}, bn={self.bn}, decoder_out={self.decoder_out!r}"

    def encode(self, x: Tensor) -> Tensor:
        """The factor, (B, f, H, W)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(factor, reconstruction)``; reconstruction has x's shape."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder.

    Conv3x3(in->in), Conv3x3(in->f), Conv3x3(f->f), each [BN] LeakyReLU(0.1) (BN when ``bn``),
    stride 1 / padding 1 (H, W preserved), ``init`` as the paraphraser's.  If the student's map is
    larger (H, W) than the teacher's factor, it is average-pooled to the factor's size in
    :func:`factor_transfer_loss` (not here).
    """

    def __init__(self, in_channels: int, factor: int, bn: bool = True, init: str = "kaiming"):
        super().__init__()
        if int(in_channels) < 1 or int(factor) < 1:
            raise ValueError(f"in_channels and factor must be >= 1, got {in_channels}, {factor}")
        self.in_channels = int(in_channels)
        self.factor = int(factor)
        self.bn = bool(bn)
        self.encoder = _encoder(self.in_channels, self.factor, self.bn)
        _init(self, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Paraphraser training objective (Eq. 1): mean squared error over all elements (target detached)."""
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"shape mismatch: reconstruction {tuple(reconstruction.shape)} vs target {tuple(target.shape)}"
        )
    return F.mse_loss(reconstruction, target.detach())


def _match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool 4-D maps to the common (smaller) spatial size; no-op when sizes agree."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if a.shape[-2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[-2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, form: str = "flat") -> Tensor:
    """Factor-transfer loss (Eq. 3, p = 1).

    ``form="flat"`` (KD-Zoo's ``kd_losses/ft.py``): ``|| F_s/||F_s||_2 - F_t/||F_t||_2 ||_1`` with each
    sample's factor flattened and L2-normalised (norm clamped below at 1e-12); reduction: mean over all
    B*D elements (the scale KD-Zoo's lambda 200 assumes).  ``form="spatial"`` (RepDistiller's
    ``distiller_zoo/FT.py``, ``FactorTransfer(p1=2, p2=1)``): each factor first reduced to the channel mean
    of its square, ``mean_c F^2`` (B, H*W), then L2-normalised; the L1 difference averaged over B*H*W.
    ``factor_t`` is detached.  If spatial sizes differ (4-D maps), the larger map is avg-pooled to the
    smaller first (``adaptive_avg_pool2d``).
    """
    if form not in FACTOR_FORMS:
        raise KdpipeError(f"factor_form: got {form!r}; allowed: {', '.join(FACTOR_FORMS)}")
    factor_t = factor_t.detach()
    if factor_s.shape[0] != factor_t.shape[0]:
        raise ValueError(f"batch mismatch: {factor_s.shape[0]} vs {factor_t.shape[0]}")
    factor_s, factor_t = _match_spatial(factor_s, factor_t)
    if factor_s.shape != factor_t.shape:
        raise ValueError(
            f"factor shape mismatch after pooling: student {tuple(factor_s.shape)} vs teacher {tuple(factor_t.shape)}"
        )
    if form == "spatial":
        factor_s, factor_t = factor_s.pow(2).mean(1), factor_t.pow(2).mean(1)
    s = F.normalize(factor_s.flatten(1), p=2, dim=1, eps=_EPS)
    t = F.normalize(factor_t.flatten(1), p=2, dim=1, eps=_EPS)
    return (s - t).abs().mean()
