"""DOT (Zhao et al. 2023) as an optimizer option of the teacher-student entries: the update against a
hand computation, delta 0, DOT off unchanged bit for bit, and a tiny train_kd run that resumes exactly."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import kdpipe
from kdpipe.dot import DOT
from kdpipe.errors import KdpipeError
from kdpipe.methods.student import StudentTask, Term, weighted_sum
from kdpipe.models import build_model

LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
TINY = dict(data_name="digits", epochs=2, batch_size=16, lr=0.05, train_subset=48, cuda=0, threads=1)
PAIR = dict(t_name="resnet8w4", s_name="resnet8w4", kd_mode="st")


# ---------------------------------------------------------------- the update, by hand


class TwoLayer(torch.nn.Module):
    """h = x W1^T; logits = h W2^T (CE only reaches W2); hint = h C^T (the distillation term only reaches C)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.randn(2, 4, generator=g, dtype=torch.float64))
        self.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def terms(self, x, y, target):
        h = x @ self.w1.T
        logits = h @ self.w2.T
        hint = F.mse_loss(h @ self.c.T, target)
        return logits, [Term("ce", 1.0, F.cross_entropy(logits, y)), Term("hint", 0.5, hint)]


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g),
         torch.randn(6, 2, generator=g, dtype=torch.float64))
        for _ in range(n)
    ]  # fmt: skip


def dot_steps(model, delta, single="base", n=4, wd=WD):
    """DOT through the task base's two backward passes (StudentTask.optimize_dot)."""
    opt = DOT(model.parameters(), lr=LR, momentum=MOMENTUM, delta=delta, weight_decay=wd, single=single)
    task = SimpleNamespace(optimizers={"student": opt})
    for x, y, target in batches(n):
        logits, terms = model.terms(x, y, target)
        StudentTask.optimize_dot(task, terms, "student", "student", logits, y)
    return opt


def hand_steps(delta, single="base"):
    """The same steps written out: gradients of each loss on its own (autograd.grad), then mdistiller's rule."""
    ref = TwoLayer()
    params = dict(ref.named_parameters())
    m_t, m_d = MOMENTUM - delta, MOMENTUM + delta
    m_t1, m_d1 = (m_t, m_d) if single == "own" else (MOMENTUM, MOMENTUM)
    v_t, v_d = {}, {}
    for x, y, target in batches():
        _, (ce, hint) = ref.terms(x, y, target)
        names, tensors = list(params), list(params.values())
        g_t = dict(zip(names, torch.autograd.grad(ce.value, tensors, retain_graph=True, allow_unused=True)))
        g_d = dict(zip(names, torch.autograd.grad(0.5 * hint.value, tensors, allow_unused=True)))
        with torch.no_grad():
            for name, p in params.items():
                gt, gd = g_t[name], g_d[name]
                step = torch.zeros_like(p)
                if gt is not None:  # weight decay on the task buffer
                    term = gt + WD * p
                    v_t[name] = (
                        term.clone() if name not in v_t else (m_t if gd is not None else m_t1) * v_t[name] + term
                    )
                    step += v_t[name]
                if gd is not None:
                    if name not in v_d:
                        v_d[name] = gd.clone()  # the first distillation buffer: no weight decay (mdistiller)
                    elif gt is not None:
                        v_d[name] = m_d * v_d[name] + gd
                    else:
                        v_d[name] = m_d1 * v_d[name] + gd + WD * p
                    step += v_d[name]
                p -= LR * step
    return ref, v_t, v_d


@pytest.mark.parametrize("single", ["base", "own"])
def test_update_matches_the_hand_computation(single):
    model = TwoLayer()
    opt = dot_steps(model, 0.075, single)
    ref, v_t, v_d = hand_steps(0.075, single)
    assert set(v_t) == {"w1", "w2"} and set(v_d) == {"w1", "c"}  # w2: CE only, c: distillation only
    for name, p in model.named_parameters():
        assert torch.allclose(p, dict(ref.named_parameters())[name], rtol=0, atol=1e-13), name
        state = opt.state[p]
        assert set(state) == {k for k, v in (("task_buffer", v_t), ("distill_buffer", v_d)) if name in v}
        for key, ref_buf in (("task_buffer", v_t), ("distill_buffer", v_d)):
            if name in ref_buf:
                assert torch.allclose(state[key], ref_buf[name], rtol=0, atol=1e-13), (name, key)
    assert torch.equal(model.unused, torch.ones(3, dtype=torch.float64))  # no gradient: no step, no decay


