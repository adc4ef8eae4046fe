"""Tests for kdpipe.objectives.ft (factor transfer, Kim et al., NeurIPS 2018)."""

import math

import pytest
import torch
import torch.nn.functional as F

from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.objectives.ft import (
    Paraphraser,
    Translator,
    factor_channels,
    factor_transfer_loss,
    reconstruction_loss,
)


def _loop_ft(s: torch.Tensor, t: torch.Tensor) -> float:
    """Independent reference: per sample flatten, L2-normalise, L1 distance; divide by B*D."""
    b = s.shape[0]
    total = 0.0
    d = None
    for i in range(b):
        a = [float(v) for v in s[i].reshape(-1)]
        c = [float(v) for v in t[i].reshape(-1)]
        d = len(a)
        na = math.sqrt(sum(v * v for v in a))
        nc = math.sqrt(sum(v * v for v in c))
        total += sum(abs(x / na - y / nc) for x, y in zip(a, c))
    return total / (b * d)


def test_factor_channels():
    assert factor_channels(64, 0.5) == 32
    assert factor_channels(3, 0.1) == 1
    assert factor_channels(64, 1.0) == 64
    assert factor_channels(10, 0.35) == 3  # KD-Zoo's int(in_channels * k) truncates (round would give 4)
    with pytest.raises(ValueError):
        factor_channels(64, 0.0)


def test_paraphraser_shapes_and_encode():
    torch.manual_seed(0)
    p = Paraphraser(64, 0.5)
    assert p.factor == 32
    x = torch.randn(2, 64, 4, 4)
    factor, rec = p(x)
    assert factor.shape == (2, 32, 4, 4)
    assert rec.shape == (2, 64, 4, 4)
    p.eval()  # deterministic BN so encode and forward see identical statistics
    factor, _ = p(x)
    assert torch.allclose(p.encode(x), factor)


def test_translator_shape():
    tr = Translator(8, 4)
    assert tr(torch.randn(2, 8, 4, 4)).shape == (2, 4, 4, 4)


def layer_kinds(seq):
    return [type(m).__name__ for m in seq]


def test_paraphraser_structure_is_kdzoos():
    """KD-Zoo's paraphraser: every layer conv + BN + LeakyReLU(0.1), the decoder's last one included."""
    p = Paraphraser(16, 0.5)
    block = ["BatchNorm2d", "LeakyReLU"]
    assert layer_kinds(p.encoder) == (["Conv2d"] + block) * 3
    assert layer_kinds(p.decoder) == (["ConvTranspose2d"] + block) * 3
    assert layer_kinds(p.decoder)[-2:] == ["BatchNorm2d", "LeakyReLU"]
    assert all(m.negative_slope == 0.1 for m in p.modules() if isinstance(m, nn.LeakyReLU))
    convs = [m for m in p.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is None and m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert p.decoder[-3].out_channels == 16 and p.decoder[-2].num_features == 16
    with torch.no_grad():
        _, rec = p.eval()(torch.randn(2, 16, 4, 4).relu())
    assert rec.shape == (2, 16, 4, 4)


def test_paraphraser_linear_end_and_no_bn():
    p = Paraphraser(16, 0.5, decoder_out="linear")
    assert layer_kinds(p.decoder)[-1] == "ConvTranspose2d" and p.decoder[-1].bias is not None
    assert layer_kinds(p.decoder)[:-1] == ["ConvTranspose2d", "BatchNorm2d", "LeakyReLU"] * 2
    # KD-Zoo on CIFAR-100: no BN anywhere, convolutions with bias (zero-initialised)
    q = Paraphraser(16, 0.5, bn=False)
    assert layer_kinds(q.encoder) == ["Conv2d", "LeakyReLU"] * 3
    assert layer_kinds(q.decoder) == ["ConvTranspose2d", "LeakyReLU"] * 3
    assert all(m.bias is not None for m in q.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert all(float(m.bias.detach().abs().sum()) == 0 for m in q.modules() if type(m) is nn.Conv2d)
    t = Translator(8, 4, bn=False)
    assert layer_kinds(t.encoder) == ["Conv2d", "LeakyReLU"] * 3
    assert layer_kinds(Translator(8, 4).encoder) == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3
    with pytest.raises(KdpipeError, match="para_decoder_out: got 'x'; allowed: lrelu, linear"):
        Paraphraser(16, 0.5, decoder_out="x")


def test_initialisation_is_kdzoos():
    """Conv2d: Kaiming normal, fan_out, ReLU gain (std sqrt(2 / (out * 9))); ConvTranspose2d: PyTorch default."""
    torch.manual_seed(0)
    p = Paraphraser(64, 0.5).requires_grad_(False)
    conv = p.encoder[0]
    want = math.sqrt(2.0 / (64 * 9))
    assert float(conv.weight.std()) == pytest.approx(want, rel=0.05)
    assert float(conv.weight.mean()) == pytest.approx(0.0, abs=0.05 * want)
    deconv = p.decoder[0]  # default: kaiming_uniform(a=sqrt(5)) -> uniform, |w| <= 1/sqrt(fan_in)
    fan_in = deconv.weight.shape[1] * 9
    assert float(deconv.weight.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    assert float(conv.weight.abs().max()) > 1 / math.sqrt(64 * 9)  # normal, not that bounded uniform
    for m in p.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_factor_transfer_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64)
    t = torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64)
    got = factor_transfer_loss(s, t)
    assert got.dim() == 0
    assert got.item() == pytest.approx(_loop_ft(s, t), rel=1e-10)


def test_factor_transfer_loss_scale_invariant_zero():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(3, 2, 2, 2, generator=g)
    scale = torch.tensor([0.5, 3.0, 10.0]).view(3, 1, 1, 1)
    assert factor_transfer_loss(t * scale, t).item() == pytest.approx(0.0, abs=1e-7)
    # a sign flip is not a positive scale: the loss is then maximal-ish, certainly nonzero
    assert factor_transfer_loss(-t, t).item() > 0.1


def test_factor_transfer_loss_pools_larger_map():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    pooled = F.avg_pool2d(s, 2)  # 4x4 -> 2x2, same as adaptive pooling here
    expected = _loop_ft(pooled, t)
    assert factor_transfer_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    # symmetric: a larger teacher map is pooled too
    assert factor_transfer_loss(t, s).item() == pytest.approx(_loop_ft(t, pooled), rel=1e-10)


def test_factor_transfer_loss_channel_mismatch_raises():
    with pytest.raises(ValueError):
        factor_transfer_loss(torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2))


