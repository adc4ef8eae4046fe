"""Fidelity of the feature modes to RepDistiller (issue 13): each difference is a named setting.

The defaults keep Knowledge-Distillation-Zoo's forms; the alternative values compute what
RepDistiller's ``train_student.py`` / ``helper/loops.py`` / ``helper/pretrain.py`` and
``distiller_zoo/*.py`` compute.  Every expected value is recomputed here from RepDistiller's
definitions on fixed random tensors, without kdpipe.losses' helpers.  Then the settings' plumbing:
options, config (per-mode values), parse-time pair check, run.json and the summary.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdpipe
from kdpipe.config import _schema
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES, DistillBatch, TapShapes
from kdpipe.models import FeatureTaps, build_model
from kdpipe.options import ENTRY_OPTIONS, MODE_SETTINGS
from kdpipe.plan import RunId
from kdpipe.summary import summary_rows
from kdpipe.workflow import kd_options, load_config

# mode -> {setting: (the default = KD-Zoo's form, RepDistiller's form)}
FORMS = {
    "at": {"stage_reduce": ("mean", "sum")},
    "vid": {"stage_reduce": ("mean", "sum"), "regressor": ("kdzoo", "plain")},
    "nst": {"stages": ("stage3", "all"), "stage_reduce": ("mean", "sum")},
    "sp": {"stages": ("all", "last"), "stage_reduce": ("mean", "sum")},
    "ab": {"reduction": ("mean", "weighted_sum"), "stage_reduce": ("mean", "sum")},
    "fsp": {"stage_reduce": ("mean", "sum")},
    "fitnet": {"regressor": ("adapter", "convreg")},
    "cc": {"correlation": ("taylor", "embed_pairs")},
}

# the same spatial size per stage in both networks (as every pair of RepDistiller's table 1), other channels
STUDENT = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (3, 2, 2), (4, 2, 2)), embedding=5, num_classes=4)
TEACHER = TapShapes(stem=(3, 4, 4), stages=((3, 4, 4), (2, 2, 2), (5, 2, 2)), embedding=3, num_classes=4)
FOUR_STAGES = TapShapes(stem=(2, 4, 4), stages=((2, 4, 4), (3, 4, 4), (4, 2, 2), (3, 2, 2)), embedding=5, num_classes=4)
B = 5


def taps(shapes: TapShapes, seed: int) -> FeatureTaps:
    """Random float64 taps; ``stages`` = ReLU(``stages_pre``), as post-ReLU stage outputs."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(B, *shape, generator=g, dtype=torch.float64)

    pre = tuple(rand(*s) for s in shapes.stages)
    return FeatureTaps(
        stem=F.relu(rand(*shapes.stem)),
        stages_pre=pre,
        stages=tuple(F.relu(p) for p in pre),
        embedding=rand(shapes.embedding),
        logits=rand(shapes.num_classes),
    )


def run(loss, s_taps, t_taps) -> float:
    return loss(s_taps, t_taps, DistillBatch(torch.zeros(B, 3, 4, 4), torch.zeros(B, dtype=torch.long))).item()


def value(mode, s_shapes, t_shapes, s_taps, t_taps, **settings):
    loss = LOSSES[mode](s_shapes, t_shapes, **settings).double()
    return run(loss, s_taps, t_taps), loss


def combine(terms, how):
    return sum(terms) if how == "sum" else sum(terms) / len(terms)


# --------------------------------------------------------------------------- references from RepDistiller's code


def ref_at(fs, ft, p=2.0):
    """distiller_zoo/AT.py: normalize(f^p mean over channels, flattened), squared difference averaged."""

    def att(f):
        a = f.pow(p).mean(1).reshape(f.shape[0], -1)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)  # F.normalize's floor

    return float((att(fs) - att(ft)).pow(2).mean())


def ref_sp(fs, ft):
    """distiller_zoo/SP.py: row-normalised Gram matrices, squared difference summed / bsz^2."""

    def gram(f):
        q = f.reshape(f.shape[0], -1)
        g = q @ q.t()
        return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)

    return float((gram(ft) - gram(fs)).pow(2).sum() / fs.shape[0] ** 2)


