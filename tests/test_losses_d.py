"""Distillation losses, group D: dkd, dist, kdsvd, and logit standardisation (st, dkd, dist).

Golden values are recomputed with plain Python loops over elements (``math`` only, no tensor
ops), independently of the vectorised modules: DKD from the paper's definitions (TCKD on the
binary target/non-target split, NCKD on the renormalised non-target classes), DIST from
Pearson correlations of rows and columns, KDSVD from a Jacobi eigen-decomposition of each
sample's ``X^T X``.  Singular vectors are defined up to sign and the reference's loss depends
on the teacher's signs, so the loop reference takes only those signs from ``torch.linalg.svd``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import kdpipe
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.losses.dkd import warmup_factor
from kdpipe.methods.kd import mode_settings
from kdpipe.models import FeatureTaps, build_model
from kdpipe.options import ENTRY_OPTIONS, MODE_SETTINGS
from kdpipe.workflow import kd_options, load_config

NEW_MODES = ("dkd", "dist", "kdsvd")
K = 5  # classes
SHAPES = TapShapes(stem=(2, 4, 4), stages=((3, 4, 4), (2, 3, 3), (5, 2, 2)), embedding=3, num_classes=K)
# the student differs in channels only: no adapter in kdsvd's default (width) layout
STUDENT = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (4, 3, 3), (3, 2, 2)), embedding=4, num_classes=K)


def make_taps(shapes: TapShapes, batch: int = 4, seed: int = 0, requires_grad: bool = False) -> FeatureTaps:
    """Random float64 taps (continuous values, so singular values are distinct)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        t = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * scale
        return t.requires_grad_(requires_grad)

    stages = tuple(rand(*s) for s in shapes.stages)
    return FeatureTaps(rand(*shapes.stem), stages, stages, rand(shapes.embedding), rand(shapes.num_classes, scale=3))


def labels(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (batch,), generator=torch.Generator().manual_seed(seed + 100))


def run(mode, student, teacher, y=None, epoch=0, s_shapes=SHAPES, t_shapes=SHAPES, **settings):
    loss_fn = LOSSES[mode](s_shapes, t_shapes, **settings)
    n = student.logits.shape[0]
    y = labels(n) if y is None else y
    return loss_fn(student, teacher, DistillBatch(torch.zeros(n, 3, 4, 4), y, epoch=epoch))


# ---------------------------------------------------------------- loop-based references


def rows(t) -> list:
    return t.detach().double().tolist()


def zscore(row: list[float]) -> list[float]:
    """(z - mean) / (sample std + 1e-7), the sample std with divisor K - 1."""
    m = sum(row) / len(row)
    sd = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))
    return [(v - m) / (sd + 1e-7) for v in row]


