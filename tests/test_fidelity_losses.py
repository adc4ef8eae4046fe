"""Fidelity of sobolev, ofd and lwm (issue 10): the defaults compute what Knowledge-Distillation-Zoo
computes, and each paper form is a named setting.

Every expected value is recomputed here independently of kdpipe.losses: analytic gradients of
tiny networks, or per-sample autograd gradients, followed by plain-Python loops over batch,
channel and position.  Then the settings' plumbing: options, workflow config, run.json, summary.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdpipe
from conftest import cli, cli_in_process, tiny_cli_flags
from test_losses_b import LinearTapNet  # logits = W x + b: input gradients known exactly
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.methods.kd import mode_settings
from kdpipe.options import MODE_SETTINGS
from kdpipe.models import FeatureTaps, build_model
from kdpipe.models.resnet import CifarResNet
from kdpipe.options import ENTRY_OPTIONS
from kdpipe.plan import RunId
from kdpipe.summary import summary_rows
from kdpipe.workflow import kd_options, load_config

IMAGE = (3, 8, 8)
RESNET8_SHAPES = TapShapes(stem=(16, 8, 8), stages=((16, 8, 8), (32, 4, 4), (64, 2, 2)), embedding=64, num_classes=10)

# The string-valued settings: mode -> {setting: (KD-Zoo's value = the default, the paper's value)}
FORMS = {
    "sobolev": {"grad_norm": ("l2", "none")},
    "ofd": {"margin": ("batch", "bn"), "reduction": ("mean", "sum_batch")},
    "lwm": {"cam": ("kdzoo", "gradcam")},
}


# --------------------------------------------------------------------------- helpers


def L(t):
    return t.detach().double().tolist()


def flat(nested):
    if isinstance(nested, list):
        return [v for item in nested for v in flat(item)]
    return [nested]


def unit(values: list[float]) -> list[float]:
    """values / max(L2 norm, 1e-12), in plain Python."""
    norm = math.sqrt(sum(v * v for v in values))
    return [v / max(norm, 1e-12) for v in values]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def pool_py(m: list, h: int, w: int) -> list:
    """Average-pool an H x W nested list to h x w (H, W multiples of h, w)."""
    fh, fw = len(m) // h, len(m[0]) // w
    return [[mean(m[i * fh + a][j * fw + b] for a in range(fh) for b in range(fw)) for j in range(w)] for i in range(h)]


def frozen(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def resnet8(seed: int, train: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return CifarResNet(8, 10, (16, 32, 64)).double().train(train)


def image_batch(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *IMAGE, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


def per_sample_grads(net, x, y, wrt):
    """For each sample alone: d z[y_b] / d (input if wrt is None, else the tap ``wrt(taps)``), as nested lists."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].detach().clone().requires_grad_(True)
        taps = net(xb)
        target = xb if wrt is None else wrt(taps)
        (g,) = torch.autograd.grad(taps.logits[0, int(y[b])], target)
        out.append((L(target[0]) if wrt is not None else None, L(g[0])))
    return out


# --------------------------------------------------------------------------- Sobolev


def ref_sobolev(grads_s: list[list[float]], grads_t: list[list[float]], grad_norm: str) -> float:
    """KD-Zoo: per-sample L2-normalised gradients; paper: raw.  Mean over all B*C*H*W squared differences."""
    if grad_norm == "l2":
        grads_s, grads_t = [unit(g) for g in grads_s], [unit(g) for g in grads_t]
    return mean((a - b) ** 2 for gs, gt in zip(grads_s, grads_t) for a, b in zip(gs, gt))


LINEAR_IMAGE = (2, 2, 3)
LINEAR_SHAPES = TapShapes((2, 2, 3), ((2, 2, 3),) * 3, 12, 4)


def sobolev_linear_case():
    s_net, t_net = LinearTapNet(LINEAR_IMAGE, 4, 0), frozen(LinearTapNet(LINEAR_IMAGE, 4, 1))
    x = torch.randn(5, *LINEAR_IMAGE, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 3, 1, 3, 2])
    return s_net, t_net, x, y