def ref_nst(fs, ft):
    """distiller_zoo/NST.py: channel responses L2-normalised; poly kernel (a.b)^2; the full MMD^2, means."""

    def unit(f):
        f = f.reshape(f.shape[0], f.shape[1], -1)
        return f / f.norm(dim=2, keepdim=True).clamp_min(1e-12)  # an all-zero channel stays zero

    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    s, t = unit(fs), unit(ft)
    return float(poly(t, t).mean() + poly(s, s).mean() - 2 * poly(s, t).mean())


def ref_vid(fs, ft, convs, alpha, eps=1e-6):
    """distiller_zoo/VID.py: mu from three 1x1 convolutions (weights, optional biases) with ReLUs between,
    variance softplus(alpha) + eps; 0.5 (log var + (mu - t)^2 / var) averaged."""
    x = fs
    for k, (weight, bias) in enumerate(convs):
        x = torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x)
        if bias is not None:
            x = x + bias.view(1, -1, 1, 1)
        if k < 2:
            x = x.clamp_min(0)
    var = (torch.log(1.0 + torch.exp(alpha)) + eps).view(1, -1, 1, 1)
    return (0.5 * ((x - ft) ** 2 / var + torch.log(var))).mean().item()


def ref_ab(s, t, i, n, m=1.0):
    """distiller_zoo/AB.py: criterion_alternative_l2 summed, x 2^(i-n+1), / bsz, / 1000 x 3."""
    loss = (s + m) ** 2 * ((s > -m) & (t <= 0)).double() + (s - m) ** 2 * ((s <= m) & (t > 0)).double()
    return float(loss.abs().sum() * 2 ** (i - n + 1) / s.shape[0] / 1000 * 3)


def ref_ab_mean(s, t, m):
    """KD-Zoo's kd_losses/ab.py: the same per-element loss, averaged."""
    loss = (s + m) ** 2 * ((s > -m) & (t <= 0)).double() + (s - m) ** 2 * ((s <= m) & (t > 0)).double()
    return float(loss.mean())


def ref_fsp(maps_s, maps_t):
    """distiller_zoo/FSP.py: per consecutive pair, the larger map average-pooled to the smaller, the flow
    matrix mean over positions of bot_i * top_j, then the squared difference averaged; one term per pair."""

    def pool(f, size):
        k = f.shape[2] // size
        return f.reshape(f.shape[0], f.shape[1], size, k, size, k).mean(dim=(3, 5))

    def fsp(bot, top):
        size = min(bot.shape[2], top.shape[2])
        bot, top = pool(bot, size), pool(top, size)
        return torch.einsum("bihw,bjhw->bij", bot, top) / (size * size)

    return [
        float((fsp(maps_s[i], maps_s[i + 1]) - fsp(maps_t[i], maps_t[i + 1])).pow(2).mean())
        for i in range(len(maps_s) - 1)
    ]


def ref_cc_pairs(e_s, e_t):
    """distiller_zoo/CC.py: delta = |f_s - f_t|; mean over i of sum_k delta[i,k] delta[i+1,k] (loops)."""
    d = (e_s - e_t).abs().tolist()
    rows = [sum(a * b for a, b in zip(d[i], d[i + 1])) for i in range(len(d) - 1)]
    return sum(rows) / len(rows)