def softmax(row: list[float], T: float) -> list[float]:
    top = max(row)
    e = [math.exp((v - top) / T) for v in row]
    total = sum(e)
    return [v / total for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ref_st(zs, zt, T, stand=False):
    total = 0.0
    for rs, rt in zip(rows(zs), rows(zt)):
        if stand:
            rs, rt = zscore(rs), zscore(rt)
        total += kl(softmax(rt, T), softmax(rs, T))
    return total / len(rows(zs)) * T * T


def ref_dkd(zs, zt, y, alpha, beta, T, stand=False):
    """alpha * TCKD + beta * NCKD, each T^2 * sum over samples / B, from the paper's definitions."""
    tckd = nckd = 0.0
    for rs, rt, c in zip(rows(zs), rows(zt), y.tolist()):
        if stand:
            rs, rt = zscore(rs), zscore(rt)
        ps, pt = softmax(rs, T), softmax(rt, T)
        bs = [ps[c], sum(p for k, p in enumerate(ps) if k != c)]
        bt = [pt[c], sum(p for k, p in enumerate(pt) if k != c)]
        tckd += kl(bt, bs)
        qs = softmax([v for k, v in enumerate(rs) if k != c], T)  # non-target classes, renormalised
        qt = softmax([v for k, v in enumerate(rt) if k != c], T)
        nckd += kl(qt, qs)
    n = len(y)
    return alpha * tckd * T * T / n + beta * nckd * T * T / n


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (na * nb + 1e-8)


def ref_dist(zs, zt, beta, gamma, tau, stand=False):
    rs_all, rt_all = rows(zs), rows(zt)
    if stand:
        rs_all, rt_all = [zscore(r) for r in rs_all], [zscore(r) for r in rt_all]
    ys = [softmax(r, tau) for r in rs_all]
    yt = [softmax(r, tau) for r in rt_all]
    n, c = len(ys), len(ys[0])
    inter = 1 - sum(pearson(ys[i], yt[i]) for i in range(n)) / n
    intra = 1 - sum(pearson([ys[i][j] for i in range(n)], [yt[i][j] for i in range(n)]) for j in range(c)) / c
    return tau * tau * (beta * inter + gamma * intra)


def jacobi_eigen(a: list[list[float]]) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues (descending) and eigenvectors (as lists) of a small symmetric matrix."""
    n = len(a)
    a = [row[:] for row in a]
    v = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for _ in range(100):
        off = sum(a[i][j] ** 2 for i in range(n) for j in range(n) if i != j)
        if off < 1e-30:
            break
        for p in range(n):
            for q in range(p + 1, n):
                if abs(a[p][q]) < 1e-300:
                    continue
                theta = (a[q][q] - a[p][p]) / (2 * a[p][q])
                t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1))
                c = 1 / math.sqrt(t * t + 1)
                s = t * c
                for k in range(n):  # A <- A R, then A <- R^T A
                    akp, akq = a[k][p], a[k][q]
                    a[k][p], a[k][q] = c * akp - s * akq, s * akp + c * akq
                for k in range(n):
                    apk, aqk = a[p][k], a[q][k]
                    a[p][k], a[q][k] = c * apk - s * aqk, s * apk + c * aqk
                for k in range(n):
                    vkp, vkq = v[k][p], v[k][q]
                    v[k][p], v[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
    order = sorted(range(n), key=lambda i: -a[i][i])
    return [a[i][i] for i in order], [[v[k][i] for k in range(n)] for i in order]


def sample_matrix(fmap: list, layout: str) -> list[list[float]]:
    """One sample's C x H x W nested list as the (C*H) x W (width) or (H*W) x C (channels) matrix."""
    c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0])
    if layout == "width":
        return [[fmap[ci][hi][wi] for wi in range(w)] for ci in range(c) for hi in range(h)]
    return [[fmap[ci][hi][wi] for ci in range(c)] for hi in range(h) for wi in range(w)]


def right_singular(m: list[list[float]], n: int) -> tuple[list[float], list[list[float]]]:
    """The n largest singular values and their right singular vectors (at most min(rows, cols))."""
    cols = len(m[0])
    gram = [[sum(r[i] * r[j] for r in m) for j in range(cols)] for i in range(cols)]
    values, vectors = jacobi_eigen(gram)
    count = min(n, cols, len(m))
    return [math.sqrt(max(x, 0.0)) for x in values[:count]], vectors[:count]


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, 1e-12) for x in v]


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def ref_kdsvd(student: FeatureTaps, teacher: FeatureTaps, k: int, layout: str) -> float:
    total = 0.0
    batch = student.stages[0].shape[0]
    for b in range(batch):
        prev = None
        for f_s, f_t in zip(student.stages, teacher.stages):
            ms, mt = sample_matrix(rows(f_s[b]), layout), sample_matrix(rows(f_t[b]), layout)
            s_t, v_t = right_singular(mt, k)
            _, v_s = right_singular(ms, k + 3)
            # the teacher's signs as torch's SVD gives them (a convention, not a computation)
            x = torch.tensor(mt, dtype=torch.float64)
            vh = torch.linalg.svd(x, full_matrices=False)[2]
            v_t = [vec if dot(vec, vh[j].tolist()) >= 0 else [-e for e in vec] for j, vec in enumerate(v_t)]
            scale = unit(s_t)
            aligned = []
            for j, vt in enumerate(v_t):
                cos = [dot(vs, vt) for vs in v_s]
                best = max(range(len(cos)), key=lambda i: abs(cos[i]))
                sign = 1.0 if cos[best] >= 0 else -1.0
                aligned.append([sign * e * scale[j] for e in v_s[best]])
            teacher_vs = [[e * scale[j] for e in vt] for j, vt in enumerate(v_t)]
            if prev is not None:
                prev_s, prev_t = prev
                for j in range(k):
                    for p in range(len(aligned[j])):
                        for q in range(len(prev_s[j])):
                            gs = math.exp(-((aligned[j][p] - prev_s[j][q]) ** 2) / 8)
                            gt = math.exp(-((teacher_vs[j][p] - prev_t[j][q]) ** 2) / 8)
                            total += (gs - gt) ** 2
            prev = (aligned, teacher_vs)
    return total / batch