def test_sobolev_default_is_kdzoo_l2_normalised_gradients():
    assert LOSSES["sobolev"].defaults["grad_norm"] == "l2"
    s_net, t_net, x, y = sobolev_linear_case()
    value = LOSSES["sobolev"](LINEAR_SHAPES, LINEAR_SHAPES).double()(s_net(x), t_net(x), DistillBatch(x, y)).item()
    ws, wt = L(s_net.fc.weight), L(t_net.fc.weight)
    gs, gt = [ws[int(k)] for k in y], [wt[int(k)] for k in y]  # analytic input gradients
    expected = ref_sobolev(gs, gt, "l2")
    assert value == pytest.approx(expected, rel=1e-12)
    raw = ref_sobolev(gs, gt, "none")
    assert abs(value - raw) > 0.1 * raw  # the case tells the two forms apart


@pytest.mark.parametrize("grad_norm", ["l2", "none"])
def test_sobolev_golden_resnet_per_sample(grad_norm):
    student, teacher = resnet8(0), frozen(resnet8(1))  # eval: samples are independent
    x, y = image_batch()
    loss = LOSSES["sobolev"](RESNET8_SHAPES, RESNET8_SHAPES, grad_norm=grad_norm).double()
    value = loss(student(x), teacher(x), DistillBatch(x, y)).item()
    gs = [flat(g) for _, g in per_sample_grads(student, x, y, None)]
    gt = [flat(g) for _, g in per_sample_grads(teacher, x, y, None)]
    assert value == pytest.approx(ref_sobolev(gs, gt, grad_norm), rel=1e-8)
    other = ref_sobolev(gs, gt, "none" if grad_norm == "l2" else "l2")
    assert value != pytest.approx(other, rel=1e-2)


def test_sobolev_l2_zero_gradient_floored():
    # a teacher with zero weights has zero input gradients: its normalised gradient is 0 (norm floored),
    # so the loss is the mean square of unit vectors, 1 / (C*H*W)
    s_net, t_net, x, y = sobolev_linear_case()
    with torch.no_grad():
        t_net.fc.weight.zero_()
    loss = LOSSES["sobolev"](LINEAR_SHAPES, LINEAR_SHAPES).double()
    value = loss(s_net(x), t_net(x), DistillBatch(x, y))
    assert torch.isfinite(value) and value.item() == pytest.approx(1 / 12, rel=1e-12)
    value.backward()
    assert torch.isfinite(s_net.fc.weight.grad).all() and s_net.fc.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- LwM


