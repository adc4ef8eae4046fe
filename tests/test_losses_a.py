"""Distillation losses, group A: logits, st, at, fitnet, nst, pkt, sp, cc.

Golden values are recomputed from the papers' formulas with plain Python loops over
elements (``math`` only, no tensor ops), independently of the vectorised modules.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.losses.st import soft_target_loss
from kdpipe.models import FeatureTaps

TAP_NAMES = ("stem", "stages_pre", "stages", "embedding", "logits")
GROUP_A = ("logits", "st", "at", "fitnet", "nst", "pkt", "sp", "cc")

# student and teacher differ in channels and embedding width, agree in spatial sizes and classes
STUDENT = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (3, 3, 3), (4, 2, 2)), embedding=5, num_classes=4)
TEACHER = TapShapes(stem=(3, 4, 4), stages=((3, 4, 4), (2, 3, 3), (5, 2, 2)), embedding=3, num_classes=4)


def make_taps(shapes, batch=4, seed=0, dtype=torch.float64, requires_grad=False, scale=1.0):
    """Random FeatureTaps of the given per-sample shapes; every tap is a leaf tensor."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(batch, *shape, generator=g, dtype=dtype) * scale

    stem = rand(*shapes.stem)
    pre = tuple(rand(*s) for s in shapes.stages)
    post = tuple(F.relu(p) for p in pre)
    emb = rand(shapes.embedding)
    logits = 2 * rand(shapes.num_classes)

    def leaf(t):
        return t.detach().clone().requires_grad_(requires_grad)

    return FeatureTaps(
        stem=leaf(stem),
        stages_pre=tuple(leaf(p) for p in pre),
        stages=tuple(leaf(p) for p in post),
        embedding=leaf(emb),
        logits=leaf(logits),
    )


def copy_taps(taps, requires_grad=False):
    def leaf(t):
        return t.detach().clone().requires_grad_(requires_grad)

    return FeatureTaps(
        stem=leaf(taps.stem),
        stages_pre=tuple(leaf(t) for t in taps.stages_pre),
        stages=tuple(leaf(t) for t in taps.stages),
        embedding=leaf(taps.embedding),
        logits=leaf(taps.logits),
    )


def tap_tensors(taps):
    for name in TAP_NAMES:
        value = getattr(taps, name)
        if isinstance(value, tuple):
            yield from ((f"{name}[{i}]", t) for i, t in enumerate(value))
        elif value is not None:
            yield name, value


def batch_of(n):
    return DistillBatch(x=torch.zeros(n, 3, 4, 4), y=torch.zeros(n, dtype=torch.long))


def run_loss(name, s_shapes, t_shapes, student, teacher, **settings):
    loss_fn = LOSSES[name](s_shapes, t_shapes, **settings)
    return loss_fn(student, teacher, batch_of(student.logits.shape[0])), loss_fn


# ---------------------------------------------------------------- loop-based references


def lst(t):
    return t.detach().double().tolist()


def dot(a, b):
    total = 0.0
    for x, y in zip(a, b):
        total += x * y
    return total


def l2_normalise(v, eps=0.0):
    n = math.sqrt(sum(x * x for x in v))
    if n + eps == 0.0:  # an all-zero vector (e.g. a dead post-ReLU channel) stays zero
        return [0.0 for _ in v]
    return [x / (n + eps) for x in v]


def flat(nested):
    if isinstance(nested, list):
        out = []
        for item in nested:
            out.extend(flat(item))
        return out
    return [nested]


def ref_logits(zs, zt):
    zs, zt = lst(zs), lst(zt)
    total, count = 0.0, 0
    for rs, rt in zip(zs, zt):
        for a, b in zip(rs, rt):
            total += (a - b) ** 2
            count += 1
    return total / count


def softmax_row(row, T):
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    z = sum(e)
    return [v / z for v in e]


def ref_st(zs, zt, T):
    zs, zt = lst(zs), lst(zt)
    total = 0.0
    for rs, rt in zip(zs, zt):
        ps, pt = softmax_row(rs, T), softmax_row(rt, T)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return total / len(zs) * T * T


def avg_pool(grid, size):
    """Average-pool an H x W list-of-lists to size x size (integer factor)."""
    f = len(grid) // size
    return [
        [sum(grid[i * f + a][j * f + b] for a in range(f) for b in range(f)) / (f * f) for j in range(size)]
        for i in range(size)
    ]


