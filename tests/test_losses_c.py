"""VID, OFD and AFD losses, and the shared Adapter they lean on.

Golden values are recomputed here with explicit Python loops over batch, channel and
position (math.log / math.exp on floats), independent of the vectorised implementations.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, Adapter, DistillBatch, DistillLoss, TapShapes
from kdpipe.losses.afd import AFDLoss
from kdpipe.losses.ofd import OFDLoss, margin_from_bn, partial_l2
from kdpipe.losses.vid import VIDLoss
from kdpipe.models import FeatureTaps, build_model

RESNET_STAGES = ((16, 8, 8), (32, 4, 4), (64, 2, 2))
NARROW_STAGES = ((8, 8, 8), (16, 4, 4), (32, 2, 2))


def shapes(stages, embedding=None, classes=10) -> TapShapes:
    stages = tuple(tuple(s) for s in stages)
    return TapShapes(stem=stages[0], stages=stages, embedding=embedding or stages[-1][0], num_classes=classes)


def make_taps(stages, pre=None, requires_grad=False, batch=2, seed=0) -> FeatureTaps:
    """FeatureTaps of random leaf tensors; ``stages`` and ``stages_pre`` are separate leaves."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, positive=False):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        x = x.abs() if positive else x
        return x.requires_grad_(requires_grad)

    post = tuple(leaf(batch, *s, positive=True) for s in stages)
    pre = tuple(leaf(batch, *s) for s in stages) if pre is None else pre
    c = stages[-1][0]
    return FeatureTaps(
        stem=leaf(batch, *stages[0], positive=True),
        stages_pre=pre,
        stages=post,
        embedding=leaf(batch, c),
        logits=leaf(batch, 10),
    )


def taps_from(stages, pre=None) -> FeatureTaps:
    """FeatureTaps around given tensors (unused taps are zeros)."""
    b = stages[0].shape[0]
    pre = tuple(stages) if pre is None else tuple(pre)
    return FeatureTaps(torch.zeros(b, 1, 1, 1), pre, tuple(stages), torch.zeros(b, 1), torch.zeros(b, 10))


def batch_of(n=2) -> DistillBatch:
    return DistillBatch(x=torch.zeros(n, 3, 8, 8), y=torch.zeros(n, dtype=torch.long))


def resnet8_teacher(seed=0) -> nn.Module:
    """A real resnet8 whose pre-ReLU batch norms carry chosen (varied, some negative) weights and biases."""
    torch.manual_seed(seed)
    model = build_model("resnet8", 10)
    with torch.no_grad():
        for i, bn in enumerate(model.pre_relu_bns()):
            c = bn.num_features
            k = torch.arange(c, dtype=torch.float32)
            bn.bias.copy_(torch.sin(k + i) * 1.5)
            bn.weight.copy_((0.3 + 0.1 * ((k + i) % 7)) * torch.where(k % 5 == 0, -1.0, 1.0))
    return model


# ---- plain-Python helpers for the golden computations -------------------------------------


def val(x, *idx) -> float:
    return float(x[idx])


def avg_pool_py(x: torch.Tensor, out_h: int, out_w: int) -> list:
    """x: (B,C,H,W) tensor with H, W multiples of out; returns nested lists [b][c][i][j]."""
    b, c, h, w = x.shape
    fh, fw = h // out_h, w // out_w
    out = []
    for bb in range(b):
        chans = []
        for cc in range(c):
            rows = []
            for i in range(out_h):
                row = []
                for j in range(out_w):
                    total = 0.0
                    for di in range(fh):
                        for dj in range(fw):
                            total += val(x, bb, cc, i * fh + di, j * fw + dj)
                    row.append(total / (fh * fw))
                rows.append(row)
            chans.append(rows)
        out.append(chans)
    return out


def conv1x1_py(vec: list, weight: torch.Tensor, bias: torch.Tensor | None) -> list:
    out = []
    for o in range(weight.shape[0]):
        acc = 0.0 if bias is None else float(bias[o])
        for i in range(weight.shape[1]):
            acc += float(weight[o, i, 0, 0]) * vec[i]
        out.append(acc)
    return out


def relu_py(vec: list) -> list:
    return [v if v > 0 else 0.0 for v in vec]