class TinySquareNet(nn.Module):
    """stage 2 = A = relu(conv(x)); logits = fc(spatial mean of A^2).

    Hence d z[b, k] / dA[b, c, h, w] = 2 W[k, c] A[b, c, h, w] / (H W): a gradient that varies in space.
    """

    def __init__(self, channels, stride, seed, classes=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(2, channels, 3, stride, 1).double()
        self.fc = nn.Linear(channels, classes).double()

    def forward(self, x):
        a = F.relu(self.conv(x))
        e = (a * a).mean((2, 3))
        return FeatureTaps(a, (a, a, a), (a, a, a), e, self.fc(e))


def ref_cam(a: list, g: list, cam: str) -> list:
    """One sample's (C,H,W) activations and gradients -> H x W map, in loops.

    alpha_c = spatial mean of g_c; kdzoo: ReLU(sum_c alpha_c g_c); gradcam: ReLU(sum_c alpha_c a_c).
    """
    C, H, W = len(g), len(g[0]), len(g[0][0])
    alpha = [sum(g[c][i][j] for i in range(H) for j in range(W)) / (H * W) for c in range(C)]
    src = g if cam == "kdzoo" else a
    return [[max(0.0, sum(alpha[c] * src[c][i][j] for c in range(C))) for j in range(W)] for i in range(H)]


def ref_lwm(cams_s: list, cams_t: list) -> float:
    """Pool the larger map, L2-normalise each sample's map, mean |difference| over B*H*W."""
    terms = []
    for cs, ct in zip(cams_s, cams_t):
        h, w = min(len(cs), len(ct)), min(len(cs[0]), len(ct[0]))
        fs, ft = unit(flat(pool_py(cs, h, w))), unit(flat(pool_py(ct, h, w)))
        terms += [abs(a - b) for a, b in zip(fs, ft)]
    return mean(terms)


def shapes_of(taps: FeatureTaps) -> TapShapes:
    return TapShapes(
        tuple(taps.stem.shape[1:]),
        tuple(tuple(t.shape[1:]) for t in taps.stages),
        int(taps.embedding.shape[1]),
        int(taps.logits.shape[1]),
    )


def analytic_cams(net: TinySquareNet, taps: FeatureTaps, y, cam: str) -> list:
    w = L(net.fc.weight)
    cams = []
    for b in range(len(y)):
        a = L(taps.stages[1][b])
        C, H, W = len(a), len(a[0]), len(a[0][0])
        k = int(y[b])
        g = [[[2 * w[k][c] * a[c][i][j] / (H * W) for j in range(W)] for i in range(H)] for c in range(C)]
        cams.append(ref_cam(a, g, cam))
    return cams


@pytest.mark.parametrize("s_stride, t_stride, s_ch, t_ch", [(1, 1, 3, 3), (1, 2, 3, 5), (2, 1, 4, 2)])
@pytest.mark.parametrize("cam", ["kdzoo", "gradcam"])
def test_lwm_analytic_tiny_networks(cam, s_stride, t_stride, s_ch, t_ch):
    s_net, t_net = TinySquareNet(s_ch, s_stride, 0), frozen(TinySquareNet(t_ch, t_stride, 1))
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    y = torch.tensor([0, 2, 1, 2])
    s, t = s_net(x), t_net(x)
    loss = LOSSES["lwm"](shapes_of(s), shapes_of(t), cam=cam).double()
    value = loss(s, t, DistillBatch(x, y))
    expected = ref_lwm(analytic_cams(s_net, s, y, cam), analytic_cams(t_net, t, y, cam))
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    other = "gradcam" if cam == "kdzoo" else "kdzoo"
    assert value.item() != pytest.approx(
        ref_lwm(analytic_cams(s_net, s, y, other), analytic_cams(t_net, t, y, other)), rel=1e-3
    )
    value.backward()
    assert s_net.fc.weight.grad.abs().sum() > 0 and s_net.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cam", ["kdzoo", "gradcam"])
def test_lwm_golden_resnet_per_sample(cam):
    student, teacher = resnet8(0), frozen(resnet8(1))
    x, y = image_batch()
    kwargs = {} if cam == "kdzoo" else {"cam": cam}  # kdzoo through the default
    loss = LOSSES["lwm"](RESNET8_SHAPES, RESNET8_SHAPES, **kwargs).double()
    value = loss(student(x), teacher(x), DistillBatch(x, y)).item()

    def cams(net):
        return [ref_cam(a, g, cam) for a, g in per_sample_grads(net, x, y, lambda taps: taps.stages[1])]

    assert value == pytest.approx(ref_lwm(cams(student), cams(teacher)), rel=1e-8)
    assert value > 0


# --------------------------------------------------------------------------- OFD

OFD_STUDENT = ((8, 2, 2), (16, 2, 2), (32, 1, 1))
OFD_TEACHER = ((16, 2, 2), (32, 1, 1), (64, 2, 2))  # stage 2: student pooled; stage 3: teacher pooled


def ofd_shapes(stages) -> TapShapes:
    return TapShapes(stem=stages[0], stages=stages, embedding=stages[-1][0], num_classes=10)


def pre_taps(stages, seed, batch=3) -> FeatureTaps:
    g = torch.Generator().manual_seed(seed)
    pre = tuple(torch.randn(batch, *s, generator=g, dtype=torch.float64) for s in stages)
    z = torch.zeros(batch, 1, dtype=torch.float64)
    return FeatureTaps(pre[0], pre, tuple(F.relu(p) for p in pre), z, torch.zeros(batch, 10, dtype=torch.float64))


def resnet8_teacher_with_bns() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet8", 10)
    with torch.no_grad():
        for i, bn in enumerate(model.pre_relu_bns()):
            k = torch.arange(bn.num_features, dtype=torch.float32)
            bn.bias.copy_(torch.sin(k + i))
            bn.weight.copy_(0.5 + 0.1 * ((k + i) % 5))
    return model


def set_connectors(loss) -> None:
    """Eval mode, with varied (non-identity) running statistics and affine parameters in the connectors' BNs."""
    loss.eval()
    with torch.no_grad():
        for _, bn in loss.connectors:
            n = bn.num_features
            bn.running_mean.copy_(torch.linspace(-0.2, 0.3, n))
            bn.running_var.copy_(torch.linspace(0.5, 2.0, n))
            bn.weight.copy_(torch.linspace(0.5, 1.5, n))
            bn.bias.copy_(torch.linspace(-0.4, 0.1, n))


def ref_bn_margin(beta: float, gamma: float) -> float:
    s = abs(gamma)
    mass = 0.5 * (1.0 + math.erf(-beta / s / math.sqrt(2.0)))
    if mass < 1e-3:
        return -3 * s
    return beta - s * math.exp(-0.5 * (beta / s) ** 2) / math.sqrt(2 * math.pi) / mass


def ref_ofd(loss, s_taps, t_taps, teacher_model, margin: str, reduction: str) -> float:
    """Loops: connector (1x1 conv + eval BN), margins, pooling of the larger map, partial L2, reduction, stage mean."""
    bns = list(teacher_model.pre_relu_bns()) if margin == "bn" else None
    stage_values = []
    for i, (conv, bn) in enumerate(loss.connectors):
        s, t = L(s_taps.stages_pre[i]), L(t_taps.stages_pre[i])
        B, c_s, hs, ws = len(s), len(s[0]), len(s[0][0]), len(s[0][0][0])
        c_t, ht, wt = len(t[0]), len(t[0][0]), len(t[0][0][0])
        w = L(conv.weight)
        rm, rv, g, be = L(bn.running_mean), L(bn.running_var), L(bn.weight), L(bn.bias)
        conn = [
            [
                [
                    [
                        (sum(w[o][c][0][0] * s[b][c][y][x] for c in range(c_s)) - rm[o])
                        / math.sqrt(rv[o] + bn.eps)
                        * g[o]
                        + be[o]
                        for x in range(ws)
                    ]
                    for y in range(hs)
                ]
                for o in range(c_t)
            ]
            for b in range(B)
        ]
        if margin == "batch":  # from the teacher's own (unpooled) batch features
            margins = []
            for c in range(c_t):
                neg = [v for b in range(B) for row in t[b][c] for v in row if v < 0]
                margins.append(sum(neg) / (len(neg) + 1e-6))
        else:
            margins = [ref_bn_margin(beta, gamma) for beta, gamma in zip(L(bns[i].bias), L(bns[i].weight))]
        oh, ow = min(hs, ht), min(ws, wt)
        total, count = 0.0, 0
        for b in range(B):
            for c in range(c_t):
                sp, tp = pool_py(conn[b][c], oh, ow), pool_py(t[b][c], oh, ow)
                for y in range(oh):
                    for x in range(ow):
                        tm, sv = max(tp[y][x], margins[c]), sp[y][x]
                        if sv > tm or tm > 0:
                            total += (sv - tm) ** 2
                        count += 1
        stage_values.append(total / count if reduction == "mean" else total / B / 1000)
    return mean(stage_values)


@pytest.mark.parametrize("reduction", ["mean", "sum_batch"])
@pytest.mark.parametrize("margin", ["batch", "bn"])
def test_ofd_golden_each_setting(margin, reduction):
    teacher_model = resnet8_teacher_with_bns()
    torch.manual_seed(0)
    loss = LOSSES["ofd"](
        ofd_shapes(OFD_STUDENT),
        ofd_shapes(OFD_TEACHER),
        teacher_model=teacher_model,
        margin=margin,
        reduction=reduction,
    ).double()
    set_connectors(loss)
    s, t = pre_taps(OFD_STUDENT, 4), pre_taps(OFD_TEACHER, 5)
    value = loss(s, t, DistillBatch(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))).item()
    rel = 1e-10 if margin == "batch" else 1e-6  # BN-derived margins are stored in float32
    assert value == pytest.approx(ref_ofd(loss, s, t, teacher_model, margin, reduction), rel=rel)
    assert value > 0


