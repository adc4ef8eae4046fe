"""Losses rkd, irg, fsp, ab, sobolev, lwm: golden values from independent loop-based
references, properties (zero loss, invariances), gradient flow and adapters."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.models import FeatureTaps, build_model
from kdpipe.models.resnet import CifarResNet

MINE = ("rkd", "irg", "fsp", "ab", "sobolev", "lwm")
IMAGE = (3, 8, 8)
RESNET8_SHAPES = TapShapes(stem=(16, 8, 8), stages=((16, 8, 8), (32, 4, 4), (64, 2, 2)), embedding=64, num_classes=10)
NARROW_SHAPES = TapShapes(stem=(8, 8, 8), stages=((8, 8, 8), (16, 4, 4), (32, 2, 2)), embedding=32, num_classes=10)


def test_tap_shapes_of_the_test_networks():
    assert TapShapes.probe(build_model("resnet8", 10), IMAGE) == RESNET8_SHAPES
    assert TapShapes.probe(CifarResNet(8, 10, (8, 16, 32)), IMAGE) == NARROW_SHAPES


# --------------------------------------------------------------------------- helpers


def rand_taps(seed, stem, stages, embedding, classes, batch, requires_grad=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        t = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * scale
        return t.requires_grad_(requires_grad)

    pres = tuple(r(*s) for s in stages)
    posts = tuple(F.relu(p).detach().requires_grad_(requires_grad) for p in pres)  # leaves too
    return FeatureTaps(r(*stem).abs().detach().requires_grad_(requires_grad), pres, posts, r(embedding), r(classes))


def shapes_of(taps: FeatureTaps) -> TapShapes:
    return TapShapes(
        tuple(taps.stem.shape[1:]),
        tuple(tuple(t.shape[1:]) for t in taps.stages),
        int(taps.embedding.shape[1]),
        int(taps.logits.shape[1]),
    )


def tensors(taps: FeatureTaps):
    return [taps.stem, *taps.stages_pre, *taps.stages, taps.embedding, taps.logits]


def L(t):
    return t.detach().double().tolist()


def make_loss(name, s_shapes, t_shapes, **settings):
    return LOSSES[name](s_shapes, t_shapes, **settings).double()


def frozen_teacher(seed=1, requires_grad=False, widths=(16, 32, 64)):
    torch.manual_seed(seed)
    teacher = CifarResNet(8, 10, widths).double().eval()
    for p in teacher.parameters():
        p.requires_grad_(requires_grad)
    return teacher


def student_net(seed=0, widths=(16, 32, 64), train=True):
    torch.manual_seed(seed)
    return CifarResNet(8, 10, widths).double().train(train)


def image_batch(seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *IMAGE, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


def mean(values):
    values = list(values)
    return sum(values) / len(values)


# --------------------------------------------------------------------------- class attributes


def test_registered_with_flags_and_defaults():
    for name in MINE:
        assert name in LOSSES and LOSSES[name].name == name and LOSSES[name].paper
    assert {n for n in MINE if LOSSES[n].two_stage} == {"fsp", "ab"}
    lambdas = {"rkd": 1.0, "irg": 1.0, "fsp": 1.0, "ab": 10.0, "sobolev": 20.0, "lwm": 0.4}
    assert {n: LOSSES[n].defaults["lambda_kd"] for n in MINE} == lambdas
    assert LOSSES["rkd"].defaults == {"lambda_kd": 1.0, "w_dist": 25.0, "w_angle": 50.0}
    assert LOSSES["irg"].defaults == {"lambda_kd": 1.0, "w_irg_vert": 0.1, "w_irg_edge": 5.0, "w_irg_tran": 5.0}
    assert LOSSES["ab"].defaults["m"] == 2.0
    assert LOSSES["rkd"].teacher_taps == {"embedding"}
    assert LOSSES["ab"].teacher_taps == {"stages_pre"}
    assert LOSSES["sobolev"].teacher_taps == {"logits"}
    assert LOSSES["lwm"].teacher_taps == {"stages", "logits"}
    assert LOSSES["irg"].teacher_taps == {"stages", "embedding", "logits"}
    assert LOSSES["fsp"].teacher_taps == {"stem", "stages"}
    for name in MINE:
        cls = LOSSES[name]
        assert cls.teacher_taps <= {"logits", "embedding", "stages", "stages_pre", "stem"}
        assert cls.input_grad == cls.teacher_grad == (name in ("sobolev", "lwm"))


@pytest.mark.parametrize("name", ["irg", "sobolev", "lwm"])
def test_class_counts_must_agree(name):
    other = TapShapes(RESNET8_SHAPES.stem, RESNET8_SHAPES.stages, 64, 100)
    with pytest.raises(KdpipeError):
        LOSSES[name](RESNET8_SHAPES, other)


def test_settings_override_defaults():
    loss = LOSSES["rkd"](RESNET8_SHAPES, RESNET8_SHAPES, w_angle=0.0, w_dist=None)
    assert loss.settings == {"lambda_kd": 1.0, "w_dist": 25.0, "w_angle": 0.0}


# --------------------------------------------------------------------------- RKD


def ref_rkd(es, et, w_dist, w_angle):
    def dist(e):
        B = len(e)
        d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j]))) for j in range(B)] for i in range(B)]
        mu = sum(d[i][j] for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
        return [[d[i][j] / mu for j in range(B)] for i in range(B)]

    def angle(e, i, j, k):
        if i == j or k == j:
            return 0.0
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        nu = math.sqrt(sum(a * a for a in u))
        nv = math.sqrt(sum(a * a for a in v))
        return sum(a * b for a, b in zip(u, v)) / (nu * nv)

    B = len(es)
    ds, dt = dist(es), dist(et)
    loss_d = sum(huber(ds[i][j], dt[i][j]) for i in range(B) for j in range(B)) / B**2
    loss_a = 0.0
    for i in range(B):
        for j in range(B):
            for k in range(B):
                loss_a += huber(angle(es, i, j, k), angle(et, i, j, k))
    loss_a /= B**3
    return w_dist * loss_d + w_angle * loss_a


@pytest.mark.parametrize("w_dist, w_angle", [(25.0, 50.0), (1.0, 0.0), (0.0, 3.0)])
def test_rkd_golden(w_dist, w_angle):
    s = rand_taps(0, (2, 2, 2), ((2, 2, 2),) * 3, 6, 4, 5)
    t = rand_taps(1, (2, 2, 2), ((2, 2, 2),) * 3, 3, 4, 5)  # embedding widths differ
    s.embedding = s.embedding.clone()
    s.embedding.data[0] *= 4.0  # an outlier: some normalised distances differ by more than 1 (Huber's linear part)
    loss = make_loss("rkd", shapes_of(s), shapes_of(t), w_dist=w_dist, w_angle=w_angle)
    value = loss(s, t, DistillBatch(torch.zeros(5), torch.zeros(5)))
    assert value.dim() == 0
    assert value.item() == pytest.approx(ref_rkd(L(s.embedding), L(t.embedding), w_dist, w_angle), rel=1e-9, abs=1e-12)


def test_rkd_huber_linear_branch_is_exercised():
    s = rand_taps(0, (2, 2, 2), ((2, 2, 2),) * 3, 6, 4, 5)
    e = L(s.embedding)
    e[0] = [4 * v for v in e[0]]
    t = L(rand_taps(1, (2, 2, 2), ((2, 2, 2),) * 3, 3, 4, 5).embedding)
    from kdpipe.losses.rkd import distance_potential

    ds = distance_potential(torch.tensor(e, dtype=torch.float64))
    dt = distance_potential(torch.tensor(t, dtype=torch.float64))
    assert (ds - dt).abs().max() > 1.0


def test_rkd_zero_and_scale_invariance():
    s = rand_taps(3, (2, 2, 2), ((2, 2, 2),) * 3, 7, 4, 4)
    t = rand_taps(4, (2, 2, 2), ((2, 2, 2),) * 3, 5, 4, 4)
    loss = make_loss("rkd", shapes_of(s), shapes_of(t))
    batch = DistillBatch(torch.zeros(4), torch.zeros(4))
    base = loss(s, t, batch).item()
    assert base > 0
    assert loss(s, s, batch).item() == pytest.approx(0.0, abs=1e-12)
    s_scaled = copy.copy(s)
    s_scaled.embedding = s.embedding * 3.7
    t_scaled = copy.copy(t)
    t_scaled.embedding = t.embedding * 0.21
    assert loss(s_scaled, t, batch).item() == pytest.approx(base, rel=1e-9)
    assert loss(s, t_scaled, batch).item() == pytest.approx(base, rel=1e-9)
    # the same relations at another scale give zero
    assert loss(s_scaled, s, batch).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_duplicate_embeddings_have_finite_gradients():
    e = torch.randn(4, 5, dtype=torch.float64)
    e[1] = e[0]
    e.requires_grad_(True)
    taps = rand_taps(0, (2, 2, 2), ((2, 2, 2),) * 3, 5, 4, 4)
    s = copy.copy(taps)
    s.embedding = e
    t = rand_taps(1, (2, 2, 2), ((2, 2, 2),) * 3, 5, 4, 4)
    loss = make_loss("rkd", shapes_of(s), shapes_of(t))(s, t, DistillBatch(torch.zeros(4), torch.zeros(4)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


# --------------------------------------------------------------------------- IRG


def ref_sqdist_matrix(rows):
    B = len(rows)
    d = [[sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for j in range(B)] for i in range(B)]
    top = max(max(r) for r in d)
    return [[v / top if top > 0 else 0.0 for v in r] for r in d]


def ref_flat(t):
    return [torch.as_tensor(row, dtype=torch.float64).flatten().tolist() for row in L(t)]


def ref_tran(stage2, stage3):
    """Loops: 2x2 (or kxk) block means of stage 2; channel bins of stage 3."""
    s2, s3 = L(stage2), L(stage3)
    B, C2, H2, W2 = stage2.shape
    _, C3, H3, W3 = stage3.shape
    kh, kw = H2 // H3, W2 // W3
    v = []
    for b in range(B):
        total = 0.0
        for c in range(C2):
            lo = (c * C3) // C2
            hi = -((-(c + 1) * C3) // C2)  # ceil
            for yy in range(H3):
                for xx in range(W3):
                    pooled = sum(s2[b][c][yy * kh + i][xx * kw + j] for i in range(kh) for j in range(kw)) / (kh * kw)
                    reduced = sum(s3[b][k][yy][xx] for k in range(lo, hi)) / (hi - lo)
                    total += (pooled - reduced) ** 2
        v.append(total)
    top = max(v)
    return [a / top for a in v]


def ref_mse(a, b):
    fa = torch.as_tensor(a, dtype=torch.float64).flatten().tolist()
    fb = torch.as_tensor(b, dtype=torch.float64).flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(fa, fb)) / len(fa)


def ref_irg(s, t, w):
    vertex = ref_mse(L(s.logits), L(t.logits))
    edge = mean(
        ref_mse(ref_sqdist_matrix(ref_flat(a)), ref_sqdist_matrix(ref_flat(b)))
        for a, b in [(s.stages[1], t.stages[1]), (s.stages[2], t.stages[2]), (s.embedding, t.embedding)]
    )
    tran = ref_mse(ref_tran(s.stages[1], s.stages[2]), ref_tran(t.stages[1], t.stages[2]))
    return w[0] * vertex + w[1] * edge + w[2] * tran


@pytest.mark.parametrize(
    "s_stages, t_stages",
    [
        (((2, 4, 4), (4, 4, 4), (8, 2, 2)), ((2, 4, 4), (6, 4, 4), (12, 2, 2))),  # divisible channel groups
        (((2, 4, 4), (3, 4, 4), (8, 2, 2)), ((2, 4, 4), (5, 4, 4), (7, 2, 2))),  # not divisible: channel pooling
    ],
)
def test_irg_golden(s_stages, t_stages):
    s = rand_taps(5, (2, 4, 4), s_stages, 6, 5, 4)
    t = rand_taps(6, (2, 4, 4), t_stages, 9, 5, 4)
    loss = make_loss("irg", shapes_of(s), shapes_of(t), w_irg_vert=0.3, w_irg_edge=2.0, w_irg_tran=7.0)
    value = loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4)))
    assert value.item() == pytest.approx(ref_irg(s, t, (0.3, 2.0, 7.0)), rel=1e-9, abs=1e-12)
    default = make_loss("irg", shapes_of(s), shapes_of(t))(s, t, DistillBatch(torch.zeros(4), torch.zeros(4)))
    assert default.item() == pytest.approx(ref_irg(s, t, (0.1, 5.0, 5.0)), rel=1e-9)


def test_irg_zero_and_degenerate_batches():
    s = rand_taps(7, (2, 4, 4), ((2, 4, 4), (4, 4, 4), (8, 2, 2)), 6, 5, 4)
    loss = make_loss("irg", shapes_of(s), shapes_of(s))
    batch = DistillBatch(torch.zeros(4), torch.zeros(4))
    assert loss(s, s, batch).item() == pytest.approx(0.0, abs=1e-12)
    # identical samples: every distance is zero; the max guard keeps it finite
    same = FeatureTaps(
        s.stem,
        s.stages_pre,
        tuple(x[:1].expand_as(x) for x in s.stages),
        s.embedding[:1].expand_as(s.embedding),
        s.logits,
    )
    assert torch.isfinite(loss(same, s, batch))


# --------------------------------------------------------------------------- FSP


def ref_pool(fmap, h, w):
    """One sample, (C, H, W) nested lists -> block means to (C, h, w)."""
    C, H, W = len(fmap), len(fmap[0]), len(fmap[0][0])
    kh, kw = H // h, W // w
    return [
        [
            [sum(fmap[c][y * kh + i][x * kw + j] for i in range(kh) for j in range(kw)) / (kh * kw) for x in range(w)]
            for y in range(h)
        ]
        for c in range(C)
    ]


def ref_fsp_matrix(f1, f2):
    """One sample: G[i][j] = mean over positions of f1[i] * f2[j]."""
    h = min(len(f1[0]), len(f2[0]))
    w = min(len(f1[0][0]), len(f2[0][0]))
    f1, f2 = ref_pool(f1, h, w), ref_pool(f2, h, w)
    G = []
    for i in range(len(f1)):
        row = []
        for j in range(len(f2)):
            acc = 0.0
            for y in range(h):
                for x in range(w):
                    acc += f1[i][y][x] * f2[j][y][x]
            row.append(acc / (h * w))
        G.append(row)
    return G


def ref_fsp(s, t):
    s_maps = [L(s.stem), *[L(m) for m in s.stages]]
    t_maps = [L(t.stem), *[L(m) for m in t.stages]]
    pair_losses = []
    for p in range(3):
        sq, n = 0.0, 0
        for b in range(len(s_maps[0])):
            gs = ref_fsp_matrix(s_maps[p][b], s_maps[p + 1][b])
            gt = ref_fsp_matrix(t_maps[p][b], t_maps[p + 1][b])
            for i in range(len(gs)):
                for j in range(len(gs[0])):
                    sq += (gs[i][j] - gt[i][j]) ** 2
                    n += 1
        pair_losses.append(sq / n)
    return sum(pair_losses) / 3


def test_fsp_golden():
    stages = ((3, 4, 4), (4, 2, 2), (5, 1, 1))
    s = rand_taps(8, (3, 4, 4), stages, 5, 4, 3)
    t = rand_taps(9, (3, 4, 4), stages, 5, 4, 3)
    loss = make_loss("fsp", shapes_of(s), shapes_of(t))
    assert loss.describe()["adapters"] == []
    value = loss(s, t, DistillBatch(torch.zeros(3), torch.zeros(3)))
    assert value.item() == pytest.approx(ref_fsp(s, t), rel=1e-9, abs=1e-12)
    assert loss(s, s, DistillBatch(torch.zeros(3), torch.zeros(3))).item() == 0.0


def test_fsp_spatial_adapter_pools_the_larger_map():
    # student stem/stage1 at 4x4, teacher's at 2x2; channels agree -> parameter-free pooling adapters
    s = rand_taps(10, (3, 4, 4), ((3, 4, 4), (4, 2, 2), (5, 1, 1)), 5, 4, 3)
    t = rand_taps(11, (3, 2, 2), ((3, 2, 2), (4, 2, 2), (5, 1, 1)), 5, 4, 3)
    loss = make_loss("fsp", shapes_of(s), shapes_of(t))
    adapters = loss.describe()["adapters"]
    assert {a["where"] for a in adapters} == {"stem", "stage1"}
    assert all(a["pool"] == "student" and not a["conv1x1_bn"] for a in adapters)
    pooled = copy.copy(s)
    pooled.stem = F.avg_pool2d(s.stem, 2)
    pooled.stages = (F.avg_pool2d(s.stages[0], 2), *s.stages[1:])
    value = loss(s, t, DistillBatch(torch.zeros(3), torch.zeros(3)))
    assert value.item() == pytest.approx(ref_fsp(pooled, t), rel=1e-9)


# --------------------------------------------------------------------------- AB


def ref_ab(s, t, m):
    stage_losses = []
    for sp, tp in zip(s.stages_pre, t.stages_pre):
        fs = sp.detach().flatten().tolist()
        ft = tp.detach().flatten().tolist()
        total = 0.0
        for a, b in zip(fs, ft):
            if b > 0:  # teacher neuron active: push the student above +m
                total += (a - m) ** 2 if a <= m else 0.0
            else:  # teacher inactive: push the student below -m
                total += (a + m) ** 2 if a > -m else 0.0
        stage_losses.append(total / len(fs))
    return sum(stage_losses) / 3


@pytest.mark.parametrize("m", [2.0, 0.5])
def test_ab_golden(m):
    stages = ((2, 3, 3), (3, 2, 2), (4, 1, 1))
    s = rand_taps(12, (2, 3, 3), stages, 4, 4, 4, scale=2.0)
    t = rand_taps(13, (2, 3, 3), stages, 4, 4, 4)
    loss = make_loss("ab", shapes_of(s), shapes_of(t), m=m)
    value = loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4)))
    assert value.item() == pytest.approx(ref_ab(s, t, m), rel=1e-9, abs=1e-12)
    assert value.item() > 0


def test_ab_zero_beyond_margin_with_matching_signs():
    stages = ((2, 3, 3), (3, 2, 2), (4, 1, 1))
    t = rand_taps(14, (2, 3, 3), stages, 4, 4, 4)
    m = 2.0
    s = copy.copy(t)
    # |s| >= m with the teacher's sign (teacher zeros count as inactive -> negative)
    s.stages_pre = tuple(torch.where(p > 0, m + p.abs(), -m - p.abs()) for p in t.stages_pre)
    loss = make_loss("ab", shapes_of(s), shapes_of(t), m=m)
    assert loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4))).item() == 0.0
    # exactly on the margins is still zero; one sign flip is not
    s.stages_pre = tuple(torch.where(p > 0, torch.full_like(p, m), torch.full_like(p, -m)) for p in t.stages_pre)
    assert loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4))).item() == 0.0
    flipped = s.stages_pre[0].clone()
    flipped.view(-1)[0] = -flipped.view(-1)[0]
    s.stages_pre = (flipped, *s.stages_pre[1:])
    assert loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4))).item() > 0


# --------------------------------------------------------------------------- hand-made taps: no gradient to the teacher


@pytest.mark.parametrize("name", ["rkd", "irg", "fsp", "ab"])
def test_hand_made_taps_gradient_reaches_student_only(name):
    stages = ((2, 4, 4), (4, 4, 4), (8, 2, 2))
    s = rand_taps(15, (2, 4, 4), stages, 6, 5, 4, requires_grad=True, scale=0.7)
    t = rand_taps(16, (2, 4, 4), stages, 6, 5, 4, requires_grad=True)
    loss = make_loss(name, shapes_of(s), shapes_of(t))
    value = loss(s, t, DistillBatch(torch.zeros(4), torch.zeros(4)))
    value.backward()
    assert value.item() > 0
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in tensors(s))
    for x in tensors(t):
        assert x.grad is None


# --------------------------------------------------------------------------- Sobolev


class LinearTapNet(nn.Module):
    """logits = W x + b, so d z[b, k] / dx[b] is the weight row W[k] (reshaped like x)."""

    def __init__(self, image, classes, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(math.prod(image), classes).double()

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return FeatureTaps(x, (x, x, x), (x, x, x), x.flatten(1), z)


def test_sobolev_analytic_linear_networks():
    image = (2, 2, 3)
    s_net, t_net = LinearTapNet(image, 4, 0), LinearTapNet(image, 4, 1)
    for p in t_net.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, *image, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 3, 1, 3, 2])
    shapes = TapShapes((2, 2, 3), ((2, 2, 3),) * 3, 12, 4)
    loss = make_loss("sobolev", shapes, shapes, grad_norm="none")  # the paper's raw gradients
    value = loss(s_net(x), t_net(x), DistillBatch(x, y))
    ws, wt = L(s_net.fc.weight), L(t_net.fc.weight)
    expected = sum((ws[int(k)][e] - wt[int(k)][e]) ** 2 for k in y for e in range(12)) / (5 * 12)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value.backward()
    # d loss / d W_s[k] = 2 * count(k) * (W_s[k] - W_t[k]) / numel(x)
    grad = s_net.fc.weight.grad
    for k in range(4):
        count = int((y == k).sum())
        want = [2 * count * (a - b) / 60 for a, b in zip(ws[k], wt[k])]
        assert grad[k].tolist() == pytest.approx(want, rel=1e-9, abs=1e-15)


def ref_input_grads(net, x, y):
    """Per sample, separately: d z[y_b] / dx_b, as nested lists."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xb).logits[0, int(y[b])], xb)
        out.append(g[0].flatten().tolist())
    return out