def sigmoid_py(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def softplus_py(v: float) -> float:
    return math.log1p(math.exp(v))


def normal_cdf_py(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# ---- registry / defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls, lam, taps",
    [("vid", VIDLoss, 1.0, {"stages"}), ("ofd", OFDLoss, 0.5, {"stages_pre"}), ("afd", AFDLoss, 500.0, {"stages"})],
)
def test_registry_defaults_and_taps(name, cls, lam, taps):
    assert LOSSES[name] is cls
    assert cls.name == name
    assert cls.defaults["lambda_kd"] == lam
    assert cls.teacher_taps == frozenset(taps)
    assert cls.paper
    assert issubclass(cls, DistillLoss)


def test_mode_settings_defaults():
    assert VIDLoss.defaults == {
        "lambda_kd": 1.0,
        "sf": 1.0,
        "init_var": 5.0,
        "stage_reduce": "mean",
        "regressor": "kdzoo",
        "eps": 1e-6,
    }
    assert OFDLoss.defaults == {"lambda_kd": 0.5, "margin": "batch", "reduction": "mean"}
    assert AFDLoss.defaults == {"lambda_kd": 500.0, "att_f": 1.0}


# ---- VID -----------------------------------------------------------------------------------


@pytest.mark.parametrize("init_var", [5.0, 0.5, 1e-3, 40.0])
def test_vid_initial_variance_equals_init_var(init_var):
    loss = VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), init_var=init_var)
    for reg in loss.regressors:
        for a in reg.alpha.tolist():
            assert abs(softplus_py(a) + 1e-6 - init_var) < 1e-6 * max(1.0, init_var)
        var = reg.variance().double()
        assert torch.allclose(var, torch.full_like(var, init_var), atol=1e-6 * max(1.0, init_var))


@pytest.mark.parametrize("eps", [1e-6, 1e-5])  # KD-Zoo's variance floor, RepDistiller's
def test_vid_variance_floor_is_eps(eps):
    loss = VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), eps=eps).double()
    assert loss.settings["eps"] == eps
    for reg in loss.regressors:
        assert torch.allclose(reg.variance(), torch.full_like(reg.variance(), 5.0), rtol=0, atol=1e-6)
        with torch.no_grad():
            reg.alpha.fill_(-200.0)  # softplus underflows to 0: the floor is what remains
        assert torch.equal(reg.variance(), torch.full_like(reg.variance(), eps))
    with pytest.raises(KdpipeError, match=r"^kd_mode vid: init_var: got 1e-05; must exceed eps \(1e-05\)$"):
        VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), eps=1e-5, init_var=1e-5)


def test_vid_middle_width_follows_sf():
    loss = VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), sf=0.5)
    assert [reg.mean[0].out_channels for reg in loss.regressors] == [8, 16, 32]
    assert [reg.mean[0].in_channels for reg in loss.regressors] == [8, 16, 32]
    assert [reg.mean[4].out_channels for reg in loss.regressors] == [16, 32, 64]
    tiny = VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), sf=0.001)
    assert [reg.mean[0].out_channels for reg in tiny.regressors] == [1, 1, 1]


def test_vid_loss_when_teacher_equals_mean_is_half_log_var():
    init_var = 5.0
    loss = VIDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES)).double()
    s = make_taps(NARROW_STAGES, seed=1)
    with torch.no_grad():
        mus = [reg.mean(x) for reg, x in zip(loss.regressors, s.stages)]
    t = taps_from(mus)
    value = loss(s, t, batch_of()).item()
    assert value == pytest.approx(0.5 * math.log(init_var), abs=1e-6)  # alpha is stored in float32


def vid_golden(loss: VIDLoss, s_taps: FeatureTaps, t_taps: FeatureTaps) -> float:
    stage_values = []
    for i, reg in enumerate(loss.regressors):
        s, t = s_taps.stages[i].detach(), t_taps.stages[i].detach()
        b, c_s, hs, ws = s.shape
        _, c_t, ht, wt = t.shape
        convs = [reg.mean[0], reg.mean[2], reg.mean[4]]
        # regress every student position
        mu = [[[None] * ws for _ in range(hs)] for _ in range(b)]
        for bb in range(b):
            for h in range(hs):
                for w in range(ws):
                    v = [val(s, bb, c, h, w) for c in range(c_s)]
                    v = relu_py(conv1x1_py(v, convs[0].weight.detach(), convs[0].bias.detach()))
                    v = relu_py(conv1x1_py(v, convs[1].weight.detach(), convs[1].bias.detach()))
                    mu[bb][h][w] = conv1x1_py(v, convs[2].weight.detach(), convs[2].bias.detach())
        mu_t = torch.tensor(
            [[[[mu[bb][h][w][c] for w in range(ws)] for h in range(hs)] for c in range(c_t)] for bb in range(b)],
            dtype=torch.float64,
        )
        oh, ow = min(hs, ht), min(ws, wt)
        mu_l = avg_pool_py(mu_t, oh, ow)
        t_l = avg_pool_py(t, oh, ow)
        var = [softplus_py(a) + 1e-6 for a in reg.alpha.detach().tolist()]
        total, n = 0.0, 0
        for bb in range(b):
            for c in range(c_t):
                for h in range(oh):
                    for w in range(ow):
                        d = t_l[bb][c][h][w] - mu_l[bb][c][h][w]
                        total += 0.5 * (math.log(var[c]) + d * d / var[c])
                        n += 1
        stage_values.append(total / n)
    return sum(stage_values) / len(stage_values)