def attention(sample, p, size=None):
    """sample: C x H x W nested list -> normalised flat attention vector."""
    c, h, w = len(sample), len(sample[0]), len(sample[0][0])
    grid = [[sum(abs(sample[k][i][j]) ** p for k in range(c)) / c for j in range(w)] for i in range(h)]
    if size is not None and size != h:
        grid = avg_pool(grid, size)
    return l2_normalise(flat(grid))


def ref_at(s_stages, t_stages, p):
    stage_losses = []
    for fs, ft in zip(s_stages, t_stages):
        fs, ft = lst(fs), lst(ft)
        size = min(len(fs[0][0]), len(ft[0][0]))
        total, count = 0.0, 0
        for bs, bt in zip(fs, ft):
            qs, qt = attention(bs, p, size), attention(bt, p, size)
            for a, b in zip(qs, qt):
                total += (a - b) ** 2
                count += 1
        stage_losses.append(total / count)
    return sum(stage_losses) / len(stage_losses)


def ref_fitnet(fs, ft):
    a, b = flat(lst(fs)), flat(lst(ft))
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def ref_nst(fs, ft):
    fs, ft = lst(fs), lst(ft)
    per_sample = []
    for bs, bt in zip(fs, ft):
        s = [l2_normalise(flat(ch)) for ch in bs]
        t = [l2_normalise(flat(ch)) for ch in bt]

        def kmean(u, v):
            total = 0.0
            for a in u:
                for b in v:
                    total += dot(a, b) ** 2  # (a.b + 0)^2
            return total / (len(u) * len(v))

        per_sample.append(kmean(s, s) + kmean(t, t) - 2 * kmean(s, t))
    return sum(per_sample) / len(per_sample)


def pkt_probs(emb, eps):
    rows = [l2_normalise(r, eps) for r in lst(emb)]
    n = len(rows)
    k = [[(dot(rows[i], rows[j]) + 1.0) / 2.0 for j in range(n)] for i in range(n)]
    return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]


def ref_pkt(es, et, eps):
    ps, pt = pkt_probs(es, eps), pkt_probs(et, eps)
    n = len(ps)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
    return total / (n * n)


def sp_gram(fm):
    rows = [flat(sample) for sample in lst(fm)]
    n = len(rows)
    g = [[dot(rows[i], rows[j]) for j in range(n)] for i in range(n)]
    return [l2_normalise(r) for r in g]


def ref_sp(s_stages, t_stages):
    stage_losses = []
    for fs, ft in zip(s_stages, t_stages):
        gs, gt = sp_gram(fs), sp_gram(ft)
        n = len(gs)
        total = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n))
        stage_losses.append(total / (n * n))
    return sum(stage_losses) / len(stage_losses)


def cc_corr(emb, gamma, order):
    rows = [l2_normalise(r) for r in lst(emb)]
    n = len(rows)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            s = dot(rows[i], rows[j])
            out[i][j] = sum(
                math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s**p for p in range(order + 1)
            )
    return out


def ref_cc(es, et, gamma, order):
    cs, ct = cc_corr(es, gamma, order), cc_corr(et, gamma, order)
    n = len(cs)
    return sum((cs[i][j] - ct[i][j]) ** 2 for i in range(n) for j in range(n)) / (n * n)


# ---------------------------------------------------------------- golden values

REFERENCES = {
    "logits": lambda s, t, st: ref_logits(s.logits, t.logits),
    "st": lambda s, t, st: ref_st(s.logits, t.logits, st["T"]),
    "at": lambda s, t, st: ref_at(s.stages, t.stages, st["p"]),
    "fitnet": lambda s, t, st: ref_fitnet(s.stages[2], t.stages[2]),
    "nst": lambda s, t, st: ref_nst(s.stages[2], t.stages[2]),
    "pkt": lambda s, t, st: ref_pkt(s.embedding, t.embedding, st["eps"]),
    "sp": lambda s, t, st: ref_sp(s.stages, t.stages),
    "cc": lambda s, t, st: ref_cc(s.embedding, t.embedding, st["gamma"], st["P_order"]),
}