def test_single_loss_parameters_differ_between_base_and_own():
    base, own = TwoLayer(), TwoLayer()
    dot_steps(base, 0.075, "base", n=2), dot_steps(own, 0.075, "own", n=2)
    assert torch.equal(base.w1, own.w1)  # reached by both losses: the same rule (and, after 2 steps, the same grads)
    assert not torch.allclose(base.w2, own.w2) and not torch.allclose(base.c, own.c)


def sgd_steps(model, nesterov, n=4, wd=WD):
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=wd, nesterov=nesterov)
    for x, y, target in batches(n):
        sgd.zero_grad(set_to_none=True)
        weighted_sum(model.terms(x, y, target)[1]).backward()
        sgd.step()


def close(a, b):
    return all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(a.parameters(), b.parameters()))


def test_delta_zero_is_heavy_ball_sgd_but_for_the_first_decay_of_distillation_only_weights():
    """Delta 0 is SGD with plain momentum in exact arithmetic (not bit for bit: two gradients, two in-place
    updates), except mdistiller's first distillation step leaves weight decay out where there is no task
    gradient (c).  kdpipe's SGD without DOT is Nesterov's, so DOT differs from it even at delta 0."""
    dot, heavy_ball, nesterov = TwoLayer(), TwoLayer(), TwoLayer()
    dot_steps(dot, 0.0, wd=0.0), sgd_steps(heavy_ball, False, wd=0.0), sgd_steps(nesterov, True, wd=0.0)
    assert close(dot, heavy_ball) and not close(dot, nesterov)
    dot, heavy_ball = TwoLayer(), TwoLayer()
    c0 = dot.c.detach().clone()
    dot_steps(dot, 0.0, n=1), sgd_steps(heavy_ball, False, n=1)
    assert torch.allclose(dot.w1, heavy_ball.w1, rtol=0, atol=1e-12)
    assert torch.allclose(dot.w2, heavy_ball.w2, rtol=0, atol=1e-12)
    assert torch.allclose(dot.c - heavy_ball.c, LR * WD * c0, rtol=0, atol=1e-12)


def test_state_dict_resumes_exactly():
    model, twin = TwoLayer(), TwoLayer()
    opt = DOT(model.parameters(), lr=LR, momentum=MOMENTUM, delta=0.075, weight_decay=WD)
    data = batches(6)

    def run(m, o, part):
        task = SimpleNamespace(optimizers={"s": o})
        for x, y, target in part:
            logits, terms = m.terms(x, y, target)
            StudentTask.optimize_dot(task, terms, "s", "s", logits, y)

    run(model, opt, data[:3])
    twin.load_state_dict(model.state_dict())
    resumed = DOT(twin.parameters(), lr=1.0, momentum=0.5, delta=0.0)  # hyperparameters come from the state
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy, as a checkpoint file is
    assert resumed.param_groups[0]["delta"] == 0.075
    run(model, opt, data[3:])
    run(twin, resumed, data[3:])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.manual_seed(3)
    torch.save(build_model("resnet8w4", 10).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory, teacher):
    """A tiny train_kd run without DOT: (its record, its run directory)."""
    root = tmp_path_factory.mktemp("sgd")
    return kdpipe.train_kd(t_model=str(teacher), **PAIR, **TINY, save_root=str(root), note="sgd"), root / "sgd"