def test_vid_golden_with_channel_and_spatial_mismatch():
    student = ((2, 2, 2), (3, 2, 4), (2, 1, 1))
    teacher = ((3, 2, 2), (2, 1, 2), (4, 2, 2))  # stage 2: student pooled; stage 3: teacher pooled
    loss = VIDLoss(shapes(student), shapes(teacher), sf=1.5, init_var=2.0, regressor="bias").double()
    with torch.no_grad():
        for reg in loss.regressors:
            reg.alpha.copy_(torch.linspace(-1.0, 2.0, reg.alpha.numel()))
    s, t = make_taps(student, seed=2), make_taps(teacher, seed=3)
    assert loss(s, t, batch_of()).item() == pytest.approx(vid_golden(loss, s, t), rel=1e-10)


def test_vid_golden_with_hand_set_regressor():
    """Regressor set to pass channel 0 through (weights by hand), so mu is known in closed form."""
    stages = ((2, 1, 2), (2, 1, 1), (2, 1, 1))
    loss = VIDLoss(shapes(stages), shapes(stages), init_var=1.0, regressor="bias").double()
    with torch.no_grad():
        for reg in loss.regressors:
            for conv in (reg.mean[0], reg.mean[2], reg.mean[4]):
                conv.weight.zero_()
                conv.bias.zero_()
                conv.weight[0, 0] = 1.0
            reg.mean[4].bias[1] = 3.0  # mu channel 1 is the constant 3
            reg.alpha.copy_(torch.tensor([0.0, 1.0]))
    s = torch.tensor([[[[1.0, -2.0]], [[5.0, 5.0]]]], dtype=torch.float64)  # (1,2,1,2)
    t = torch.tensor([[[[0.5, 1.0]], [[3.0, 4.0]]]], dtype=torch.float64)
    s1 = torch.tensor([[[[2.0]], [[0.0]]]], dtype=torch.float64)
    t1 = torch.tensor([[[[2.0]], [[3.0]]]], dtype=torch.float64)
    value = loss(taps_from([s, s1, s1]), taps_from([t, t1, t1]), batch_of(1)).item()
    v0, v1 = math.log(2.0) + 1e-6, math.log1p(math.e) + 1e-6
    # stage 1: mu0 = relu(s0) = (1, 0); mu1 = 3
    e1 = [
        0.5 * (math.log(v0) + 0.25 / v0),
        0.5 * (math.log(v0) + 1.0 / v0),
        0.5 * (math.log(v1) + 0.0 / v1),
        0.5 * (math.log(v1) + 1.0 / v1),
    ]
    # stages 2, 3: exact fit
    e2 = [0.5 * math.log(v0), 0.5 * math.log(v1)]
    expected = (sum(e1) / 4 + 2 * sum(e2) / 2) / 3
    assert value == pytest.approx(expected, rel=1e-12)


# ---- OFD -----------------------------------------------------------------------------------


def conditional_negative_mean_numeric(beta: float, gamma: float) -> float:
    f64 = torch.float64
    dist = torch.distributions.Normal(torch.tensor(beta, dtype=f64), torch.tensor(abs(gamma), dtype=f64))
    x = torch.linspace(beta - 14 * abs(gamma), 0.0, 400001, dtype=torch.float64)
    p = dist.log_prob(x).exp()
    return float(torch.trapezoid(x * p, x) / torch.trapezoid(p, x))


@pytest.mark.parametrize("beta, gamma", [(0.0, 1.0), (0.5, 1.0), (-0.3, 2.0), (1.2, 0.8), (0.7, -1.5), (2.5, 1.0)])
def test_ofd_margin_matches_numeric_integration(beta, gamma):
    m = margin_from_bn(torch.tensor([beta]), torch.tensor([gamma])).item()
    assert m == pytest.approx(conditional_negative_mean_numeric(beta, gamma), rel=1e-5, abs=1e-6)
    assert m < 0


