"""ReviewKD (kd mode ``reviewkd``): mdistiller's defaults, the hierarchical context loss against
plain-Python loops, the review path (ABF) against an independent tensor formulation on a
student/teacher pair of other widths and sizes, the warm-up, gradients, bad settings, a tiny run."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import kdpipe
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.methods.kd import mode_settings
from kdpipe.models import FeatureTaps, build_model
from kdpipe.options import ENTRY_OPTIONS, MODE_SETTINGS, resolve

# Student and teacher of different widths and spatial sizes: stage 1 is upsampled 8 -> 16,
# stage 2 kept at 4, stage 3 downsampled 2 -> 1; the embeddings differ in width.
STUDENT = TapShapes(stem=(8, 8, 8), stages=((8, 8, 8), (16, 4, 4), (32, 2, 2)), embedding=24, num_classes=10)
TEACHER = TapShapes(stem=(8, 16, 16), stages=((6, 16, 16), (12, 4, 4), (20, 1, 1)), embedding=20, num_classes=10)
BATCH = 3


def rand_taps(shapes: TapShapes, seed: int, requires_grad: bool = False) -> FeatureTaps:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(BATCH, *shape, generator=g).requires_grad_(requires_grad)

    return FeatureTaps(
        r(*shapes.stem),
        tuple(r(*s) for s in shapes.stages),
        tuple(r(*s) for s in shapes.stages),
        r(shapes.embedding),
        r(shapes.num_classes),
    )


def batch(epoch: int = 100) -> DistillBatch:
    return DistillBatch(torch.zeros(BATCH, 3, 8, 8), torch.zeros(BATCH, dtype=torch.long), epoch=epoch)


def randomised(loss):
    """Every learned parameter (BN affine and the attention bias included) drawn at random."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return loss


# --------------------------------------------------------------------------- plain-Python references


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def pool_py(m: list, size: int) -> list:
    """Average-pool an H x W nested list to size x size (H, W multiples of size)."""
    fh, fw = len(m) // size, len(m[0]) // size
    return [
        [mean(m[i * fh + a][j * fw + b] for a in range(fh) for b in range(fw)) for j in range(size)]
        for i in range(size)
    ]


def mse_py(a: list, b: list) -> float:
    """Mean squared difference over nested lists of maps a[n][c][h][w]."""
    return mean(
        (a[n][c][i][j] - b[n][c][i][j]) ** 2
        for n in range(len(a))
        for c in range(len(a[0]))
        for i in range(len(a[0][0]))
        for j in range(len(a[0][0][0]))
    )


def hcl_py(s: list, t: list) -> float:
    """One level: MSE at full size, then pooled to 4, 2, 1 where smaller than the height, the k-th at 2^-k."""
    height = len(s[0][0])
    terms, weights = [mse_py(s, t)], [1.0]
    for size in (4, 2, 1):
        if size < height:
            ps = [[pool_py(s[n][c], size) for c in range(len(s[0]))] for n in range(len(s))]
            pt = [[pool_py(t[n][c], size) for c in range(len(t[0]))] for n in range(len(t))]
            weights.append(0.5 ** len(weights))
            terms.append(mse_py(ps, pt))
    return sum(w * x for w, x in zip(weights, terms)) / sum(weights)


# --------------------------------------------------------------------------- an independent review path


def d(t):
    return t.detach().double()


def conv1x1(x, weight, bias=None):
    out = torch.einsum("oc,bchw->bohw", d(weight)[:, :, 0, 0], x)
    return out if bias is None else out + d(bias).view(1, -1, 1, 1)


def conv3x3(x, weight):
    """3x3 convolution, zero padding 1, as a sum of nine shifted 1x1 products."""
    h, w = x.shape[2:]
    padded = torch.zeros(x.shape[0], x.shape[1], h + 2, w + 2, dtype=x.dtype)
    padded[:, :, 1:-1, 1:-1] = x
    return sum(
        torch.einsum("oc,bchw->bohw", d(weight)[:, :, a, b], padded[:, :, a : a + h, b : b + w])
        for a in range(3)
        for b in range(3)
    )