# ---------------------------------------------------------------- registry and defaults


def test_new_modes_registered_with_reference_defaults():
    assert LOSSES["dkd"].defaults == {
        "lambda_kd": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20, "logit_stand": "off",
    }  # fmt: skip
    assert LOSSES["dist"].defaults == {"lambda_kd": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0, "logit_stand": "off"}
    assert LOSSES["kdsvd"].defaults == {"lambda_kd": 1.0, "k": 1, "svd_layout": "width"}
    assert LOSSES["st"].defaults == {"lambda_kd": 0.1, "T": 4.0, "logit_stand": "off"}  # existing values unchanged
    assert LOSSES["dkd"].cacheable() and LOSSES["dist"].cacheable() and not LOSSES["kdsvd"].cacheable()
    assert all(LOSSES[m].paper for m in NEW_MODES)


def test_new_settings_declared_in_options():
    options = {o.name: o for o in ENTRY_OPTIONS["kd"]}
    for key in ("alpha", "beta", "warmup", "tau", "k", "logit_stand", "svd_layout"):
        assert key in MODE_SETTINGS and options[key].default is None
        assert "(default: the mode's reference value)" in options[key].help
    assert options["logit_stand"]._choices() == ("off", "on")
    assert options["svd_layout"]._choices() == ("width", "channels")
    opts = {k: None for k in MODE_SETTINGS} | {"kd_mode": "dist", "lambda_kd": None, "beta": 3.0, "alpha": 2.0}
    assert mode_settings(opts) == {"beta": 3.0}  # alpha is dkd's, not dist's
    assert mode_settings({**opts, "kd_mode": "st", "logit_stand": "on"}) == {"logit_stand": "on"}


# ---------------------------------------------------------------- DKD


@pytest.mark.parametrize("alpha, beta, T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
def test_dkd_golden(alpha, beta, T):
    s, t, y = make_taps(SHAPES, seed=1), make_taps(SHAPES, seed=2), labels(seed=3)
    value = run("dkd", s, t, y, epoch=50, alpha=alpha, beta=beta, T=T)
    assert value.item() == pytest.approx(ref_dkd(s.logits, t.logits, y, alpha, beta, T), rel=1e-10)


def test_dkd_defaults_golden_after_warmup():
    s, t, y = make_taps(SHAPES, batch=6, seed=4), make_taps(SHAPES, batch=6, seed=5), labels(6, seed=6)
    value = run("dkd", s, t, y, epoch=19)  # the 20th epoch: the warm-up is complete
    assert value.item() == pytest.approx(ref_dkd(s.logits, t.logits, y, 1.0, 8.0, 4.0), rel=1e-10)


@pytest.mark.parametrize(
    "epoch, warmup, factor",
    [(0, 20, 1 / 20), (1, 20, 2 / 20), (9, 20, 10 / 20), (18, 20, 19 / 20), (19, 20, 1.0), (100, 20, 1.0),
     (0, 1, 1.0), (0, 5, 0.2), (3, 0, 1.0)],
)  # fmt: skip
def test_dkd_warmup_factor(epoch, warmup, factor):
    assert warmup_factor(epoch, warmup) == pytest.approx(factor, rel=1e-15)
    s, t, y = make_taps(SHAPES, seed=7), make_taps(SHAPES, seed=8), labels(seed=9)
    full = ref_dkd(s.logits, t.logits, y, 1.0, 8.0, 4.0)
    assert run("dkd", s, t, y, epoch=epoch, warmup=warmup).item() == pytest.approx(factor * full, rel=1e-10)


def test_dkd_is_kd_when_weights_follow_the_teacher():
    """The paper's Eq. 7: KD = TCKD + (1 - p_t^gt) NCKD; one sample, beta = 1 - p_t^gt."""
    s, t, y = make_taps(SHAPES, batch=1, seed=10), make_taps(SHAPES, batch=1, seed=11), labels(1, seed=12)
    p_gt = torch.softmax(t.logits / 4.0, dim=1)[0, y[0]].item()
    dkd = run("dkd", s, t, y, epoch=30, alpha=1.0, beta=1.0 - p_gt).item()
    assert dkd == pytest.approx(ref_st(s.logits, t.logits, 4.0), rel=1e-10)


# ---------------------------------------------------------------- DIST


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 4.0), (2.0, 0.5, 1.0), (0.0, 3.0, 2.0)])
def test_dist_golden(beta, gamma, tau):
    s, t = make_taps(SHAPES, batch=6, seed=13), make_taps(SHAPES, batch=6, seed=14)
    value = run("dist", s, t, beta=beta, gamma=gamma, tau=tau)
    assert value.item() == pytest.approx(ref_dist(s.logits, t.logits, beta, gamma, tau), rel=1e-10)