def test_ofd_margin_known_values_and_fallback():
    # N(0, 1): E[x | x < 0] = -sqrt(2 / pi)
    m = margin_from_bn(torch.tensor([0.0]), torch.tensor([1.0])).item()
    assert m == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    # P(x < 0) = Phi(-4) ~ 3e-5 < 1e-3: fallback -3 * gamma
    assert margin_from_bn(torch.tensor([4.0]), torch.tensor([1.0])).item() == pytest.approx(-3.0)
    assert margin_from_bn(torch.tensor([6.0]), torch.tensor([-0.5])).item() == pytest.approx(-1.5)
    # just above the threshold (Phi(-3) ~ 1.35e-3) the conditional mean is used
    m = margin_from_bn(torch.tensor([3.0]), torch.tensor([1.0])).item()
    assert m == pytest.approx(conditional_negative_mean_numeric(3.0, 1.0), rel=1e-4)


def test_ofd_margins_read_from_teacher_batch_norms_and_saved():
    teacher_model = resnet8_teacher()
    loss = OFDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), teacher_model=teacher_model, margin="bn")
    state = loss.state_dict()
    for i, bn in enumerate(teacher_model.pre_relu_bns()):
        assert f"margin{i + 1}" in state
        margins = state[f"margin{i + 1}"].tolist()
        assert len(margins) == bn.num_features
        for c in range(bn.num_features):
            beta, gamma = bn.bias[c].item(), abs(bn.weight[c].item())
            mass = normal_cdf_py(-beta / gamma)
            if mass < 1e-3:
                expected = -3 * gamma
            else:
                pdf = math.exp(-0.5 * (beta / gamma) ** 2) / math.sqrt(2 * math.pi)
                expected = beta - gamma * pdf / mass
            assert margins[c] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the margins travel with the loss (a fresh loss from another teacher takes them on load)
    other = OFDLoss(shapes(NARROW_STAGES), shapes(RESNET_STAGES), teacher_model=build_model("resnet8", 10), margin="bn")
    assert not torch.equal(other.margin1, loss.margin1)
    other.load_state_dict(state)
    assert torch.equal(other.margin1, loss.margin1)


def test_ofd_bn_margin_needs_teacher_model():
    message = r"^kd_mode ofd: needs the teacher network to read its batch-norm statistics$"
    with pytest.raises(KdpipeError, match=message):
        OFDLoss(shapes(RESNET_STAGES), shapes(RESNET_STAGES), margin="bn")


def test_ofd_rejects_teacher_without_pre_relu_bns():
    with pytest.raises(KdpipeError, match="pre_relu_bns"):
        OFDLoss(shapes(RESNET_STAGES), shapes(RESNET_STAGES), teacher_model=nn.Linear(2, 2), margin="bn")


def test_partial_l2_mask_hand_made():
    s = torch.tensor([-1.0, -2.0, 0.5, -0.5, -0.1, -0.3, 0.0, 2.0])
    t = torch.tensor([-0.5, -0.5, -0.2, 0.3, -0.5, -0.3, 0.0, 2.5])
    # skip, skip, 0.7^2, 0.8^2, 0.4^2, skip (s == t <= 0), skip (0 == 0), 0.5^2 (t > 0)
    assert partial_l2(s, t).tolist() == pytest.approx([0.0, 0.0, 0.49, 0.64, 0.16, 0.0, 0.0, 0.25])
    assert partial_l2(s, t).sum().item() == pytest.approx(1.54)


def identity_connectors(loss: OFDLoss) -> None:
    """Connector convs to the identity and BNs to an exact identity in eval mode."""
    loss.eval()
    with torch.no_grad():
        for conv, bn in loss.connectors:
            conv.weight.zero_()
            for c in range(conv.weight.shape[0]):
                conv.weight[c, c] = 1.0
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.zero_()


def test_ofd_loss_hand_made_value():
    teacher_model = build_model("resnet8", 10)
    with torch.no_grad():
        for bn in teacher_model.pre_relu_bns():
            bn.weight.fill_(1.0)
            bn.bias.fill_(0.0)  # margin -sqrt(2/pi) everywhere
    stages = ((16, 1, 1), (32, 1, 1), (64, 1, 1))
    loss = OFDLoss(
        shapes(stages), shapes(stages), teacher_model=teacher_model, margin="bn", reduction="sum_batch"
    ).double()
    identity_connectors(loss)
    s_pre = [torch.zeros(1, *st, dtype=torch.float64) for st in stages]
    t_pre = [torch.zeros(1, *st, dtype=torch.float64) for st in stages]
    # ch0: t=-2 -> -0.798, s=-1 below it -> skipped; ch1: t=-2 -> -0.798, s=0 -> (2/pi);
    # ch2: t=1, s=3 -> 4; ch3: t=-0.5 (above the margin), s=-0.6 -> skipped; zeros -> skipped
    for c, (sv, tv) in enumerate([(-1.0, -2.0), (0.0, -2.0), (3.0, 1.0), (-0.6, -0.5)]):
        s_pre[0][0, c] = sv
        t_pre[0][0, c] = tv
    value = loss(taps_from(s_pre), taps_from(t_pre), batch_of(1)).item()
    assert value == pytest.approx(1.5455399241e-3, rel=1e-6)  # (2/pi + 4) / 1 / 1000 / 3 stages