def batch_norm_train(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_at_stage_reduce(how):
    """RepDistiller: loss_kd = sum(loss_group) over feat[1:-1]; KD-Zoo: (... ) / 3."""
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    got, _ = value("at", STUDENT, TEACHER, s, t, **({} if how == "mean" else {"stage_reduce": how}))
    want = combine([ref_at(a, b) for a, b in zip(s.stages, t.stages)], how)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("stages, how", [("all", "mean"), ("all", "sum"), ("last", "mean"), ("last", "sum")])
def test_sp_stages_and_reduce(stages, how):
    """RepDistiller: [feat[-2]] only, the last stage of each network -- here of a 4-stage student and a
    3-stage teacher, which only that form accepts."""
    t = taps(TEACHER, 2)
    s_shapes = FOUR_STAGES if stages == "last" else STUDENT
    s = taps(s_shapes, 1)
    got, _ = value("sp", s_shapes, TEACHER, s, t, stages=stages, stage_reduce=how)
    pairs = [(s.stages[-1], t.stages[-1])] if stages == "last" else list(zip(s.stages, t.stages))
    assert got == pytest.approx(combine([ref_sp(a, b) for a, b in pairs], how), rel=1e-12)


def test_sp_default_is_all_stages_averaged():
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    got, loss = value("sp", STUDENT, TEACHER, s, t)
    assert loss.settings["stages"] == "all" and loss.settings["stage_reduce"] == "mean"
    assert got == pytest.approx(sum(ref_sp(a, b) for a, b in zip(s.stages, t.stages)) / 3, rel=1e-12)


@pytest.mark.parametrize("stages, how", [("stage3", "mean"), ("stage3", "sum"), ("all", "mean"), ("all", "sum")])
def test_nst_stages_and_reduce(stages, how):
    """RepDistiller: NSTLoss over feat[1:-1], summed; KD-Zoo: rb3 only (the default, either reduction)."""
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    settings = {} if stages == "stage3" else {"stages": stages}
    got, _ = value("nst", STUDENT, TEACHER, s, t, stage_reduce=how, **settings)
    if stages == "stage3":
        want = ref_nst(s.stages[2], t.stages[2])
    else:
        want = combine([ref_nst(a, b) for a, b in zip(s.stages, t.stages)], how)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("regressor, how", [("bias", "mean"), ("plain", "sum"), ("plain", "mean"), ("kdzoo", "mean")])
def test_vid_regressor_and_reduce(regressor, how):
    """RepDistiller (and KD-Zoo): conv1x1 with bias=False; RepDistiller sums the stages' VIDLoss terms."""
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    torch.manual_seed(0)
    got, loss = value("vid", STUDENT, TEACHER, s, t, regressor=regressor, stage_reduce=how)
    terms = []
    for i, reg in enumerate(loss.regressors):
        convs = [(conv.weight, conv.bias) for conv in reg.mean if isinstance(conv, torch.nn.Conv2d)]
        assert all((bias is None) == (regressor != "bias") for _, bias in convs)
        if regressor == "bias":  # give the biases values, so that a dropped bias would show
            for _, bias in convs:
                torch.nn.init.uniform_(bias.data, -0.5, 0.5)
        terms.append(ref_vid(s.stages[i], t.stages[i], convs, reg.alpha))
    if regressor == "bias":
        got = run(loss, s, t)
    assert got == pytest.approx(combine(terms, how), rel=1e-10)


def test_vid_plain_regressor_has_no_bias_parameters():
    full = LOSSES["vid"](STUDENT, TEACHER, regressor="bias")
    plain = LOSSES["vid"](STUDENT, TEACHER, regressor="plain")
    kdzoo = LOSSES["vid"](STUDENT, TEACHER)
    biases = sum(t[0] for t in TEACHER.stages) + 2 * sum(t[0] for t in TEACHER.stages)  # mid = sf x C_t = C_t
    assert plain.describe()["learned_parameters"] == full.describe()["learned_parameters"] - biases
    assert kdzoo.describe()["learned_parameters"] == plain.describe()["learned_parameters"]


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("reduction", ["mean", "weighted_sum"])
def test_ab_reduction_and_stage_reduce(reduction, how):
    """RepDistiller's ABLoss(margin 1.0): stage i of n summed over elements x 2^(i-n+1) / bsz / 1000 x 3,
    the stages summed (helper/pretrain.py); KD-Zoo: element mean, stages / 3. Equal shapes: no connector."""
    s, t = taps(STUDENT, 1), taps(STUDENT, 2)
    got, _ = value("ab", STUDENT, STUDENT, s, t, m=1.0, reduction=reduction, stage_reduce=how)
    n = len(STUDENT.stages)
    if reduction == "weighted_sum":
        terms = [ref_ab(a, b, i, n) for i, (a, b) in enumerate(zip(s.stages_pre, t.stages_pre))]
    else:
        terms = [ref_ab_mean(a, b, 1.0) for a, b in zip(s.stages_pre, t.stages_pre)]
    assert got == pytest.approx(combine(terms, how), rel=1e-12)


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_fsp_stage_reduce(how):
    """RepDistiller: FSP over feat[:-1] (stem and every stage), the pairs' terms summed."""
    s, t = taps(STUDENT, 1), taps(STUDENT, 2)
    got, _ = value("fsp", STUDENT, STUDENT, s, t, stage_reduce=how)
    want = combine(ref_fsp((s.stem, *s.stages), (t.stem, *t.stages)), how)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("hint_stage", [1, 2, 3])
def test_fitnet_convreg_on_equal_sizes(hint_stage):
    """RepDistiller: ConvReg always -- on equal sizes a 1x1 conv with bias, BN (batch statistics), ReLU --
    then nn.MSELoss between the regressed student feat[hint_layer] and the teacher's."""
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    got, loss = value("fitnet", STUDENT, TEACHER, s, t, hint_stage=hint_stage, regressor="convreg")
    conv, bn, _ = loss.regressor.body
    assert conv.kernel_size == (1, 1) and conv.bias is not None and len(loss.adapters) == 0
    torch.nn.init.uniform_(bn.weight.data, 0.5, 1.5)  # non-trivial affine parameters
    torch.nn.init.uniform_(bn.bias.data, -0.5, 0.5)
    got = run(loss, s, t)
    fs, ft = s.stages[hint_stage - 1], t.stages[hint_stage - 1]
    x = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], fs) + conv.bias.view(1, -1, 1, 1)
    regressed = batch_norm_train(x, bn.weight, bn.bias).clamp_min(0)
    assert got == pytest.approx((regressed - ft).pow(2).mean().item(), rel=1e-10)