def test_dist_near_zero_when_student_equals_teacher():
    """Only the 1e-8 added to the product of the norms keeps the correlations below 1."""
    t = make_taps(SHAPES, batch=6, seed=15)
    value = run("dist", t, t).item()
    assert value == pytest.approx(ref_dist(t.logits, t.logits, 1.0, 1.0, 4.0), rel=1e-8) and 0 < value < 1e-4


# ---------------------------------------------------------------- logit standardisation


@pytest.mark.parametrize("mode", ["st", "dkd", "dist"])
def test_logit_stand_golden_on_and_off(mode):
    s, t, y = make_taps(SHAPES, batch=6, seed=16), make_taps(SHAPES, batch=6, seed=17), labels(6, seed=18)
    refs = {
        "st": lambda stand: ref_st(s.logits, t.logits, 2.0, stand),
        "dkd": lambda stand: ref_dkd(s.logits, t.logits, y, 1.0, 8.0, 2.0, stand),
        "dist": lambda stand: ref_dist(s.logits, t.logits, 1.0, 1.0, 2.0, stand),
    }
    temp = {"tau": 2.0} if mode == "dist" else {"T": 2.0}
    values = {}
    for stand in ("off", "on"):
        values[stand] = run(mode, s, t, y, epoch=25, logit_stand=stand, **temp).item()
        assert values[stand] == pytest.approx(refs[mode](stand == "on"), rel=1e-9)
    assert values["on"] != pytest.approx(values["off"], rel=1e-3)
    # z-scored logits ignore each sample's shift and scale (up to the 1e-7 added to the std)
    g = torch.Generator().manual_seed(19)
    shift, scale = torch.randn(6, 1, generator=g, dtype=torch.float64), 0.5 + torch.rand(6, 1, generator=g).double()
    moved = make_taps(SHAPES, batch=6, seed=16)
    moved.logits = s.logits * scale + shift
    assert run(mode, moved, t, y, epoch=25, logit_stand="on", **temp).item() == pytest.approx(values["on"], rel=1e-6)


# ---------------------------------------------------------------- KDSVD


@pytest.mark.parametrize("k, layout", [(1, "width"), (2, "width"), (1, "channels")])
def test_kdsvd_golden(k, layout):
    s_shapes = STUDENT if layout == "width" else SHAPES  # channels layout: same channel counts
    s, t = make_taps(s_shapes, seed=20), make_taps(SHAPES, seed=21)
    loss_fn = LOSSES["kdsvd"](s_shapes, SHAPES, k=k, svd_layout=layout)
    assert loss_fn.describe()["adapters"] == []
    value = loss_fn(s, t, DistillBatch(torch.zeros(4, 3, 4, 4), labels()))
    assert value.item() == pytest.approx(ref_kdsvd(s, t, k, layout), rel=1e-8)
    assert value.item() > 1e-6  # different maps: the relations differ


def test_kdsvd_zero_when_student_equals_teacher():
    t = make_taps(SHAPES, seed=22)
    assert run("kdsvd", t, t).item() == pytest.approx(0.0, abs=1e-20)