def ofd_golden(loss: OFDLoss, s_taps: FeatureTaps, t_taps: FeatureTaps) -> float:
    """The paper's form (margin bn, reduction sum_batch).

    Eval-mode connector (conv1x1 + BN with running stats) recomputed in loops."""
    stage_values = []
    for i, (conv, bn) in enumerate(loss.connectors):
        s, t = s_taps.stages_pre[i].detach(), t_taps.stages_pre[i].detach()
        b, c_s, hs, ws = s.shape
        _, c_t, ht, wt = t.shape
        margins = getattr(loss, f"margin{i + 1}").tolist()
        conn = torch.zeros(b, c_t, hs, ws, dtype=torch.float64)
        for bb in range(b):
            for h in range(hs):
                for w in range(ws):
                    v = conv1x1_py([val(s, bb, c, h, w) for c in range(c_s)], conv.weight.detach(), None)
                    for c in range(c_t):
                        norm = (v[c] - float(bn.running_mean[c])) / math.sqrt(float(bn.running_var[c]) + bn.eps)
                        conn[bb, c, h, w] = norm * bn.weight[c].item() + bn.bias[c].item()
        oh, ow = min(hs, ht), min(ws, wt)
        s_l, t_l = avg_pool_py(conn, oh, ow), avg_pool_py(t, oh, ow)
        total = 0.0
        for bb in range(b):
            for c in range(c_t):
                for h in range(oh):
                    for w in range(ow):
                        tm = max(t_l[bb][c][h][w], margins[c])
                        sv = s_l[bb][c][h][w]
                        if not (sv <= tm and tm <= 0):
                            total += (sv - tm) ** 2
        stage_values.append(total / b / 1000)
    return sum(stage_values) / len(stage_values)


def test_ofd_golden_with_mismatch():
    student = ((8, 2, 2), (16, 2, 2), (32, 1, 1))
    teacher = ((16, 2, 2), (32, 1, 1), (64, 2, 2))  # stage 2: student pooled; stage 3: teacher pooled
    loss = OFDLoss(
        shapes(student), shapes(teacher), teacher_model=resnet8_teacher(), margin="bn", reduction="sum_batch"
    ).double()
    loss.eval()
    with torch.no_grad():
        for conv, bn in loss.connectors:
            n = bn.num_features
            bn.running_mean.copy_(torch.linspace(-0.2, 0.3, n))
            bn.running_var.copy_(torch.linspace(0.5, 2.0, n))
            bn.weight.copy_(torch.linspace(0.5, 1.5, n))
            bn.bias.copy_(torch.linspace(-0.4, 0.1, n))
    s, t = make_taps(student, seed=4), make_taps(teacher, seed=5)
    assert loss(s, t, batch_of()).item() == pytest.approx(ofd_golden(loss, s, t), rel=1e-10)


def test_ofd_connector_always_present():
    loss = OFDLoss(shapes(RESNET_STAGES), shapes(RESNET_STAGES), teacher_model=build_model("resnet8", 10))
    for (conv, bn), st in zip(loss.connectors, RESNET_STAGES):
        assert isinstance(conv, nn.Conv2d) and conv.bias is None and conv.in_channels == conv.out_channels == st[0]
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == st[0]
    assert len(loss.adapters) == 0


# ---- AFD -----------------------------------------------------------------------------------