@pytest.mark.parametrize(
    "name, same_shapes, settings",
    [
        ("logits", False, {}),
        ("st", False, {}),
        ("st", False, {"T": 1.5}),
        ("at", False, {}),
        ("at", False, {"p": 1.0}),
        ("fitnet", True, {}),
        ("nst", False, {}),
        ("pkt", False, {}),
        ("pkt", False, {"eps": 1e-7}),  # RepDistiller's
        ("sp", False, {}),
        ("cc", False, {}),
        ("cc", False, {"gamma": 0.7, "P_order": 3}),
    ],
)
def test_golden_value(name, same_shapes, settings):
    t_shapes = STUDENT if same_shapes else TEACHER
    student = make_taps(STUDENT, batch=4, seed=1)
    teacher = make_taps(t_shapes, batch=4, seed=2)
    got, loss_fn = run_loss(name, STUDENT, t_shapes, student, teacher, **settings)
    assert got.dim() == 0
    assert loss_fn.describe()["adapters"] == []
    expected = REFERENCES[name](student, teacher, loss_fn.settings)
    assert expected > 1e-6  # a non-trivial case
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_st_hand_computed():
    # T = 2: teacher row 0 -> softmax([ln 3, 0]) = [3/4, 1/4]; student row 0 -> [1/2, 1/2].
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120360...; row 1 identical -> 0.
    # batchmean over 2 rows, times T^2 = 4: 4 * 0.1308120360 / 2 = 0.2616240720
    zt = torch.tensor([[2 * math.log(3.0), 0.0], [1.0, -1.0]])
    zs = torch.tensor([[5.0, 5.0], [1.0, -1.0]])
    assert soft_target_loss(zs, zt, 2.0).item() == pytest.approx(0.2616240720, rel=1e-5)
    shapes = TapShapes(stem=(1, 2, 2), stages=((1, 2, 2),) * 3, embedding=2, num_classes=2)
    student, teacher = (
        make_taps(shapes, batch=2, dtype=torch.float32),
        make_taps(shapes, batch=2, seed=3, dtype=torch.float32),
    )
    student.logits, teacher.logits = zs, zt
    got, _ = run_loss("st", shapes, shapes, student, teacher, T=2.0)
    assert got.item() == pytest.approx(0.2616240720, rel=1e-5)


def test_at_pools_the_larger_map():
    s_shapes = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (3, 4, 4), (4, 2, 2)), embedding=5, num_classes=4)
    t_shapes = TapShapes(stem=(3, 4, 4), stages=((3, 2, 2), (2, 4, 4), (5, 2, 2)), embedding=3, num_classes=4)
    student, teacher = make_taps(s_shapes, seed=4), make_taps(t_shapes, seed=5)
    got, loss_fn = run_loss("at", s_shapes, t_shapes, student, teacher)
    adapters = loss_fn.describe()["adapters"]
    assert len(adapters) == 1 and adapters[0]["pool"] == "student" and not adapters[0]["conv1x1_bn"]
    assert adapters[0]["student_shape"] == [2, 4, 4] and adapters[0]["teacher_shape"] == [3, 2, 2]
    assert sum(p.numel() for p in loss_fn.parameters()) == 0
    assert got.item() == pytest.approx(ref_at(student.stages, teacher.stages, 2.0), rel=1e-5)


def test_nst_pools_the_larger_map_without_parameters():
    s_shapes = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (3, 4, 4), (4, 2, 2)), embedding=5, num_classes=4)
    t_shapes = TapShapes(stem=(3, 4, 4), stages=((3, 4, 4), (2, 4, 4), (6, 4, 4)), embedding=3, num_classes=4)
    student, teacher = make_taps(s_shapes, seed=6), make_taps(t_shapes, seed=7)
    got, loss_fn = run_loss("nst", s_shapes, t_shapes, student, teacher)
    adapters = loss_fn.describe()["adapters"]
    assert len(adapters) == 1 and adapters[0]["pool"] == "teacher" and not adapters[0]["conv1x1_bn"]
    assert sum(p.numel() for p in loss_fn.parameters()) == 0
    pooled = F.avg_pool2d(teacher.stages[2], 2)
    assert got.item() == pytest.approx(ref_nst(student.stages[2], pooled), rel=1e-5)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("name", GROUP_A)
def test_zero_when_student_equals_teacher(name):
    student = make_taps(STUDENT, seed=8)
    teacher = copy_taps(student)
    got, loss_fn = run_loss(name, STUDENT, STUDENT, student, teacher)
    assert loss_fn.describe()["adapters"] == []
    assert abs(got.item()) < 1e-10