def test_dot_off_is_todays_sgd_bit_for_bit(tmp_path, teacher, sgd_run, monkeypatch):
    """Without dot_delta: the same optimizer and the same single backward pass as before DOT existed."""
    from kdpipe.methods import kd as kd_module

    record, run = sgd_run

    def sgd_before(params, opts):
        nesterov = opts["momentum"] > 0
        return torch.optim.SGD(
            params, lr=opts["lr"], momentum=opts["momentum"], nesterov=nesterov, weight_decay=opts["weight_decay"]
        )

    def train_step_before(self, x, y, index, view_ids, epoch):
        logits, terms = self.terms(x, y, index, view_ids, epoch)
        return self.optimize(weighted_sum(terms), self.step_optimizer(epoch), "student", logits, y)

    with monkeypatch.context() as m:
        m.setattr(kd_module, "make_optimizer", sgd_before)
        m.setattr(StudentTask, "train_step", train_step_before)
        kdpipe.train_kd(t_model=str(teacher), **PAIR, **TINY, save_root=str(tmp_path), note="before")
    a, b = (torch.load(r / "model.pt", weights_only=True) for r in (run, tmp_path / "before"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert record["info"]["optimizer"] == "sgd" and record["roles"]["student"]["variant"] == ""
    assert "dot_delta" not in record["info"] and record["fingerprint"]["dot_delta"] is None


def test_train_kd_with_dot_records_it_and_resumes_exactly(tmp_path, teacher, sgd_run, monkeypatch):
    from kdpipe.methods.kd import DistillTask

    args = dict(t_model=str(teacher), **PAIR, **TINY, save_root=str(tmp_path), dot_delta=0.075)
    record = kdpipe.train_kd(note="straight", **args)
    info = record["info"]
    assert info["optimizer"] == "dot" and info["dot_delta"] == 0.075 and info["dot_single"] == "base"
    assert info["momentum_task"] == pytest.approx(0.825) and info["momentum_distill"] == pytest.approx(0.975)
    assert record["roles"]["student"]["variant"] == "+dot" and record["config"]["dot_delta"] == 0.075
    saved = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert saved["info"]["optimizer"] == "dot"

    original = DistillTask.on_epoch_start

    def stop(self, epoch):
        if epoch == 1:
            raise RuntimeError("interrupted")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(DistillTask, "on_epoch_start", stop)
        with pytest.raises(RuntimeError, match="interrupted"):
            kdpipe.train_kd(note="resumed", **args)
    assert kdpipe.train_kd(note="resumed", **args)["resumed_at_epochs"] == [1]
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["task"] for n in ("straight", "resumed"))
    assert all(torch.equal(v, b["roles"]["student"][k]) for k, v in a["roles"]["student"].items())
    sa, sb = a["optimizers"]["student"]["state"], b["optimizers"]["student"]["state"]
    assert sa and set(sa) == set(sb)
    for i in sa:
        assert set(sa[i]) == {"task_buffer", "distill_buffer"}  # st: every student weight gets both gradients
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])
    w_dot, w_sgd = (torch.load(r / "model.pt", weights_only=True) for r in (tmp_path / "straight", sgd_run[1]))
    assert not torch.equal(w_dot["fc.weight"], w_sgd["fc.weight"])  # DOT changed the training


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(dot_delta=0.1), r"dot_delta: got 0\.1; with momentum 0\.9 it must be"),
        (dict(dot_delta=0.05, momentum=0.0), r"dot_delta: got 0\.05; with momentum 0 it must be"),
        (dict(dot_delta=-0.1), r"dot_delta: got -0\.1; must be a number >= 0"),
        (dict(dot_single="own"), r"dot_single: got 'own', but DOT is off"),
        (dict(dot_delta=0.05, dot_single="paper"), r"dot_single: got 'paper'; allowed: one of base, own"),
    ],
)
def test_bad_dot_settings_are_refused_before_the_run_dir(tmp_path, teacher, bad, match):
    with pytest.raises(KdpipeError, match=match):
        kdpipe.train_kd(t_model=str(teacher), **PAIR, **TINY, save_root=str(tmp_path), note="bad", **bad)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(KdpipeError, match="unknown option 'dot_delta'"):
        kdpipe.train_base(net_name="resnet8w4", **TINY, dot_delta=0.075)