def afd_golden(loss: AFDLoss, s_taps: FeatureTaps, t_taps: FeatureTaps) -> float:
    """Equal student/teacher shapes (no adapter)."""
    stage_values = []
    for i, att in enumerate(loss.attention):
        s, t = s_taps.stages[i].detach(), t_taps.stages[i].detach()
        b, c, h, w = t.shape
        conv1, conv2 = att.net[0], att.net[2]
        per_sample = []
        for bb in range(b):
            pooled = [sum(val(t, bb, cc, y, x) for y in range(h) for x in range(w)) / (h * w) for cc in range(c)]
            hidden = relu_py(conv1x1_py(pooled, conv1.weight.detach(), conv1.bias.detach()))
            gate = [sigmoid_py(v) for v in conv1x1_py(hidden, conv2.weight.detach(), conv2.bias.detach())]
            rho = [g / sum(gate) for g in gate]
            total = 0.0
            for cc in range(c):
                ns = math.sqrt(sum(val(s, bb, cc, y, x) ** 2 for y in range(h) for x in range(w))) + 1e-6
                nt = math.sqrt(sum(val(t, bb, cc, y, x) ** 2 for y in range(h) for x in range(w))) + 1e-6
                sq = 0.0
                for y in range(h):
                    for x in range(w):
                        sq += (val(s, bb, cc, y, x) / ns - val(t, bb, cc, y, x) / nt) ** 2
                total += rho[cc] * sq / (h * w)
            per_sample.append(total)
        stage_values.append(sum(per_sample) / b)
    return sum(stage_values) / len(stage_values)


def test_afd_golden_learned_attention():
    stages = ((3, 2, 2), (4, 2, 1), (2, 1, 3))
    loss = AFDLoss(shapes(stages), shapes(stages), att_f=0.5).double()
    assert [a.net[0].out_channels for a in loss.attention] == [2, 2, 1]
    s, t = make_taps(stages, seed=6), make_taps(stages, seed=7)
    assert loss(s, t, batch_of()).item() == pytest.approx(afd_golden(loss, s, t), rel=1e-10)


def _kaiming_fan_out_std(conv) -> float:
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def test_helpers_start_as_kd_zoos():
    """KD-Zoo's kd_losses/afd.py and vid.py: every 1x1 conv kaiming_normal_(fan_out, relu), biases 0 (AFD) or
    none (VID); RepDistiller's VID (regressor plain) keeps torch's default, kaiming_uniform(a=sqrt 5): std
    1/sqrt(3 fan_in)."""
    torch.manual_seed(0)
    wide = ((256, 4, 4), (256, 2, 2), (256, 1, 1))
    afd = AFDLoss(shapes(wide), shapes(wide))
    vid = VIDLoss(shapes(wide), shapes(wide))
    plain = VIDLoss(shapes(wide), shapes(wide), regressor="plain")
    convs = [c for a in afd.attention for c in a.net[::2]] + [c for r in vid.regressors for c in r.mean[::2]]
    assert len(convs) == 15
    for conv in convs:
        assert float(conv.weight.detach().std()) == pytest.approx(_kaiming_fan_out_std(conv), rel=0.05)
        assert float(conv.weight.detach().mean()) == pytest.approx(0.0, abs=0.01)
        assert conv.bias is None or not conv.bias.any()
    for conv in (c for r in plain.regressors for c in r.mean[::2]):
        assert conv.bias is None
        assert float(conv.weight.detach().std()) == pytest.approx(1 / math.sqrt(3 * conv.in_channels), rel=0.05)


def test_afd_hand_set_attention_is_uniform():
    """Second attention conv zeroed by hand: rho = 1/C, so the loss is a plain channel mean."""
    stages = ((2, 1, 2), (2, 1, 1), (2, 1, 1))
    loss = AFDLoss(shapes(stages), shapes(stages)).double()
    with torch.no_grad():
        for att in loss.attention:
            att.net[2].weight.zero_()
            att.net[2].bias.zero_()
    s = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]], dtype=torch.float64)  # normalised: (0.6, 0.8), (1, 0)
    t = torch.tensor([[[[0.0, 2.0]], [[0.0, 5.0]]]], dtype=torch.float64)  # normalised: (0, 1), (0, 1)
    same = torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64)
    value = loss(taps_from([s, same, same]), taps_from([t, same, same]), batch_of(1)).item()
    # channel 0: (0.36 + 0.04) / 2 = 0.2; channel 1: (1 + 1) / 2 = 1; rho = 1/2 each -> 0.6; stages 2, 3: 0
    assert value == pytest.approx(0.6 / 3, rel=1e-5)


def test_afd_adapter_inserted_for_mismatch():
    loss = AFDLoss(shapes(NARROW_STAGES), shapes(((16, 4, 4), (32, 4, 4), (64, 2, 2))))
    desc = [a.describe() for a in loss.adapters.values()]
    assert [d["where"] for d in desc] == ["stage1", "stage2", "stage3"]
    assert [d["conv1x1_bn"] for d in desc] == [True, True, True]
    assert [d["pool"] for d in desc] == ["student", None, None]
    assert loss.describe()["adapters"] == desc