STUDENT_TAPS_USED = {
    "logits": ("logits",),
    "st": ("logits",),
    "at": ("stages[0]", "stages[1]", "stages[2]"),
    "fitnet": ("stages[2]",),
    "nst": ("stages[2]",),
    "pkt": ("embedding",),
    "sp": ("stages[0]", "stages[1]", "stages[2]"),
    "cc": ("embedding",),
}


@pytest.mark.parametrize("name", GROUP_A)
def test_gradients_reach_student_not_teacher(name):
    t_shapes = STUDENT if name == "fitnet" else TEACHER
    student = make_taps(STUDENT, seed=9, requires_grad=True)
    # the teacher's taps are leaves that require grad: a missing detach would leave gradient on them
    teacher = make_taps(t_shapes, seed=10, requires_grad=True)
    got, _ = run_loss(name, STUDENT, t_shapes, student, teacher)
    assert got.requires_grad
    got.backward()
    grads = dict(tap_tensors(student))
    for tap in STUDENT_TAPS_USED[name]:
        assert grads[tap].grad is not None and grads[tap].grad.abs().sum() > 0, tap
    for tap, t in tap_tensors(teacher):
        assert t.grad is None or not t.grad.any(), tap


@pytest.mark.parametrize("name", GROUP_A)
def test_reads_only_declared_teacher_taps(name):
    cls = LOSSES[name]
    assert cls.teacher_taps <= {"logits", "embedding", "stages", "stages_pre", "stem"}
    t_shapes = STUDENT if name == "fitnet" else TEACHER
    student, teacher = make_taps(STUDENT, seed=11), make_taps(t_shapes, seed=12)
    for tap in TAP_NAMES:
        if tap not in cls.teacher_taps:
            setattr(teacher, tap, None)
    got, _ = run_loss(name, STUDENT, t_shapes, student, teacher)
    assert torch.isfinite(got)


def test_fitnet_adapter_is_learned():
    s_shapes = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (4, 4, 4), (8, 4, 4)), embedding=8, num_classes=4)
    t_shapes = TapShapes(stem=(4, 4, 4), stages=((4, 4, 4), (8, 2, 2), (16, 2, 2)), embedding=16, num_classes=4)
    torch.manual_seed(0)
    student = make_taps(s_shapes, seed=13, dtype=torch.float32, requires_grad=True)
    teacher = make_taps(t_shapes, seed=14, dtype=torch.float32, requires_grad=True)
    loss_fn = LOSSES["fitnet"](s_shapes, t_shapes)
    adapters = loss_fn.describe()["adapters"]
    assert len(adapters) == 1
    assert adapters[0]["conv1x1_bn"] and adapters[0]["pool"] == "student"
    assert adapters[0]["student_shape"] == [8, 4, 4] and adapters[0]["teacher_shape"] == [16, 2, 2]
    assert loss_fn.describe()["learned_parameters"] > 0
    got = loss_fn(student, teacher, batch_of(4))
    assert got.dim() == 0 and torch.isfinite(got) and got.item() > 0
    got.backward()
    for pname, param in loss_fn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    assert student.stages[2].grad.abs().sum() > 0
    assert teacher.stages[2].grad is None or not teacher.stages[2].grad.any()


@pytest.mark.parametrize("name", ["logits", "st"])
def test_class_count_mismatch_is_an_error(name):
    other = TapShapes(stem=TEACHER.stem, stages=TEACHER.stages, embedding=TEACHER.embedding, num_classes=7)
    with pytest.raises(KdpipeError, match="classes"):
        LOSSES[name](STUDENT, other)


@pytest.mark.parametrize(
    "name, lam",
    [
        ("logits", 0.1),
        ("st", 0.1),
        ("at", 1000.0),
        ("fitnet", 0.1),
        ("nst", 10.0),
        ("pkt", 10000.0),
        ("sp", 3000.0),
        ("cc", 100.0),
    ],
)
def test_default_lambda(name, lam):
    cls = LOSSES[name]
    assert cls.name == name and cls.paper
    assert cls.defaults["lambda_kd"] == lam


def test_mode_settings_defaults_and_overrides():
    assert LOSSES["st"].defaults["T"] == 4.0
    assert LOSSES["at"].defaults["p"] == 2.0
    assert LOSSES["cc"].defaults["gamma"] == 0.4 and LOSSES["cc"].defaults["P_order"] == 2
    loss_fn = LOSSES["st"](STUDENT, TEACHER, T=None)
    assert loss_fn.settings["T"] == 4.0
    assert LOSSES["st"](STUDENT, TEACHER, T=3.0).settings["T"] == 3.0