def test_ofd_default_is_kdzoo_batch_margin_and_element_mean():
    assert {k: LOSSES["ofd"].defaults[k] for k in ("margin", "reduction")} == {"margin": "batch", "reduction": "mean"}
    teacher_model = resnet8_teacher_with_bns()
    torch.manual_seed(0)
    loss = LOSSES["ofd"](ofd_shapes(OFD_STUDENT), ofd_shapes(OFD_TEACHER), teacher_model=teacher_model).double()
    set_connectors(loss)
    s, t = pre_taps(OFD_STUDENT, 4), pre_taps(OFD_TEACHER, 5)
    value = loss(s, t, DistillBatch(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))).item()
    assert value == pytest.approx(ref_ofd(loss, s, t, teacher_model, "batch", "mean"), rel=1e-10)
    assert value != pytest.approx(ref_ofd(loss, s, t, teacher_model, "bn", "sum_batch"), rel=1e-2)


def test_ofd_default_hand_made_value():
    # one-pixel stages, identity connectors; only stage 1, channels 0 and 1, are non-zero
    stages = ((16, 1, 1), (32, 1, 1), (64, 1, 1))
    loss = LOSSES["ofd"](ofd_shapes(stages), ofd_shapes(stages)).double()  # no teacher network needed
    assert not any(k.startswith("margin") for k in loss.state_dict())
    loss.eval()
    with torch.no_grad():
        for conv, bn in loss.connectors:
            conv.weight.copy_(torch.eye(conv.weight.shape[0], dtype=torch.float64).view_as(conv.weight))
            bn.running_var.fill_(1.0 - bn.eps)
    s = [torch.zeros(2, *st, dtype=torch.float64) for st in stages]
    t = [torch.zeros(2, *st, dtype=torch.float64) for st in stages]
    # ch0: teacher -2, -1 -> margin -3 / (2 + 1e-6) ~ -1.5 -> targets -1.5, -1; student 0 (counts), -2 (skipped)
    # ch1: teacher 1, 0.5 (no negatives: margin 0); student 0, 0.5 -> 1 + 0
    for b, (t0, s0, t1, s1) in enumerate([(-2.0, 0.0, 1.0, 0.0), (-1.0, -2.0, 0.5, 0.5)]):
        t[0][b, 0], s[0][b, 0], t[0][b, 1], s[0][b, 1] = t0, s0, t1, s1

    def taps(pre):
        z = torch.zeros(2, 1, dtype=torch.float64)
        return FeatureTaps(pre[0], tuple(pre), tuple(pre), z, torch.zeros(2, 10, dtype=torch.float64))

    value = loss(taps(s), taps(t), DistillBatch(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))).item()
    m0 = -3.0 / (2.0 + 1e-6)
    assert value == pytest.approx((m0 * m0 + 1.0) / (2 * 16) / 3, rel=1e-12)  # element mean, then 3 stages