def test_sobolev_golden_resnet_per_sample():
    student = student_net(train=False)  # eval: samples are independent, so per-sample grads agree
    teacher = frozen_teacher()
    x, y = image_batch(batch=3)
    loss = make_loss("sobolev", RESNET8_SHAPES, RESNET8_SHAPES, grad_norm="none")
    value = loss(student(x), teacher(x), DistillBatch(x, y))
    gs, gt = ref_input_grads(student, x, y), ref_input_grads(teacher, x, y)
    n = sum(len(r) for r in gs)
    expected = sum((a - b) ** 2 for rs, rt in zip(gs, gt) for a, b in zip(rs, rt)) / n
    assert value.item() == pytest.approx(expected, rel=1e-8)


def test_sobolev_needs_input_grad():
    x, y = image_batch()
    student, teacher = student_net(), frozen_teacher()
    xd = x.detach()
    with pytest.raises(KdpipeError):
        make_loss("sobolev", RESNET8_SHAPES, RESNET8_SHAPES)(student(xd), teacher(xd), DistillBatch(xd, y))


# --------------------------------------------------------------------------- LwM


class TinyCamNet(nn.Module):
    """stage 2 = A = relu(conv(x)); logits = fc(spatial mean of A).

    Hence d z[b, k] / dA[b, c, h, w] = W[k, c] / (H W): Grad-CAM weights alpha_c = W[k, c] / (H W).
    """

    def __init__(self, channels, stride, seed, classes=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(2, channels, 3, stride, 1).double()
        self.fc = nn.Linear(channels, classes).double()

    def forward(self, x):
        a = F.relu(self.conv(x))
        e = a.mean((2, 3))
        return FeatureTaps(a, (a, a, a), (a, a, a), e, self.fc(e))


def ref_cam_analytic(a, w, k):
    """One sample: a (C,H,W) nested lists, w the fc weight rows; returns the H x W cam."""
    C, H, W = len(a), len(a[0]), len(a[0][0])
    return [[max(0.0, sum(w[k][c] / (H * W) * a[c][yy][xx] for c in range(C))) for xx in range(W)] for yy in range(H)]


def ref_lwm_from_cams(cams_s, cams_t):
    total, n = 0.0, 0
    for cs, ct in zip(cams_s, cams_t):
        h, w = min(len(cs), len(ct)), min(len(cs[0]), len(ct[0]))
        cs = ref_pool([cs], h, w)[0]
        ct = ref_pool([ct], h, w)[0]
        fs = [v for row in cs for v in row]
        ft = [v for row in ct for v in row]
        ns = math.sqrt(sum(v * v for v in fs)) or 1.0
        nt = math.sqrt(sum(v * v for v in ft)) or 1.0
        for a, b in zip(fs, ft):
            total += abs(a / ns - b / nt)
            n += 1
    return total / n


@pytest.mark.parametrize("s_stride, t_stride, s_ch, t_ch", [(1, 1, 3, 3), (1, 2, 3, 5), (2, 1, 4, 2)])
def test_lwm_analytic_tiny_networks(s_stride, t_stride, s_ch, t_ch):
    s_net, t_net = TinyCamNet(s_ch, s_stride, 0), TinyCamNet(t_ch, t_stride, 1)
    for p in t_net.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 2, 1, 2])
    s, t = s_net(x), t_net(x)
    loss = make_loss("lwm", shapes_of(s), shapes_of(t), cam="gradcam")  # the paper's Grad-CAM
    value = loss(s, t, DistillBatch(x, y))
    ws, wt = L(s_net.fc.weight), L(t_net.fc.weight)
    cams_s = [ref_cam_analytic(L(s.stages[1][b]), ws, int(y[b])) for b in range(4)]
    cams_t = [ref_cam_analytic(L(t.stages[1][b]), wt, int(y[b])) for b in range(4)]
    assert value.item() == pytest.approx(ref_lwm_from_cams(cams_s, cams_t), rel=1e-9, abs=1e-12)
    value.backward()
    assert s_net.fc.weight.grad.abs().sum() > 0  # through the Grad-CAM weights (create_graph)
    assert s_net.conv.weight.grad.abs().sum() > 0