def test_kdsvd_adapters_follow_the_layout():
    wide = TapShapes(stem=(2, 8, 8), stages=((3, 8, 8), (2, 6, 6), (5, 4, 4)), embedding=3, num_classes=K)
    # width layout: widths differ -> parameter-free pooling; channels do not matter
    width = LOSSES["kdsvd"](wide, SHAPES)
    described = width.describe()
    assert [a["where"] for a in described["adapters"]] == ["stage1", "stage2", "stage3"]
    assert not any(a["conv1x1_bn"] for a in described["adapters"]) and described["learned_parameters"] == 0
    value = width(make_taps(wide, seed=23), make_taps(SHAPES, seed=24), DistillBatch(torch.zeros(4, 3), labels()))
    assert torch.isfinite(value)
    # channels layout: channel counts differ -> 1x1 conv + BN; equal channels need nothing
    channels = LOSSES["kdsvd"](STUDENT, SHAPES, svd_layout="channels")
    assert all(a["conv1x1_bn"] for a in channels.describe()["adapters"])
    assert LOSSES["kdsvd"](wide, SHAPES, svd_layout="channels").describe()["adapters"] == []


# ---------------------------------------------------------------- gradients reach the student only


@pytest.mark.parametrize(
    "mode, settings",
    [("dkd", {}), ("dkd", {"logit_stand": "on"}), ("dist", {}), ("dist", {"logit_stand": "on"}),
     ("st", {"logit_stand": "on"}), ("kdsvd", {}), ("kdsvd", {"svd_layout": "channels"})],
)  # fmt: skip
def test_gradient_flows_to_the_student_only(mode, settings):
    s_shapes = SHAPES if settings.get("svd_layout") == "channels" else STUDENT
    s = make_taps(s_shapes, seed=25, requires_grad=True)
    t = make_taps(SHAPES, seed=26, requires_grad=True)
    run(mode, s, t, epoch=3, s_shapes=s_shapes, **settings).backward()
    read = s.stages if mode == "kdsvd" else (s.logits,)
    assert all(x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in read)
    assert all(x.grad is None for x in (t.logits, *t.stages))


# ---------------------------------------------------------------- bad settings: one clear line


@pytest.mark.parametrize(
    "mode, settings, message",
    [
        ("dkd", {"beta": -1.0}, "kd_mode dkd: beta: got -1.0; must be a number >= 0"),
        ("dkd", {"warmup": 2.5}, "kd_mode dkd: warmup: got 2.5 (float); must be an integer >= 0"),
        ("dkd", {"T": 0}, "kd_mode dkd: T: got 0.0; must be a number > 0"),
        ("dist", {"tau": float("nan")}, "kd_mode dist: tau: got nan; must be a number > 0"),
        ("dist", {"logit_stand": "yes"}, "kd_mode dist: logit_stand: got 'yes'; allowed: one of off, on"),
        ("st", {"logit_stand": True}, "kd_mode st: logit_stand: got True; allowed: one of off, on"),
        ("kdsvd", {"k": 0}, "kd_mode kdsvd: k: got 0; must be an integer >= 1"),
        ("kdsvd", {"svd_layout": "nchw"}, "kd_mode kdsvd: svd_layout: got 'nchw'; allowed: one of width, channels"),
        (
            "kdsvd",
            {"k": 3},
            "kd_mode kdsvd: k: got 3; the teacher's stage 3 (10 x 2 per sample with svd_layout width) "
            "has only 2 singular vectors",
        ),
    ],
)
def test_loss_rejects_bad_settings_in_one_line(mode, settings, message):
    with pytest.raises(KdpipeError) as err:
        LOSSES[mode](SHAPES, SHAPES, **settings)
    assert str(err.value) == message


def test_loss_settings_are_checked_by_the_kd_options_themselves():
    """A loss built directly checks its numeric settings with the same Option the CLI and config use:
    the bounds are declared once (DIST's gamma 0 = no intra-class term is accepted by both), and
    values come back converted to the option's type."""
    from kdpipe.options import find_option

    loss = LOSSES["dist"](SHAPES, SHAPES, gamma=0, tau=2)
    assert loss.settings["gamma"] == 0.0 and isinstance(loss.settings["tau"], float)
    assert find_option("kd", "gamma").check(0, "") == 0.0
    assert isinstance(LOSSES["dkd"](SHAPES, SHAPES, warmup=3.0).settings["warmup"], int)
    with pytest.raises(KdpipeError) as direct:
        LOSSES["dkd"](SHAPES, SHAPES, beta=-1)
    with pytest.raises(KdpipeError) as option:
        find_option("kd", "beta").check(-1, "kd_mode dkd: ")
    assert str(direct.value) == str(option.value)