def test_ofd_batch_margin_gradients_reach_student_only():
    torch.manual_seed(1)
    loss = LOSSES["ofd"](ofd_shapes(OFD_STUDENT), ofd_shapes(OFD_TEACHER)).double()
    s, t = pre_taps(OFD_STUDENT, 6), pre_taps(OFD_TEACHER, 7)
    s = FeatureTaps(s.stem, tuple(p.requires_grad_(True) for p in s.stages_pre), s.stages, s.embedding, s.logits)
    t = FeatureTaps(t.stem, tuple(p.requires_grad_(True) for p in t.stages_pre), t.stages, t.embedding, t.logits)
    loss(s, t, DistillBatch(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stages_pre)
    assert all(p.grad is None for p in t.stages_pre)


# --------------------------------------------------------------------------- settings: declared once, everywhere


def test_forms_declared_on_the_losses_options_and_schema():
    from kdpipe.config import _schema

    schema = _schema()  # the YAML's option references expanded
    kd_settings = schema["properties"]["kd"]["properties"]["settings"]["additionalProperties"]["properties"]
    options = {o.name: o for o in ENTRY_OPTIONS["kd"]}
    for mode, forms in FORMS.items():
        cls = LOSSES[mode]
        assert set(cls.setting_choices) == set(forms)
        for key, (kdzoo, paper) in forms.items():
            assert cls.defaults[key] == kdzoo and cls.setting_choices[key] == (kdzoo, paper)
            assert key in MODE_SETTINGS
            assert options[key].default is None and "(default: the mode's reference value)" in options[key].help
            # a setting several modes share (ofd's and ab's reduction) offers every mode's values; each mode
            # refuses the others' (test_loss_rejects_a_bad_form_in_one_line, kdpipe.config's per-mode check)
            assert {kdzoo, paper} <= set(options[key]._choices())
            assert list(options[key]._choices()) == kd_settings[key]["enum"] and "default" not in kd_settings[key]


def test_mode_settings_pass_forms_to_their_mode_only():
    opts = {"kd_mode": "lwm", "lambda_kd": None, "cam": "gradcam", "grad_norm": "none", "margin": None}
    assert mode_settings(opts) == {"cam": "gradcam"}
    assert mode_settings({**opts, "kd_mode": "sobolev"}) == {"grad_norm": "none"}


def test_loss_rejects_a_bad_form_in_one_line():
    with pytest.raises(KdpipeError) as err:
        LOSSES["lwm"](RESNET8_SHAPES, RESNET8_SHAPES, cam="grad-cam")
    assert str(err.value) == "kd_mode lwm: cam: got 'grad-cam'; allowed: one of kdzoo, gradcam"


def test_api_rejects_a_bad_form_in_one_line(tmp_path):
    with pytest.raises(KdpipeError) as err:
        kdpipe.train_kd(
            t_model="t.pt", t_name="resnet8", s_name="resnet8", kd_mode="ofd", data_name="digits",
            save_root=str(tmp_path), reduction="sum",
        )  # fmt: skip
    assert str(err.value) == "reduction: got 'sum'; allowed: one of mean, weighted_sum, sum_batch"  # ab's and ofd's
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lwm": {"cam": "grad"}}, "config kd.settings.lwm.cam: 'grad' is not one of ['kdzoo', 'gradcam']"),
        ({"ofd": {"margin": "BN"}}, "config kd.settings.ofd.margin: 'BN' is not one of ['batch', 'bn']"),
        ({"sobolev": {"grad_norm": None}}, "config kd.settings.sobolev.grad_norm: got null; allowed: l2, none"),
        ({"sobolev": {"cam": "gradcam"}}, "config kd.settings.sobolev.cam: not a setting of sobolev"),
    ],
)
def test_config_rejects_a_bad_form_in_one_line(settings, message):
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": {"settings": settings}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_forms_reach_the_run_options():
    config = load_config(
        {
            "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
            "kd": {
                "modes": ["ofd", "lwm", "sobolev"],
                "settings": {"ofd": {"margin": "bn", "reduction": "sum_batch"}, "lwm": {"cam": "gradcam"}},
            },
        }
    )
    ofd = kd_options(config, "digits", "ofd", "resnet14", "resnet8", 0)
    assert ofd["margin"] == "bn" and ofd["reduction"] == "sum_batch" and "cam" not in ofd
    assert kd_options(config, "digits", "lwm", "resnet14", "resnet8", 0)["cam"] == "gradcam"
    assert "grad_norm" not in kd_options(config, "digits", "sobolev", "resnet14", "resnet8", 0)