def test_fitnet_default_is_stage3_without_regressor_on_equal_shapes():
    s, t = taps(STUDENT, 1), taps(STUDENT, 2)
    got, loss = value("fitnet", STUDENT, STUDENT, s, t)
    assert (
        loss.settings["hint_stage"] == 3 and loss.regressor is None and sum(p.numel() for p in loss.parameters()) == 0
    )
    assert got == pytest.approx(float((s.stages[2] - t.stages[2]).pow(2).mean()), rel=1e-12)


@pytest.mark.parametrize(
    "s_size, t_size, kind, kernel, stride",
    [(8, 4, torch.nn.Conv2d, 3, 2), (4, 8, torch.nn.ConvTranspose2d, 4, 2), (6, 4, torch.nn.Conv2d, 3, 1)],
)
def test_fitnet_convreg_geometry(s_size, t_size, kind, kernel, stride):
    """ConvReg's three cases: twice the size (3x3 stride 2, pad 1), half (4x4 transposed, stride 2, pad 1),
    larger (kernel 1 + H_s - H_t); the output has the teacher map's shape."""
    s_shapes = TapShapes((2, 8, 8), ((2, 8, 8), (3, s_size, s_size), (4, 2, 2)), 5, 4)
    t_shapes = TapShapes((2, 8, 8), ((2, 8, 8), (5, t_size, t_size), (4, 2, 2)), 5, 4)
    loss = LOSSES["fitnet"](s_shapes, t_shapes, hint_stage=2, regressor="convreg")
    conv = loss.regressor.body[0]
    assert type(conv) is kind and conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    assert loss.regressor(torch.randn(2, 3, s_size, s_size)).shape == (2, 5, t_size, t_size)


def test_fitnet_convreg_refuses_a_smaller_student_map_in_one_line():
    s_shapes = TapShapes((2, 8, 8), ((2, 8, 8), (3, 3, 3), (4, 2, 2)), 5, 4)
    t_shapes = TapShapes((2, 8, 8), ((2, 8, 8), (5, 4, 4), (4, 2, 2)), 5, 4)
    with pytest.raises(KdpipeError) as err:
        LOSSES["fitnet"](s_shapes, t_shapes, hint_stage=2, regressor="convreg")
    assert str(err.value) == (
        "kd_mode fitnet: regressor convreg: a 3x3 student map cannot be regressed to the teacher's 4x4 "
        "(ConvReg needs the student's size twice, half, or at least the teacher's)"
    )