def ref_gradcam_per_sample(net, x, y):
    cams = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].detach().clone().requires_grad_(True)
        taps = net(xb)
        a = taps.stages[1]
        (g,) = torch.autograd.grad(taps.logits[0, int(y[b])], a)
        al, gl = L(a[0]), L(g[0])
        C, H, W = len(al), len(al[0]), len(al[0][0])
        alpha = [sum(gl[c][i][j] for i in range(H) for j in range(W)) / (H * W) for c in range(C)]
        cams.append([[max(0.0, sum(alpha[c] * al[c][i][j] for c in range(C))) for j in range(W)] for i in range(H)])
    return cams


def test_lwm_golden_resnet_per_sample():
    student = student_net(train=False)
    teacher = frozen_teacher()
    x, y = image_batch(batch=3)
    loss = make_loss("lwm", RESNET8_SHAPES, RESNET8_SHAPES, cam="gradcam")
    value = loss(student(x), teacher(x), DistillBatch(x, y))
    expected = ref_lwm_from_cams(ref_gradcam_per_sample(student, x, y), ref_gradcam_per_sample(teacher, x, y))
    assert value.item() == pytest.approx(expected, rel=1e-8)
    assert value.item() > 0


# --------------------------------------------------------------------------- real networks: zero loss, gradient flow