def test_cli_bad_form_one_line_nothing_written(tmp_path):
    flags = tiny_cli_flags(tmp_path / "runs")
    out = cli("kd", *flags, "--t_model", "t.pt", "--t_name", "resnet8", "--s_name", "resnet8", "--kd_mode", "sobolev",
              "--grad_norm", "L2")  # fmt: skip
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["kdpipe kd: error: grad_norm: got 'L2'; allowed: one of l2, none"]
    assert not (tmp_path / "runs").exists()


def test_cli_form_lands_in_run_json_and_summary(tmp_path):
    kdpipe.train_base(
        net_name="resnet8", data_name="digits", epochs=1, batch_size=16, train_subset=32, cuda=0,
        save_root=str(tmp_path), note="teacher",
    )  # fmt: skip
    teacher = tmp_path / "teacher" / "model.pt"
    common = ["--t_model", str(teacher), "--t_name", "resnet8", "--s_name", "resnet8", "--kd_mode", "lwm"]
    # the CLI's parser and entry in this process (``python -m kdpipe kd``: the test above, test_kd.py)
    out = cli_in_process("kd", *tiny_cli_flags(tmp_path, "paper"), *common, "--cam", "gradcam")
    assert out.returncode == 0, out.stderr
    out = cli_in_process("kd", *tiny_cli_flags(tmp_path, "default"), *common)
    assert out.returncode == 0, out.stderr
    for note, cam in (("paper", "gradcam"), ("default", "kdzoo")):
        record = json.loads((tmp_path / note / "run.json").read_text())
        assert record["info"]["loss"]["settings"] == {"lambda_kd": 0.4, "cam": cam}
        run = RunId("train_kd", "digits", "lwm", "", "resnet8", "resnet8", 0, str(tmp_path / note))
        (row,) = summary_rows([run])
        assert row["settings"] == f"lambda_kd=0.4; cam={cam}"