def test_cc_embed_pairs():
    """RepDistiller: LinearEmbed(d, 128) on both embeddings (both trained), then Correlation's adjacent-pair
    product of |e_s - e_t|; gamma and P_order play no part."""
    s, t = taps(STUDENT, 1), taps(TEACHER, 2)
    got, loss = value("cc", STUDENT, TEACHER, s, t, correlation="embed_pairs", gamma=3.0)
    assert loss.embed_student.weight.shape == (128, 5) and loss.embed_teacher.weight.shape == (128, 3)
    e_s = s.embedding @ loss.embed_student.weight.t() + loss.embed_student.bias
    e_t = t.embedding @ loss.embed_teacher.weight.t() + loss.embed_teacher.bias
    assert got == pytest.approx(ref_cc_pairs(e_s, e_t), rel=1e-10)
    # the teacher's embedding map trains with the student; the teacher's taps get no gradient
    t_emb = t.embedding.clone().requires_grad_(True)
    t2 = FeatureTaps(t.stem, t.stages_pre, t.stages, t_emb, t.logits)
    loss(s, t2, DistillBatch(torch.zeros(B, 3, 4, 4), torch.zeros(B, dtype=torch.long))).backward()
    assert loss.embed_teacher.weight.grad.abs().sum() > 0 and t_emb.grad is None


def test_cc_default_is_taylor_without_parameters():
    loss = LOSSES["cc"](STUDENT, TEACHER)
    assert loss.settings["correlation"] == "taylor" and not list(loss.parameters())


# --------------------------------------------------------------------------- stagewise: per form


def test_stagewise_follows_the_form():
    """sp pairs every stage only with stages all; nst only with stages all."""
    LOSSES["sp"](FOUR_STAGES, TEACHER, stages="last")
    LOSSES["nst"](FOUR_STAGES, TEACHER)
    for mode, settings in (("sp", {}), ("nst", {"stages": "all"})):
        with pytest.raises(KdpipeError) as err:
            LOSSES[mode](FOUR_STAGES, TEACHER, **settings)
        assert str(err.value) == (
            f"kd_mode {mode}: pairs stages one to one, but the teacher has 3 stages and the student 4"
        )


def test_parse_time_pair_check_uses_the_configured_form():
    pair = [{"teacher": "resnet8", "student": "vgg8"}]  # 3 stages and 4
    load_config({"pairs": pair, "kd": {"modes": ["sp", "nst"], "settings": {"sp": {"stages": "last"}}}})
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": pair, "kd": {"modes": ["nst"], "settings": {"nst": {"stages": "all"}}}})
    assert str(err.value) == (
        "config pairs.0 (resnet8 -> vgg8), kd.modes nst: pairs stages one to one, but the teacher has 3 stages "
        "and the student 4; drop the pair or the mode, or list nst under pairs.0.skip"
    )


# --------------------------------------------------------------------------- settings: declared once, validated


def test_forms_declared_on_the_losses_options_and_schema():
    schema = _schema()
    kd_settings = schema["properties"]["kd"]["properties"]["settings"]["additionalProperties"]["properties"]
    options = {o.name: o for o in ENTRY_OPTIONS["kd"]}
    for mode, forms in FORMS.items():
        cls = LOSSES[mode]
        for key, (default, repdistiller) in forms.items():
            assert cls.defaults[key] == default and cls.setting_choices[key][:2] == (default, repdistiller)
            assert key in MODE_SETTINGS and options[key].default is None
            assert {default, repdistiller} <= set(options[key]._choices()) <= set(kd_settings[key]["enum"])
    assert LOSSES["fitnet"].defaults["hint_stage"] == 3 and kd_settings["hint_stage"]["minimum"] == 1
    assert {o.name for o in ENTRY_OPTIONS["kd"]} >= {"init_schedule"}
    assert kd_settings["init_schedule"]["enum"] == ["steps", "constant"]
    assert kd_settings["init_optimizer"]["enum"] == ["shared", "separate", "features"]