@pytest.mark.parametrize("name", ["rkd", "irg", "fsp", "sobolev", "lwm"])
def test_zero_when_teacher_equals_student(name):
    student = student_net(train=False)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = image_batch()
    loss = make_loss(name, RESNET8_SHAPES, RESNET8_SHAPES)
    s_taps = student(x)
    assert loss(s_taps, teacher(x), DistillBatch(x, y)).item() == pytest.approx(0.0, abs=1e-12)
    # the very same taps object on both sides (shared graph) works too
    assert loss(s_taps, s_taps, DistillBatch(x, y)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("teacher_requires_grad", [False, True])
@pytest.mark.parametrize("name", MINE)
def test_gradients_reach_student_never_teacher(name, teacher_requires_grad):
    # teacher_requires_grad=True is stricter than training: a missing detach would fill teacher .grad
    student = student_net(train=True)
    teacher = frozen_teacher(requires_grad=teacher_requires_grad)
    x, y = image_batch()
    s_taps, t_taps = student(x), teacher(x)
    loss = make_loss(name, RESNET8_SHAPES, RESNET8_SHAPES)
    value = loss(s_taps, t_taps, DistillBatch(x, y, student=student, teacher=teacher))
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    # calling twice on the same taps works (graphs are retained where needed)
    assert loss(s_taps, t_taps, DistillBatch(x, y)).item() == pytest.approx(value.item(), rel=1e-12)
    value.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    for p in teacher.parameters():
        assert p.grad is None


@pytest.mark.parametrize("name", ["rkd", "irg", "sobolev", "lwm"])
def test_different_widths_need_no_adapter(name):
    s_model = student_net(widths=(8, 16, 32))
    teacher = frozen_teacher()
    loss = make_loss(name, NARROW_SHAPES, RESNET8_SHAPES)
    assert loss.describe()["adapters"] == []
    x, y = image_batch()
    value = loss(s_model(x), teacher(x), DistillBatch(x, y))
    value.backward()
    assert torch.isfinite(value) and any(p.grad is not None for p in s_model.parameters())


@pytest.mark.parametrize(
    "name, keys", [("fsp", {"stem", "stage1", "stage2", "stage3"}), ("ab", {"stage1", "stage2", "stage3"})]
)
def test_channel_adapters_registered_and_trained(name, keys):
    s_model = student_net(widths=(8, 16, 32))
    teacher = frozen_teacher()
    loss = make_loss(name, NARROW_SHAPES, RESNET8_SHAPES)
    described = loss.describe()
    assert {a["where"] for a in described["adapters"]} == keys
    assert all(a["conv1x1_bn"] and a["pool"] is None for a in described["adapters"])
    assert described["learned_parameters"] > 0
    x, y = image_batch()
    value = loss(s_model(x), teacher(x), DistillBatch(x, y))
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    for adapter in loss.adapters.values():
        assert adapter.conv[0].weight.grad is not None and adapter.conv[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s_model.parameters())
    for p in teacher.parameters():
        assert p.grad is None