def batch_norm_train(x, bn):
    """Training-mode batch norm: the batch's per-channel mean and biased variance."""
    m = x.mean(dim=(0, 2, 3), keepdim=True)
    v = ((x - m) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - m) / torch.sqrt(v + bn.eps) * d(bn.weight).view(1, -1, 1, 1) + d(bn.bias).view(1, -1, 1, 1)


def nearest(x, size):
    """Nearest resize: output row i reads input row floor(i * H_in / H_out), columns alike."""
    rows = [math.floor(i * x.shape[2] / size[0]) for i in range(size[0])]
    cols = [math.floor(j * x.shape[3] / size[1]) for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def review_reference(loss, maps):
    """The ABF chain from the deepest level (the embedding) to the shallowest, from the loss's weights."""
    outputs, residual = [], None
    for i in reversed(range(len(maps))):
        abf = loss.abfs[i]
        x = batch_norm_train(conv1x1(maps[i], abf.conv1[0].weight), abf.conv1[1])
        if residual is not None:
            r = nearest(residual, x.shape[2:])
            att = torch.sigmoid(conv1x1(torch.cat([x, r], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
            x = x * att[:, :1] + r * att[:, 1:]
        t_size = loss.teacher_levels[i][1:]
        x = nearest(x, t_size)
        residual = x
        outputs.insert(0, batch_norm_train(conv3x3(x, abf.conv2[0].weight), abf.conv2[1]))
    return outputs


# --------------------------------------------------------------------------- the tests


def test_registered_with_mdistillers_defaults_and_options():
    cls = LOSSES["reviewkd"]
    assert cls.defaults == {
        "lambda_kd": 5.0,
        "warmup": 20,
        "warmup_start": "one",
        "max_mid_channel": 512,
        "stu_preact": False,
    }
    assert cls.setting_choices == {"warmup_start": ("one", "zero")}
    assert cls.teacher_taps == frozenset({"stages_pre", "embedding"}) and not cls.cacheable()
    options = {o.name: o for o in ENTRY_OPTIONS["kd"]}
    for key in ("warmup", "warmup_start", "max_mid_channel", "stu_preact"):
        assert key in MODE_SETTINGS and options[key].default is None
    assert options["warmup_start"]._choices() == ("one", "zero")
    opts = {"kd_mode": "reviewkd", "lambda_kd": None, "warmup": 0, "warmup_start": "zero", "cam": "gradcam"}
    assert mode_settings(opts) == {"warmup": 0, "warmup_start": "zero"}


def test_hcl_golden_against_plain_loops():
    from kdpipe.losses.reviewkd import hcl, hcl_level

    g = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 8, 8), (2, 2, 4, 4), (2, 3, 2, 2), (2, 4, 1, 1)]
    s = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    t = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    per_level = [hcl_py(a.tolist(), b.tolist()) for a, b in zip(s, t)]
    for a, b, expected in zip(s, t, per_level):
        assert hcl_level(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert hcl(s, t).item() == pytest.approx(sum(per_level), rel=1e-12)  # levels summed, not averaged
    # the weights: 8x8 -> 1 + 1/2 (4x4) + 1/4 (2x2) + 1/8 (1x1); 4x4 -> 1 + 1/2 (2x2) + 1/4; 1x1 -> MSE alone
    z8, z4 = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)
    assert hcl_level(torch.ones(1, 1, 8, 8), z8).item() == pytest.approx(1.0)  # (1 + 1/2 + 1/4 + 1/8) / 1.875
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)]).view(1, 1, 8, 8)
    assert hcl_level(checker, z8).item() == pytest.approx(1.0 / 1.875)  # every pooled map is 0
    blocks = torch.tensor([[(-1.0) ** (i // 2 + j // 2) for j in range(4)] for i in range(4)]).view(1, 1, 4, 4)
    assert hcl_level(blocks, z4).item() == pytest.approx((1.0 + 0.5 * 1.0) / 1.75)  # 2x2 keeps +-1, 1x1 is 0


def test_review_path_shapes_and_fusion_on_mismatched_pair():
    loss = randomised(LOSSES["reviewkd"](STUDENT, TEACHER)).train()
    assert loss.mid_channel == 24  # min(512, the student's embedding width)
    assert [abf.att_conv is not None for abf in loss.abfs] == [True, True, True, False]
    s, t = rand_taps(STUDENT, 0), rand_taps(TEACHER, 1)
    maps = loss.student_maps(s)
    assert all(m is a for m, a in zip(maps, s.stages))  # post-ReLU stage taps by default
    outputs = loss.review(maps)
    expected_shapes = [(BATCH, *sh) for sh in TEACHER.stages] + [(BATCH, TEACHER.embedding, 1, 1)]
    assert [tuple(o.shape) for o in outputs] == expected_shapes
    reference = review_reference(loss, [m.double() for m in maps])
    for got, want in zip(outputs, reference):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    value = loss(s, t, batch())
    targets = [*t.stages_pre, t.embedding[:, :, None, None]]
    expected = sum(hcl_py(o.tolist(), tm.double().tolist()) for o, tm in zip(reference, targets))
    assert value.item() == pytest.approx(expected, rel=1e-4)
    described = loss.describe()
    assert [lv["resize"] for lv in described["levels"]] == ["nearest", "none", "nearest", "none"]
    assert described["mid_channel"] == 24
    # the pre-ReLU setting reviews the other taps; the teacher side is its pre-ReLU taps either way
    pre = LOSSES["reviewkd"](STUDENT, TEACHER, stu_preact=True)
    assert all(m is a for m, a in zip(pre.student_maps(s), s.stages_pre))
    assert all(torch.equal(a, b) for a, b in zip(pre.teacher_maps(t), targets))


def test_max_mid_channel_caps_the_abf_width():
    loss = LOSSES["reviewkd"](STUDENT, TEACHER, max_mid_channel=5)
    assert loss.mid_channel == 5 and all(abf.conv1[0].out_channels == 5 for abf in loss.abfs)
    assert [tuple(o.shape[1:]) for o in loss.review(loss.student_maps(rand_taps(STUDENT, 0)))][0] == (6, 16, 16)


WARMUPS = [
    (20, "one", {0: 1 / 20, 1: 2 / 20, 18: 19 / 20, 19: 1.0, 50: 1.0}),  # mdistiller: epochs from 1
    (20, "zero", {0: 0.0, 1: 1 / 20, 19: 19 / 20, 20: 1.0}),  # the paper's code: epochs from 0
    (4, "one", {1: 0.5, 3: 1.0}),
    (0, "one", {0: 1.0, 7: 1.0}),  # no warm-up
    (0, "zero", {0: 1.0}),
]


def test_warmup_factor():
    from kdpipe.losses.reviewkd import warmup_factor

    for warmup, start, factors in WARMUPS:
        for epoch, factor in factors.items():
            assert warmup_factor(epoch, warmup, start) == pytest.approx(factor, abs=1e-15), (warmup, start, epoch)


@pytest.mark.parametrize("start", ["one", "zero"])
def test_warmup_scales_the_loss_by_the_batch_epoch(start):
    loss = randomised(LOSSES["reviewkd"](STUDENT, TEACHER, warmup_start=start))  # warmup 20 by default
    s, t = rand_taps(STUDENT, 0), rand_taps(TEACHER, 1)
    full = loss(s, t, batch(epoch=1000)).item()
    assert full > 0
    for epoch in (0, 9):
        n = epoch + 1 if start == "one" else epoch
        assert loss(s, t, batch(epoch=epoch)).item() == pytest.approx(n / 20 * full, rel=1e-6, abs=1e-12)


def test_gradients_reach_student_taps_and_abfs_not_teacher():
    for stu_preact in (False, True):
        loss = LOSSES["reviewkd"](STUDENT, TEACHER, stu_preact=stu_preact)
        s, t = rand_taps(STUDENT, 0, requires_grad=True), rand_taps(TEACHER, 1, requires_grad=True)
        loss(s, t, batch()).backward()
        used, unused = (s.stages_pre, s.stages) if stu_preact else (s.stages, s.stages_pre)
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (*used, s.embedding))
        assert all(x.grad is None for x in (*unused, s.stem, s.logits))
        for name, p in loss.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert all(x.grad is None for x in (t.stem, *t.stages_pre, *t.stages, t.embedding, t.logits))


def test_parameter_count_resnet32x4_to_resnet8x4():
    """Both 32x32 CIFAR nets: stages 64/128/256 channels at 32/16/8 pixels, a 256-wide embedding."""
    shapes = TapShapes((32, 32, 32), ((64, 32, 32), (128, 16, 16), (256, 8, 8)), 256, 100)
    loss = LOSSES["reviewkd"](shapes, shapes)
    mid = 256  # min(512, 256)
    channels = [64, 128, 256, 256]
    expected = 0
    for i, c in enumerate(channels):
        expected += c * mid + 2 * mid  # 1x1 conv (no bias) + BN
        expected += mid * c * 9 + 2 * c  # 3x3 conv (no bias) + BN
        expected += (2 * mid * 2 + 2) if i < 3 else 0  # attention 1x1 conv with bias, all but the deepest
    assert loss.describe()["learned_parameters"] == expected == 1_808_774


REQUIRED = dict(t_model="t.pt", t_name="resnet14", s_name="resnet8", kd_mode="reviewkd", data_name="digits")


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("warmup", -1, ">= 0"),
        ("warmup", 2.5, "an integer"),
        ("warmup_start", "two", "one of one, zero"),
        ("max_mid_channel", 0, ">= 1"),
        ("stu_preact", "maybe", "true or false"),
    ],
)
def test_bad_options_give_one_line(key, value, allowed):
    with pytest.raises(KdpipeError) as err:
        resolve("kd", {**REQUIRED, key: value})
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{key}: got {value!r}") and allowed in message


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"warmup": -2}, "kd_mode reviewkd: warmup: got -2; must be an integer >= 0"),
        ({"max_mid_channel": 0}, "kd_mode reviewkd: max_mid_channel: got 0; must be an integer >= 1"),
        ({"stu_preact": "maybe"}, "kd_mode reviewkd: stu_preact: got 'maybe' (str); must be true or false"),
        ({"warmup_start": "two"}, "kd_mode reviewkd: warmup_start: got 'two'; allowed: one of one, zero"),
    ],
)
def test_bad_settings_on_the_loss_give_one_line(settings, expected):
    with pytest.raises(KdpipeError) as err:
        LOSSES["reviewkd"](STUDENT, TEACHER, **settings)
    assert str(err.value) == expected