# ---- properties shared by the three losses -------------------------------------------------


def build(name, student_stages, teacher_stages):
    kwargs = {"teacher_model": resnet8_teacher()} if name == "ofd" else {}
    return LOSSES[name](shapes(student_stages), shapes(teacher_stages), **kwargs).double()


def read_tap(name):
    return "stages_pre" if name == "ofd" else "stages"


HELPERS = {"vid": "regressors", "ofd": "connectors", "afd": "attention"}

MISMATCHES = [
    (RESNET_STAGES, RESNET_STAGES),
    (NARROW_STAGES, RESNET_STAGES),
    (((16, 4, 4), (32, 2, 2), (64, 1, 1)), RESNET_STAGES),  # student smaller spatially
    (RESNET_STAGES, ((16, 4, 4), (32, 2, 2), (64, 1, 1))),  # student larger spatially
]


@pytest.mark.parametrize("name", ["vid", "ofd", "afd"])
@pytest.mark.parametrize("student_stages, teacher_stages", MISMATCHES)
def test_gradients_reach_student_and_helpers_never_teacher(name, student_stages, teacher_stages):
    torch.manual_seed(0)
    loss = build(name, student_stages, teacher_stages)
    s = make_taps(student_stages, requires_grad=True, seed=8)
    t = make_taps(teacher_stages, requires_grad=True, seed=9)
    value = loss(s, t, batch_of())
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    for x in getattr(s, read_tap(name)):
        assert x.grad is not None and x.grad.abs().sum() > 0
    for tap in (t.stem, *t.stages_pre, *t.stages, t.embedding, t.logits):
        assert tap.grad is None or not tap.grad.any()
    helper = getattr(loss, HELPERS[name])
    helper_params = list(helper.parameters())
    assert helper_params
    assert all(p.grad is not None for p in helper_params)
    assert sum(p.grad.abs().sum() for p in helper_params) > 0
    for adapter in loss.adapters.values():
        for p in adapter.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vid", "ofd", "afd"])
def test_helpers_saved_in_state_dict_and_restored(name):
    torch.manual_seed(1)
    loss = build(name, NARROW_STAGES, RESNET_STAGES)
    state = loss.state_dict()
    prefix = HELPERS[name] + "."
    helper_keys = [k for k in state if k.startswith(prefix)]
    helpers = getattr(loss, HELPERS[name])
    expected_keys = {f"{i}.{n}" for i in range(3) for n, _ in helpers[i].named_parameters()}
    assert {k[len(prefix) :] for k in helper_keys} >= expected_keys
    n_state_params = sum(v.numel() for k, v in state.items() if k in dict(loss.named_parameters()))
    assert n_state_params == sum(p.numel() for p in loss.parameters()) == loss.describe()["learned_parameters"]
    if name == "afd":
        assert any(k.startswith("adapters.stage1.conv.0.weight") for k in state)
    torch.manual_seed(2)
    fresh = build(name, NARROW_STAGES, RESNET_STAGES)
    fresh.load_state_dict(state)
    loss.eval(), fresh.eval()
    s, t = make_taps(NARROW_STAGES, seed=10), make_taps(RESNET_STAGES, seed=11)
    assert fresh(s, t, batch_of()).item() == pytest.approx(loss(s, t, batch_of()).item(), rel=1e-12)


@pytest.mark.parametrize("name", ["vid", "ofd", "afd"])
def test_works_in_float32_with_taps_from_real_models(name):
    torch.manual_seed(3)
    student_model, teacher_model = build_model("resnet8", 10), build_model("resnet8", 10)
    teacher_model.eval()
    x = torch.randn(2, 3, 16, 16)
    sh = TapShapes.probe(student_model, (3, 16, 16))
    th = TapShapes.probe(teacher_model, (3, 16, 16))
    loss = LOSSES[name](sh, th, teacher_model=teacher_model)
    with torch.no_grad():
        t = teacher_model(x)
    value = loss(student_model(x), t, batch_of())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert student_model.conv1.weight.grad is not None and student_model.conv1.weight.grad.abs().sum() > 0


def test_vid_and_ofd_bridge_spatial_mismatch_by_pooling_only():
    student = ((16, 4, 4), (32, 2, 2), (64, 2, 2))
    teacher = ((16, 8, 8), (32, 4, 4), (64, 1, 1))
    for name in ("vid", "ofd"):
        loss = build(name, student, teacher)
        desc = {a.describe()["where"]: a.describe() for a in loss.adapters.values()}
        assert set(desc) == {"stage1", "stage2", "stage3"}
        assert [desc[k]["conv1x1_bn"] for k in sorted(desc)] == [False, False, False]
        assert [desc[k]["pool"] for k in sorted(desc)] == ["teacher", "teacher", "student"]
        assert sum(p.numel() for p in loss.adapters.parameters()) == 0