def test_kdsvd_rejects_unequal_stage_counts():
    two = TapShapes(stem=(2, 4, 4), stages=((3, 4, 4), (2, 3, 3)), embedding=3, num_classes=K)
    message = "^kd_mode kdsvd: pairs stages one to one, but the teacher has 3 stages and the student 2$"
    with pytest.raises(KdpipeError, match=message):
        LOSSES["kdsvd"](two, SHAPES)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"dkd": {"beta": -1}}, "config kd.settings.dkd.beta: -1 is less than the minimum of 0"),
        ({"dkd": {"warmup": 1.5}}, "config kd.settings.dkd.warmup: 1.5 is not of type 'integer'"),
        ({"dist": {"logit_stand": "yes"}}, "config kd.settings.dist.logit_stand: 'yes' is not one of ['off', 'on']"),
        ({"kdsvd": {"k": 0}}, "config kd.settings.kdsvd.k: 0 is less than the minimum of 1"),
        ({"dkd": {"tau": 2}}, "config kd.settings.dkd.tau: not a setting of dkd"),
    ],
)
def test_config_rejects_bad_settings_in_one_line(settings, message):
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": {"settings": settings}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_settings_reach_the_run_options():
    config = load_config(
        {
            "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
            "kd": {
                "modes": ["dkd", "dist", "kdsvd", "st"],
                "settings": {
                    "dkd": {"beta": 6, "logit_stand": "on", "T": 2, "lambda_kd": 9},
                    "kdsvd": {"svd_layout": "channels"},
                },
            },
        }
    )
    dkd = kd_options(config, "digits", "dkd", "resnet14", "resnet8", 0)
    assert (dkd["beta"], dkd["logit_stand"], dkd["T"], dkd["lambda_kd"]) == (6, "on", 2, 9)
    assert kd_options(config, "digits", "kdsvd", "resnet14", "resnet8", 0)["svd_layout"] == "channels"
    assert "beta" not in kd_options(config, "digits", "dist", "resnet14", "resnet8", 0)


# ---------------------------------------------------------------- end to end


TINY = dict(data_name="digits", epochs=2, batch_size=16, lr=0.05, train_subset=32, val_size=16, cuda=0, threads=1)


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10).state_dict(), path)
    return path


def test_train_kd_dkd_end_to_end(tmp_path, random_teacher, monkeypatch):
    from kdpipe.losses.dkd import DKDLoss

    epochs_seen = []
    forward = DKDLoss.forward

    def spy(self, student, teacher, batch):
        epochs_seen.append(batch.epoch)
        return forward(self, student, teacher, batch)

    monkeypatch.setattr(DKDLoss, "forward", spy)
    record = kdpipe.train_kd(
        t_model=str(random_teacher), t_name="resnet8", s_name="resnet8", kd_mode="dkd", beta=6,
        save_root=str(tmp_path), note="dkd", **TINY,
    )  # fmt: skip
    assert sorted(set(epochs_seen)) == [0, 1]  # the 0-based epoch reaches the warm-up
    saved = json.loads((tmp_path / "dkd" / "run.json").read_text())
    assert saved["info"]["loss"]["settings"] == {
        "lambda_kd": 1.0, "alpha": 1.0, "beta": 6.0, "T": 4.0, "warmup": 20, "logit_stand": "off",
    }  # fmt: skip
    assert record["info"]["lambda_kd"] == 1.0


def test_train_kd_rejects_a_bad_warmup_in_one_line(tmp_path, random_teacher):
    with pytest.raises(KdpipeError) as err:
        kdpipe.train_kd(
            t_model=str(random_teacher), t_name="resnet8", s_name="resnet8", kd_mode="dkd", warmup=-1,
            save_root=str(tmp_path), **TINY,
        )  # fmt: skip
    assert str(err.value) == "warmup: got -1; must be an integer >= 0"
    assert list(tmp_path.iterdir()) == []
