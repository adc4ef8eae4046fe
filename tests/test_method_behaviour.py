"""Behaviour, not labels: what born-again generations, ``st_weight``, ``crd+st`` and DML cohorts actually do.

Each test goes through the public entry point (``kdpipe.train_*``: option handling, seeding, task
construction as a real run does them) and then checks numbers computed independently here with plain
torch: initial weights, per-step gradients and losses, trained weights.  ``built_task`` stops an entry
point right before its training loop and hands back the task it built; ``one_step`` runs one training
batch on it with the optimizer's update switched off, so the gradients the task produced can be read.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import kdpipe
import kdpipe.runner
from kdpipe.data import Normalizer
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES
from kdpipe.models import build_model
from kdpipe.summary import _settings

TINY = dict(data_name="digits", epochs=1, batch_size=16, lr=0.05, train_subset=48, cuda=0, threads=1)
BATCH = 8


class _Stopped(Exception):
    pass


def built_task(train_fn, save_root, note, **kwargs):
    """The task ``train_fn(**kwargs)`` builds, stopped before its first epoch (nothing trained)."""
    built = {}

    def stop(task, ctx, fingerprint, epochs=None):
        built["task"] = task
        raise _Stopped

    with pytest.MonkeyPatch.context() as m:
        m.setattr(kdpipe.runner, "fit", stop)
        with pytest.raises(_Stopped):
            train_fn(save_root=str(save_root), note=note, **kwargs)
    return built["task"]


def run_capturing_init(train_fn, save_root, note, **kwargs):
    """Run ``train_fn`` to the end; returns (record, {role: weights when training started})."""
    initial = {}
    fit = kdpipe.runner.fit

    def capture(task, ctx, fingerprint, epochs=None):
        initial.update({role: clone(m.state_dict()) for role, m in task.roles.items()})
        return fit(task, ctx, fingerprint, epochs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(kdpipe.runner, "fit", capture)
        record = train_fn(save_root=str(save_root), note=note, **kwargs)
    return record, initial


def clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


def batch(task):
    """The first BATCH digits training images, normalised as the engine does, with labels and indices."""
    data = task.ctx.data
    x = Normalizer(data.mean, data.std, torch.device("cpu"))(data.train_x[:BATCH])
    return x, data.train_y[:BATCH], torch.arange(BATCH)


def one_step(task, epoch=0):
    """One training batch through ``task.train_step``; the update is skipped, the gradients kept."""
    for opt in task.optimizers.values():
        opt.step = lambda *args, **kwargs: None  # measure the gradient; do not apply it
    x, y, index = batch(task)
    task.train(True)
    task.on_epoch_start(epoch)
    torch.manual_seed(1234)  # modes and samplers that draw random numbers draw the same ones in every call
    results = task.train_step(x, y, index, torch.zeros(BATCH, dtype=torch.long), epoch)
    return results


def grads(module):
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def reference_soft_target(s_logits, t_logits, T):
    """Hinton's term written out: T^2 * mean over the batch of sum_k p_t,k (log p_t,k - log p_s,k)."""
    p_t = torch.softmax(t_logits.detach() / T, dim=1)
    log_p_s = torch.log_softmax(s_logits / T, dim=1)
    return T * T * (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()


def assert_close_grads(actual, expected, what, floor):
    """Every tensor of ``actual`` equals ``expected`` up to float error relative to ``floor``."""
    for name, e in expected.items():
        a = actual[name]
        assert a is not None, f"{what}: {name} got no gradient"
        err = (a - e).abs().max().item()
        assert err <= 1e-4 * e.abs().max().item() + floor, f"{what}: {name} off by {err:.3g}"


def all_equal(a, b):
    """Two {module: {parameter: gradient or None}} maps agree exactly."""
    assert a.keys() == b.keys()
    for module in a:
        assert a[module].keys() == b[module].keys()
        for name, g in a[module].items():
            other = b[module][name]
            assert (g is None) == (other is None) and (g is None or torch.equal(g, other)), f"{module}.{name}"
    return True


def random_weight_keys(name):
    """State-dict keys an initialisation draws at random (two seeds disagree): conv and linear weights."""
    torch.manual_seed(0)
    a = build_model(name, 10).state_dict()
    torch.manual_seed(1)
    b = build_model(name, 10).state_dict()
    return [k for k in a if not torch.equal(a[k], b[k])], {k: a[k] for k in a if torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    """An untrained resnet14 saved as a kdpipe model.pt: its soft targets differ from any student's."""
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.manual_seed(7)
    torch.save(build_model("resnet14", 10).state_dict(), path)
    return path


# ---------------------------------------------------------------- born-again generations


def test_born_again_generations_start_from_a_fresh_seeded_initialisation(tmp_path):
    kw = dict(s_name="resnet8", t_name="resnet8", attack_size=0, **TINY)
    # the chain as the workflow runs it: gen0 = the base model, gen g learns from gen g-1
    _, base_init = run_capturing_init(kdpipe.train_base, tmp_path, "gen0", net_name="resnet8", **TINY)
    gen0 = tmp_path / "gen0" / "model.pt"
    _, gen1_init = run_capturing_init(kdpipe.train_bss, tmp_path, "gen1", t_model=str(gen0), generation=1, **kw)
    gen1 = tmp_path / "gen1" / "model.pt"
    _, gen2_init = run_capturing_init(kdpipe.train_bss, tmp_path, "gen2", t_model=str(gen1), generation=2, **kw)
    gen2 = tmp_path / "gen2" / "model.pt"
    gen3 = built_task(kdpipe.train_bss, tmp_path, "gen3", t_model=str(gen2), generation=3, **kw)
    gen3_init = clone(gen3.roles["student"].state_dict())
    again = built_task(kdpipe.train_bss, tmp_path, "gen2-again", t_model=str(gen1), generation=2, **kw)
    other_seed = built_task(kdpipe.train_bss, tmp_path, "gen2-s1", t_model=str(gen1), generation=2, seed=1, **kw)
    gen1_init, gen2_init = gen1_init["student"], gen2_init["student"]
    teacher1 = torch.load(gen1, weights_only=True)
    random_keys, fixed = random_weight_keys("resnet8")
    assert len(random_keys) >= 8  # every conv and the classifier

    def differs_everywhere(a, b):
        return all(not torch.equal(a[k], b[k]) for k in random_keys)

    # generation 1 starts where the base model of the same seed started (and so not from its trained teacher)
    assert all(torch.equal(gen1_init[k], base_init["net"][k]) for k in base_init["net"])
    assert differs_everywhere(gen1_init, torch.load(gen0, weights_only=True))
    # generation 2: not a copy of its teacher (generation 1's trained weights) nor of generation 1's start
    assert differs_everywhere(gen2_init, teacher1)
    assert differs_everywhere(gen2_init, gen1_init)
    assert differs_everywhere(gen3_init, gen2_init)  # each generation draws its own
    # a fresh initialisation: what an initialisation fixes (batch norm at 1/0, fresh running statistics) is there
    # -- a trained or perturbed teacher would carry its learnt values
    assert all(torch.equal(gen2_init[k], v) for k, v in fixed.items())
    assert any(not torch.equal(teacher1[k], v) for k, v in fixed.items())
    # seeded by (seed, generation): the same pair gives the same weights, another seed other weights
    assert all(torch.equal(gen2_init[k], v) for k, v in again.roles["student"].state_dict().items())
    assert differs_everywhere(gen2_init, other_seed.roles["student"].state_dict())


# ---------------------------------------------------------------- st_weight, every kd mode


def kd_task(tmp_path, mode, note, **kwargs):
    return built_task(
        kdpipe.train_kd,
        tmp_path,
        note,
        t_model=str(kwargs.pop("teacher")),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode=mode,
        **TINY,
        **kwargs,
    )


def load_teacher(path):
    """The teacher as a run uses it (eval mode), loaded here from its file rather than taken from the task."""
    teacher = build_model("resnet14", 10)
    teacher.load_state_dict(torch.load(path, weights_only=True))
    return teacher.eval()


def helper_grads(task):
    """Gradients of the task's trained helpers (a mode's regressors, CRD's heads), by module."""
    return {name: grads(module) for name, module in task.extra_modules.items()}


def st_effect(plain, with_st, teacher_path, weight, T, epoch):
    """(gradient difference the st term made, the same computed independently, plain gradient) on the student."""
    for a, b in zip(plain.roles["student"].state_dict().values(), with_st.roles["student"].state_dict().values()):
        assert torch.equal(a, b)  # both runs start from the same student (same seed)
    student = copy.deepcopy(with_st.roles["student"])  # the weights the step sees
    one_step(plain, epoch)
    one_step(with_st, epoch)
    g0, g1 = grads(plain.roles["student"]), grads(with_st.roles["student"])
    x, _, _ = batch(with_st)
    student.train(True)
    with torch.no_grad():
        t_logits = load_teacher(teacher_path)(x).logits
    term = weight * reference_soft_target(student(x).logits, t_logits, T)
    names = [n for n, _ in student.named_parameters()]
    expected = dict(zip(names, torch.autograd.grad(term, list(student.parameters()))))
    return {n: g1[n] - g0[n] for n in names}, expected, g0


@pytest.mark.parametrize("mode", sorted(LOSSES))
def test_st_weight_adds_exactly_the_soft_target_gradient(tmp_path, random_teacher, mode):
    T, weight = 2.0, 0.5
    own_T = {"T": T} if "T" in LOSSES[mode].defaults else {}  # T is refused where the mode does not read it
    plain = kd_task(tmp_path, mode, "plain", teacher=random_teacher, **own_T)
    with_st = kd_task(tmp_path, mode, "st", teacher=random_teacher, T=T, st_weight=weight)
    # two-stage modes (fsp, ab): the term belongs to the CE phase, which follows the initialisation epochs
    ce_epoch = with_st.total_epochs() - TINY["epochs"]
    assert ce_epoch == (1 if LOSSES[mode].two_stage else 0)
    diff, expected, g0 = st_effect(plain, with_st, random_teacher, weight, T, ce_epoch)
    scale = max(e.abs().max().item() for e in expected.values())
    assert scale > 1e-3  # the term is not negligible, so the comparison below has teeth
    floor = 1e-5 * max(g.abs().max().item() for g in g0.values()) + 1e-6
    assert floor < 0.05 * scale
    assert_close_grads(diff, expected, mode, floor)
    # the mode's own helpers (regressors, connectors) are untouched by the soft-target term
    assert all_equal(helper_grads(with_st), helper_grads(plain))


@pytest.mark.parametrize("mode", [m for m in sorted(LOSSES) if LOSSES[m].two_stage])
def test_st_weight_stays_out_of_the_initialisation_phase(tmp_path, random_teacher, mode):
    plain = kd_task(tmp_path, mode, "plain", teacher=random_teacher)
    with_st = kd_task(tmp_path, mode, "st", teacher=random_teacher, st_weight=0.5)
    one_step(plain, 0)
    one_step(with_st, 0)
    g0, g1 = grads(plain.roles["student"]), grads(with_st.roles["student"])
    assert any(g is not None and g.abs().max() > 0 for g in g1.values())
    assert all(torch.equal(g1[n], g0[n]) for n in g0 if g0[n] is not None)


def test_st_weight_default_temperature_is_four(tmp_path, random_teacher):
    plain = kd_task(tmp_path, "at", "plain", teacher=random_teacher)
    with_st = kd_task(tmp_path, "at", "st", teacher=random_teacher, st_weight=0.5)
    diff, expected, g0 = st_effect(plain, with_st, random_teacher, 0.5, 4.0, 0)
    floor = 1e-5 * max(g.abs().max().item() for g in g0.values()) + 1e-6
    assert_close_grads(diff, expected, "at, T default", floor)


# ---------------------------------------------------------------- crd + st


CRD = dict(t_name="resnet14", s_name="resnet8", nce_n=16, feat_dim=16, **TINY)


def test_crd_plus_st_adds_exactly_the_soft_target_gradient(tmp_path, random_teacher):
    plain = built_task(kdpipe.train_crd, tmp_path, "plain", t_model=str(random_teacher), **CRD)
    with_st = built_task(kdpipe.train_crd, tmp_path, "st", t_model=str(random_teacher), st_weight=0.5, **CRD)
    for a, b in zip(
        plain.extra_modules["crd"].state_dict().values(), with_st.extra_modules["crd"].state_dict().values()
    ):
        assert torch.equal(a, b)  # same heads and memory banks to start with
    diff, expected, g0 = st_effect(plain, with_st, random_teacher, 0.5, 4.0, 0)
    scale = max(e.abs().max().item() for e in expected.values())
    floor = 1e-5 * max(g.abs().max().item() for g in g0.values()) + 1e-6
    assert scale > 1e-3 and floor < 0.05 * scale
    assert_close_grads(diff, expected, "crd+st", floor)
    # the contrastive heads see the same gradient: the st term reaches the student only
    assert all_equal(helper_grads(with_st), helper_grads(plain))


def test_crd_plus_st_trains_a_different_student(tmp_path, random_teacher):
    runs = {}
    for note, st in (("plain", 0.0), ("plain-again", 0.0), ("st", 0.5)):
        record, init = run_capturing_init(
            kdpipe.train_crd, tmp_path, note, t_model=str(random_teacher), st_weight=st, **CRD
        )
        final = torch.load(tmp_path / note / "checkpoint.pt", weights_only=True)["task"]["roles"]["student"]
        assert json.loads((tmp_path / note / "run.json").read_text()) == json.loads(json.dumps(record))
        runs[note] = (record, init["student"], final)
    (plain, init0, w0), (_, _, w0_again), (st, init1, w1) = runs["plain"], runs["plain-again"], runs["st"]
    assert all(torch.equal(init0[k], init1[k]) for k in init0)  # same start, same data order (same seed)
    assert all(torch.equal(w0[k], w0_again[k]) for k in w0)  # a run is deterministic ...
    changed = [k for k in w0 if k.endswith("weight") and not torch.equal(w0[k], w1[k])]
    assert "fc.weight" in changed and len(changed) > 5  # ... so the difference is the st term's
    # the run records (run.json, as checked above) say what was trained
    assert st["config"]["st_weight"] == 0.5 and st["info"]["st_weight"] == 0.5
    assert plain["config"]["st_weight"] == 0.0 and plain["info"]["st_weight"] == 0.0
    assert st["roles"]["student"]["variant"] == "+st" and plain["roles"]["student"]["variant"] == ""
    assert "st_weight=0.5" in _settings(st) and "st_weight" not in _settings(plain)


def test_crd_plus_st_settings_name_the_temperature(tmp_path, random_teacher):
    record = kdpipe.train_crd(
        t_model=str(random_teacher), st_weight=0.5, T=3.0, save_root=str(tmp_path), note="st", **CRD
    )
    assert "st_weight=0.5; T=3" in _settings(record)


# ---------------------------------------------------------------- DML cohorts


def test_dml_peer_loss_is_ce_plus_lambda_times_mean_kl_over_the_other_peers(tmp_path):
    lam = 0.7
    task = built_task(kdpipe.train_dml, tmp_path, "d3", peers=["resnet8"] * 3, lambda_kd=lam, **TINY)
    peers = [copy.deepcopy(m) for m in task.roles.values()]
    results = one_step(task)
    x, y, _ = batch(task)
    for m in peers:
        m.train(True)
    logits = [m(x).logits for m in peers]
    log_p = [torch.log_softmax(z, dim=1) for z in logits]
    for k, role in enumerate(task.roles):
        kls = [(log_p[j].exp().detach() * (log_p[j].detach() - log_p[k])).sum(1).mean() for j in range(3) if j != k]
        expected = F.cross_entropy(logits[k], y) + lam * (kls[0] + kls[1]) / 2
        assert torch.allclose(results[role].loss, expected, rtol=1e-5, atol=1e-6), role
        # and the peer is updated by exactly that loss's gradient (the others enter as constants)
        reference = dict(
            zip([n for n, _ in peers[k].named_parameters()], torch.autograd.grad(expected, list(peers[k].parameters())))
        )
        floor = 1e-6 * max(g.abs().max().item() for g in reference.values())
        assert_close_grads(grads(task.roles[role]), reference, role, floor)
    # the third peer matters: net1's loss differs from the same cohort without it
    kl12 = (log_p[1].exp() * (log_p[1] - log_p[0])).sum(1).mean()
    two_peer = F.cross_entropy(logits[0], y) + lam * kl12
    assert abs(results["net1"].loss.item() - two_peer.item()) > 1e-4


def test_three_peer_cohort_trains_net1_differently_from_two(tmp_path):
    runs = {}
    for note, peers in (("d2", ["resnet8"] * 2), ("d2-again", ["resnet8"] * 2), ("d3", ["resnet8"] * 3)):
        record, init = run_capturing_init(kdpipe.train_dml, tmp_path, note, peers=peers, **TINY)
        final = torch.load(tmp_path / note / "checkpoint.pt", weights_only=True)["task"]["roles"]
        runs[note] = (record, init, final)
    (_, init2, w2), (_, _, w2_again), (record3, init3, w3) = runs["d2"], runs["d2-again"], runs["d3"]
    assert set(record3["roles"]) == {"net1", "net2", "net3"} and set(w3) == {"net1", "net2", "net3"}
    for role in ("net1", "net2"):  # the first two peers start alike in both cohorts
        assert all(torch.equal(init2[role][k], init3[role][k]) for k in init2[role])
    assert not all(torch.equal(init3["net3"][k], init3["net1"][k]) for k in init3["net1"])  # a peer of its own
    assert all(torch.equal(w2["net1"][k], w2_again["net1"][k]) for k in w2["net1"])  # deterministic ...
    changed = [k for k in w2["net1"] if k.endswith("weight") and not torch.equal(w2["net1"][k], w3["net1"][k])]
    assert "fc.weight" in changed and len(changed) > 5  # ... so net1 changed because net3 entered its loss


# ---------------------------------------------------------------- ce_weight, nesterov


@pytest.mark.parametrize("mode", ["st", "at"])
def test_ce_weight_scales_exactly_the_cross_entropy_gradient(tmp_path, random_teacher, mode):
    plain = kd_task(tmp_path, mode, "plain", teacher=random_teacher)
    tenth = kd_task(tmp_path, mode, "tenth", teacher=random_teacher, ce_weight=0.1)
    student = copy.deepcopy(tenth.roles["student"])  # the weights the step sees
    one_step(plain, 0)
    one_step(tenth, 0)
    g0, g1 = grads(plain.roles["student"]), grads(tenth.roles["student"])
    x, y, _ = batch(tenth)
    student.train(True)
    ce = F.cross_entropy(student(x).logits, y)
    names = [n for n, _ in student.named_parameters()]
    expected = {n: -0.9 * g for n, g in zip(names, torch.autograd.grad(ce, list(student.parameters())))}
    floor = 1e-5 * max(g.abs().max().item() for g in g0.values()) + 1e-6
    assert_close_grads({n: g1[n] - g0[n] for n in names}, expected, mode, floor)
    assert tenth.info()["ce_weight"] == 0.1 and "ce_weight" not in plain.info()


def test_nesterov_off_is_plain_momentum_sgd(tmp_path, random_teacher):
    from kdpipe.engine import make_optimizer

    on = kd_task(tmp_path, "st", "on", teacher=random_teacher)
    off = kd_task(tmp_path, "st", "off", teacher=random_teacher, nesterov=False)
    assert on.optimizers["student"].param_groups[0]["nesterov"] is True
    assert off.optimizers["student"].param_groups[0]["nesterov"] is False
    with pytest.raises(KdpipeError, match="nesterov: true needs --momentum > 0"):
        make_optimizer(
            [torch.zeros(1, requires_grad=True)], {"lr": 0.1, "momentum": 0.0, "weight_decay": 0, "nesterov": True}
        )