# ---- Adapter ---------------------------------------------------------------------------------


def test_adapter_conv_only_when_channels_differ():
    a = Adapter((8, 4, 4), (16, 4, 4), "here")
    assert isinstance(a.conv, nn.Sequential)
    conv, bn = a.conv
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    assert conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 16
    assert a.active and not a.pool_student and not a.pool_teacher
    s, t = a(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4))
    assert s.shape == t.shape == (2, 16, 4, 4)

    same = Adapter((16, 4, 4), (16, 4, 4), "same")
    assert isinstance(same.conv, nn.Identity) and not same.active
    assert sum(p.numel() for p in same.parameters()) == 0
    xs, xt = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    ys, yt = same(xs, xt)
    assert torch.equal(ys, xs) and torch.equal(yt, xt)


def test_adapter_pools_the_larger_side():
    x_big = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    x_small = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    expected = torch.tensor(avg_pool_py(x_big, 2, 2), dtype=torch.float64)

    a = Adapter((3, 4, 4), (3, 2, 2), "student bigger")
    assert a.pool_student and not a.pool_teacher and a.active and a.size == (2, 2)
    s, t = a(x_big, x_small)
    assert torch.allclose(s, expected) and torch.equal(t, x_small)

    b = Adapter((3, 2, 2), (3, 4, 4), "teacher bigger")
    assert b.pool_teacher and not b.pool_student and b.active
    s, t = b(x_small, x_big)
    assert torch.equal(s, x_small) and torch.allclose(t, expected)
    assert sum(p.numel() for p in b.parameters()) == 0

    # mixed: each map is larger along one axis, so both are pooled to the elementwise minimum
    c = Adapter((3, 4, 2), (3, 2, 4), "mixed")
    assert c.size == (2, 2) and c.pool_student and c.pool_teacher
    s, t = c(torch.randn(1, 3, 4, 2), torch.randn(1, 3, 2, 4))
    assert s.shape == t.shape == (1, 3, 2, 2)


def test_adapter_channel_and_pool_together():
    a = Adapter((8, 8, 8), (16, 4, 4), "both")
    s, t = a(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4))
    assert s.shape == t.shape == (2, 16, 4, 4)
    assert a.describe() == {
        "where": "both",
        "student_shape": [8, 8, 8],
        "teacher_shape": [16, 4, 4],
        "conv1x1_bn": True,
        "pool": "student",
    }


def test_adapter_describe():
    assert Adapter((16, 4, 4), (16, 8, 8), "stage1").describe() == {
        "where": "stage1",
        "student_shape": [16, 4, 4],
        "teacher_shape": [16, 8, 8],
        "conv1x1_bn": False,
        "pool": "teacher",
    }
    assert Adapter((16, 4, 4), (32, 4, 4), "stage2").describe()["pool"] is None
    d = Adapter((16, 4, 4), (16, 4, 4), "x").describe()
    assert d["conv1x1_bn"] is False and d["pool"] is None
    assert set(d) == {"where", "student_shape", "teacher_shape", "conv1x1_bn", "pool"}


class _Probe(DistillLoss):
    name = "probe-for-tests"

    def forward(self, student, teacher, batch):  # pragma: no cover - not used
        raise NotImplementedError


def test_distill_loss_adapter_registration():
    loss = _Probe(shapes(RESNET_STAGES), shapes(RESNET_STAGES))
    assert loss.adapter("same", (16, 8, 8), (16, 8, 8)) is None
    assert "same" not in loss.adapters
    x, y = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    ax, ay = loss.adapted("same", x, y)
    assert ax is x and ay is y
    a = loss.adapter("k", (8, 8, 8), (16, 8, 8))
    assert isinstance(a, Adapter) and loss.adapters["k"] is a
    assert loss.adapter("k", (8, 8, 8), (16, 8, 8)) is a  # registered once
    assert len(loss.adapters) == 1
    s, t = loss.adapted("k", torch.randn(2, 8, 8, 8), y)
    assert s.shape == (2, 16, 8, 8) and t is y
    assert "adapters.k.conv.0.weight" in loss.state_dict()
    assert loss.describe()["adapters"] == [a.describe()]
    assert loss.describe()["learned_parameters"] == sum(p.numel() for p in a.parameters())