def test_reconstruction_loss_matches_loop_and_detaches_target():
    g = torch.Generator().manual_seed(4)
    rec = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    a = [float(v) for v in rec.detach().reshape(-1)]
    b = [float(v) for v in target.detach().reshape(-1)]
    expected = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    loss = reconstruction_loss(rec, target)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0
    assert target.grad is None


@pytest.fixture
def one_thread():
    # tiny convolutions: intra-op threading only adds overhead (and suffers badly on a busy machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("decoder_out", ["lrelu", "linear"])
def test_paraphraser_learns_to_autoencode(one_thread, decoder_out):
    torch.manual_seed(0)
    p = Paraphraser(16, 0.5, decoder_out=decoder_out)  # 16 -> 8 channel factor
    x = torch.randn(8, 16, 4, 4).relu()  # a teacher's last stage is post-ReLU
    params = [q for q in p.parameters() if q.requires_grad]
    # hand-rolled SGD with momentum (lr 0.1, 0.9): the first torch.optim optimizer in a process
    # imports torch._dynamo (~1.5-2 s), which would dominate this test
    bufs = [torch.zeros_like(q) for q in params]
    with torch.no_grad():
        initial = reconstruction_loss(p(x)[1], x).item()
    for _ in range(150):
        p.zero_grad(set_to_none=True)
        loss = reconstruction_loss(p(x)[1], x)
        loss.backward()
        with torch.no_grad():
            for q, buf in zip(params, bufs):
                buf.mul_(0.9).add_(q.grad)
                q.sub_(0.1 * buf)
    with torch.no_grad():
        final = reconstruction_loss(p(x)[1], x).item()
    assert final * 5 <= initial, (initial, final)


def test_gradients_reach_translator_not_teacher_factor():
    torch.manual_seed(0)
    tr = Translator(6, 4)
    x_s = torch.randn(2, 6, 4, 4, requires_grad=True)
    factor_t = torch.randn(2, 4, 2, 2, requires_grad=True)
    loss = factor_transfer_loss(tr(x_s), factor_t)
    loss.backward()
    assert x_s.grad is not None and x_s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tr.parameters())
    assert sum(p.grad.abs().sum() for p in tr.parameters()) > 0
    assert factor_t.grad is None


def test_factor_form_spatial_is_repdistillers_factor_transfer():
    """``factor_form spatial`` = RepDistiller's distiller_zoo/FT.py FactorTransfer(p1=2, p2=1), re-typed:
    factor(f) = normalize(f.pow(2).mean(1).view(B, -1)); loss = |factor(f_s) - factor(f_t)|.mean(); and
    ``flat`` (the default) stays KD-Zoo's kd_losses/ft.py.  Golden values on fixed tensors (float64)."""
    import torch
    import torch.nn.functional as F

    from kdpipe.objectives.ft import factor_transfer_loss

    g = torch.Generator().manual_seed(7)
    fs = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    ft = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)

    def rep(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    ref = (rep(fs) - rep(ft)).abs().mean()
    got = factor_transfer_loss(fs, ft, "spatial")
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    (g_got,) = torch.autograd.grad(got, fs)
    (g_ref,) = torch.autograd.grad(ref, fs)
    assert torch.allclose(g_got, g_ref, rtol=1e-10, atol=1e-14)
    kdzoo = F.l1_loss(F.normalize(fs.view(4, -1)), F.normalize(ft.view(4, -1)))
    assert factor_transfer_loss(fs, ft).item() == pytest.approx(kdzoo.item(), rel=1e-12)
    # the golden values: the two forms are different losses
    assert got.item() == pytest.approx(0.10287429928811857, rel=1e-9)
    assert factor_transfer_loss(fs, ft).item() == pytest.approx(0.17141627401145818, rel=1e-9)