def test_stage_counts_must_agree():
    two = TapShapes((8, 8, 8), ((8, 8, 8), (16, 4, 4)), 16, 10)
    message = r"^kd_mode reviewkd: pairs stages one to one, but the teacher has 3 stages and the student 2$"
    with pytest.raises(KdpipeError, match=message):
        LOSSES["reviewkd"](two, TEACHER)


def test_tiny_run_distils_into_a_narrower_student(tmp_path):
    torch.manual_seed(7)
    teacher = tmp_path / "teacher.pt"
    torch.save(build_model("resnet14", 10).state_dict(), teacher)
    record = kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8w4",  # 4/8/16 channels against the teacher's 16/32/64
        kd_mode="reviewkd",
        warmup=2,
        save_root=str(tmp_path),
        note="rk",
        data_name="digits",
        epochs=2,
        batch_size=16,
        lr=0.05,
        train_subset=32,
        cuda=0,
        threads=1,
    )
    info = record["info"]["loss"]
    assert info["mode"] == "reviewkd" and record["info"]["lambda_kd"] == 5.0
    assert info["settings"]["warmup"] == 2 and info["mid_channel"] == 16
    assert [lv["student_shape"][0] for lv in info["levels"]] == [4, 8, 16, 16]
    assert [lv["teacher_shape"][0] for lv in info["levels"]] == [16, 32, 64, 64]
    run = json.loads((tmp_path / "rk" / "run.json").read_text())
    assert run["info"]["loss"]["learned_parameters"] == info["learned_parameters"] > 0
    ckpt = torch.load(tmp_path / "rk" / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("abfs.3.conv2") for k in ckpt["task"]["extra"]["loss"])
    n_student = len(list(build_model("resnet8w4", 10).parameters()))
    n_loss = 4 * 6 + 3 * 2  # per ABF: two convs and two BNs (weight, bias); attention conv (weight, bias) on 3
    assert len(ckpt["task"]["optimizers"]["student"]["param_groups"][0]["params"]) == n_student + n_loss
    rows = list(csv.DictReader(open(tmp_path / "rk" / "metrics.csv")))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows)