@pytest.mark.parametrize(
    "mode, settings, message",
    [
        ("sp", {"stages": "stage3"}, "kd_mode sp: stages: got 'stage3'; allowed: one of all, last"),
        ("nst", {"stages": "last"}, "kd_mode nst: stages: got 'last'; allowed: one of stage3, all"),
        ("at", {"stage_reduce": "total"}, "kd_mode at: stage_reduce: got 'total'; allowed: one of mean, sum"),
        ("vid", {"regressor": "convreg"}, "kd_mode vid: regressor: got 'convreg'; allowed: one of kdzoo, plain, bias"),
        ("cc", {"correlation": "crd"}, "kd_mode cc: correlation: got 'crd'; allowed: one of taylor, embed_pairs"),
        (
            "ab",
            {"reduction": "sum_batch"},
            "kd_mode ab: reduction: got 'sum_batch'; allowed: one of mean, weighted_sum",
        ),
        (
            "fitnet",
            {"hint_stage": 4},
            "kd_mode fitnet: hint_stage: got 4; the teacher has 3 stages and the student 3, so it must be between 1 "
            "and 3",
        ),
        ("fitnet", {"hint_stage": 0}, "kd_mode fitnet: hint_stage: got 0; must be an integer >= 1"),
    ],
)
def test_loss_rejects_a_bad_setting_in_one_line(mode, settings, message):
    with pytest.raises(KdpipeError) as err:
        LOSSES[mode](STUDENT, STUDENT, **settings)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"sp": {"stages": "stage3"}},
            "config kd.settings.sp.stages: 'stage3' is not a form of sp; allowed: all, last",
        ),
        ({"at": {"stages": "all"}}, "config kd.settings.at.stages: not a setting of at"),
        ({"at": {"stage_reduce": "max"}}, "config kd.settings.at.stage_reduce: 'max' is not one of ['mean', 'sum']"),
        ({"fitnet": {"hint_stage": 0}}, "config kd.settings.fitnet.hint_stage: 0 is less than the minimum of 1"),
        ({"ab": {"init_schedule": "cosine"}}, "config kd.settings.ab.init_schedule: 'cosine' is not one of"),
        ({"at": {"init_schedule": "constant"}}, "config kd.settings.at.init_schedule: not a setting of at"),
    ],
)
def test_config_rejects_a_bad_setting_in_one_line(settings, message):
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": {"settings": settings}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_api_rejects_a_bad_setting_in_one_line(tmp_path):
    with pytest.raises(KdpipeError) as err:
        kdpipe.train_kd(
            t_model="t.pt", t_name="resnet8", s_name="resnet8", kd_mode="at", data_name="digits",
            save_root=str(tmp_path), stage_reduce="total",
        )  # fmt: skip
    assert str(err.value) == "stage_reduce: got 'total'; allowed: one of mean, sum"
    assert list(tmp_path.iterdir()) == []


def test_repdistiller_forms_reach_the_run_options():
    config = load_config(
        {
            "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
            "kd": {
                "modes": ["sp", "nst", "fitnet", "ab"],
                "settings": {
                    "sp": {"stages": "last", "stage_reduce": "sum"},
                    "nst": {"stages": "all", "stage_reduce": "sum"},
                    "fitnet": {"hint_stage": 2, "regressor": "convreg"},
                    "ab": {"init_schedule": "constant", "init_optimizer": "features"},
                },
            },
        }
    )
    sp = kd_options(config, "digits", "sp", "resnet14", "resnet8", 0)
    assert sp["stages"] == "last" and sp["stage_reduce"] == "sum" and "hint_stage" not in sp
    assert kd_options(config, "digits", "nst", "resnet14", "resnet8", 0)["stages"] == "all"
    fitnet = kd_options(config, "digits", "fitnet", "resnet14", "resnet8", 0)
    assert fitnet["hint_stage"] == 2 and fitnet["regressor"] == "convreg"
    ab = kd_options(config, "digits", "ab", "resnet14", "resnet8", 0)
    assert ab["init_schedule"] == "constant" and ab["init_optimizer"] == "features"


def test_settings_land_in_run_json_and_summary(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(build_model("resnet8", 10).state_dict(), teacher)  # an untrained teacher serves
    record = kdpipe.train_kd(
        t_model=str(teacher), t_name="resnet8", s_name="resnet8", kd_mode="fitnet", hint_stage=2,
        regressor="convreg", data_name="digits", epochs=1, batch_size=16, train_subset=32, cuda=0, threads=1,
        save_root=str(tmp_path), note="fitnet",
    )  # fmt: skip
    settings = {"lambda_kd": 0.1, "hint_stage": 2, "regressor": "convreg"}
    assert record["info"]["loss"]["settings"] == settings
    run = RunId("train_kd", "digits", "fitnet", "", "resnet8", "resnet8", 0, str(tmp_path / "fitnet"))
    (row,) = summary_rows([run])
    assert row["settings"] == "lambda_kd=0.1; hint_stage=2; regressor=convreg"
