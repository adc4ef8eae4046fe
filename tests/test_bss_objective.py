"""BSS building blocks (kdpipe.objectives.bss): schedule, sample selection, attack, loss."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models.taps import FeatureTaps
from kdpipe.objectives.bss import (
    attack_bounds,
    attack_classes,
    boundary_attack,
    bss_kd_loss,
    bss_lambda,
    select_attack_samples,
    subset_batch_norm,
)

# ----------------------------------------------------------------------------- helpers


class Linear2D(nn.Module):
    """Teacher on 2-D inputs: logits (x0, x1, -5); the 0/1 boundary is the line x0 == x1."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, -5.0]))

    def forward(self, x):
        return types.SimpleNamespace(logits=self.fc(x))


class TinyImageNet(nn.Module):
    """Linear classifier on flattened (B, C, H, W) images, returning FeatureTaps."""

    def __init__(self, c=3, hw=2, k=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(c * hw * hw, k)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(k, c * hw * hw, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        e = x.flatten(1)
        return FeatureTaps(stem=x, stages_pre=(), stages=(), embedding=e, logits=self.fc(e))


def bn_net(seed=0):
    """A small training-mode conv net with two BatchNorm2d layers and a BatchNorm1d, on (B, 3, 8, 8) inputs; the
    norm layers' affine parameters and running statistics are random, num_batches_tracked 3."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
        nn.BatchNorm1d(10),
        nn.ReLU(),
        nn.Linear(10, 5),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_()
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(3)
    return net.train()


def loop_attack(model, x, y, target, steps, step_size, eps=1e-4, lower=None, upper=None):
    """Per-sample reference of the BSS update rule, with KD-Zoo's clamp: in every step in which some
    sample still moves, the whole batch is clamped to [lower, upper]; once none moves, nothing changes."""
    xs = [x[b : b + 1].detach().clone() for b in range(x.shape[0])]
    for _ in range(steps):
        new_xs, any_active = [], False
        for b, xb in enumerate(xs):
            yb, kb = int(y[b]), int(target[b])
            xb = xb.clone().requires_grad_(True)
            logits = model(xb).logits
            p = F.softmax(logits, dim=1)[0]
            (g,) = torch.autograd.grad(p[kb] - p[yb], xb)
            xb, p, logits = xb.detach(), p.detach(), logits.detach()
            if int(logits.argmax(dim=1)) == yb:
                any_active = True
                xb = xb + step_size * float(p[yb] - p[kb] + eps) * g / max(float(g.norm()), 1e-12)
            new_xs.append(xb)
        if not any_active:
            break
        for xb in new_xs:
            for c in range(x.shape[1]):
                if lower is not None:
                    xb[:, c] = xb[:, c].clamp_min(float(lower[c]))
                if upper is not None:
                    xb[:, c] = xb[:, c].clamp_max(float(upper[c]))
        xs = new_xs
    return torch.cat(xs)


# ----------------------------------------------------------------------------- 1. schedule


def test_bss_lambda_schedule():
    assert bss_lambda(1, 200, 2.0) == 0.0
    assert bss_lambda(10, 200, 2.0) == 0.0
    assert bss_lambda(11, 200, 2.0) == pytest.approx(2.0 * (1 - 1.25 * 10 / 200))
    assert bss_lambda(100, 200, 2.0) == pytest.approx(2.0 * (1 - 1.25 * 99 / 200))
    assert bss_lambda(200, 200, 2.0) == 0.0
    assert bss_lambda(161, 200, 2.0) == 0.0  # 1 - 1.25 * 160/200 == 0
    # 12 epochs: warm-up round(0.6) == 1
    assert bss_lambda(1, 12, 2.0) == 0.0
    assert bss_lambda(2, 12, 2.0) == pytest.approx(2.0 * (1 - 1.25 / 12))
    # explicit warm-up
    assert bss_lambda(3, 12, 2.0, warmup_epochs=3) == 0.0
    assert bss_lambda(4, 12, 2.0, warmup_epochs=3) == pytest.approx(2.0 * (1 - 1.25 * 3 / 12))
    assert bss_lambda(1, 12, 2.0, warmup_epochs=0) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- 2. selection


def loop_select(s, t, y, attack_size):
    scored = []
    for b in range(s.shape[0]):
        yb = int(y[b])
        if int(s[b].argmax()) == yb and int(t[b].argmax()) == yb:
            ps, pt = F.softmax(s[b], 0), F.softmax(t[b], 0)
            sc = sum(float(pt[c] - ps[c]) ** 2 for c in range(s.shape[1]) if c != yb)
            scored.append((sc, b))
    scored.sort(reverse=True)
    return [b for _, b in scored]


def test_select_attack_samples_matches_loop():
    g = torch.Generator().manual_seed(3)
    B, K = 12, 5
    y = torch.randint(0, K, (B,), generator=g)
    s = torch.randn(B, K, generator=g)
    t = torch.randn(B, K, generator=g)
    # make most samples correct for both, with varied margins; a few wrong for one of them
    s[torch.arange(B), y] += 3.0 * torch.rand(B, generator=g) + 4.0
    t[torch.arange(B), y] += 3.0 * torch.rand(B, generator=g) + 4.0
    s[1, y[1]] -= 10.0  # student wrong
    t[4, y[4]] -= 10.0  # teacher wrong
    s[7, y[7]] -= 10.0
    t[7, y[7]] -= 10.0  # both wrong
    ref = loop_select(s, t, y, B)
    assert len(ref) == B - 3 and {1, 4, 7}.isdisjoint(ref)

    index, valid = select_attack_samples(s, t, y, attack_size=5)
    assert index.dtype == torch.int64 and valid.dtype == torch.bool
    assert index.shape == (5,) and valid.shape == (5,)
    assert index.tolist() == ref[:5]
    assert valid.all()

    # more requested than there are candidates: candidates first, in score order, then invalid ones
    index, valid = select_attack_samples(s, t, y, attack_size=B)
    assert index.shape == (B,)
    assert index[: len(ref)].tolist() == ref
    assert valid.tolist() == [True] * len(ref) + [False] * 3
    assert sorted(index[len(ref) :].tolist()) == [1, 4, 7]

    # attack_size above the batch size is capped at B
    index, valid = select_attack_samples(s, t, y, attack_size=100)
    assert index.shape == (B,) and int(valid.sum()) == len(ref)


def test_select_attack_samples_few_candidates():
    y = torch.tensor([0, 1, 2, 0])
    s = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0]])  # correct: 0, 2
    t = torch.tensor([[2.0, 1, 0], [0, 3.0, 0], [0, 0, 5.0], [3.0, 0, 0]])  # correct: 0, 1, 2, 3
    index, valid = select_attack_samples(s, t, y, attack_size=3)
    ref = loop_select(s, t, y, 3)
    assert sorted(ref) == [0, 2]
    assert index[:2].tolist() == ref
    assert valid.tolist() == [True, True, False]
    assert int(index[2]) in (1, 3)
    # no candidate at all
    index, valid = select_attack_samples(s, t, torch.tensor([1, 0, 0, 2]), attack_size=2)
    assert index.shape == (2,) and not valid.any()


# ----------------------------------------------------------------------------- 3. attack classes


def test_attack_classes_runner_up():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(16, 10, generator=g)
    got = attack_classes(t, "runner_up")
    assert got.dtype == torch.int64
    assert torch.equal(got, t.argsort(dim=1, descending=True)[:, 1])


def kdzoo_draw(t_logits, u):
    """KD-Zoo's train_bss.py target rule, written independently: the teacher's softmax sorted in
    descending order without its first entry; the first class whose cumulative score reaches
    u * (sum of the remaining scores)."""
    out = []
    for row, ub in zip(t_logits.tolist(), u.tolist()):
        p = F.softmax(torch.tensor(row, dtype=torch.float64), 0).tolist()
        order = sorted(range(len(p)), key=lambda c: -p[c])[1:]
        rest = [p[c] for c in order]
        threshold, cum = ub * sum(rest), 0.0
        for c, pc in zip(order, rest):
            cum += pc
            if cum >= threshold:
                out.append(c)
                break
    return torch.tensor(out)


def test_attack_classes_default_is_the_teachers_softmax_draw():
    """Default = sampled: distributed as KD-Zoo's inverse-CDF draw (the runner-up it first picks is overwritten)."""
    logits = torch.tensor([[3.0, 1.5, 1.0, -0.5, 0.2, 2.0]])
    n = 20000
    got = attack_classes(logits.expand(n, -1), generator=torch.Generator().manual_seed(0))
    ref = kdzoo_draw(logits.expand(n, -1), torch.rand(n, generator=torch.Generator().manual_seed(1)))
    f_got = torch.bincount(got, minlength=6).double() / n
    f_ref = torch.bincount(ref, minlength=6).double() / n
    assert f_got[0] == 0 and f_ref[0] == 0  # never the teacher's top-1 (the true class of a base sample)
    assert (f_got - f_ref).abs().max() < 0.02
    assert f_got[1] < 0.6  # far from the runner-up's share of 1.0 under the paper's rule
    # with a fixed generator, the same draws as torch.multinomial on the renormalised softmax
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4000, 7, generator=g) * 2
    got = attack_classes(t, generator=torch.Generator().manual_seed(5))
    p = F.softmax(t.double(), 1)
    p[torch.arange(4000), t.argmax(1)] = 0
    ref = torch.multinomial(p / p.sum(1, keepdim=True), 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    assert (got == ref).double().mean() > 0.99


def test_attack_classes_draws_what_torch_multinomial_draws_without_its_host_check():
    """The exponential race is torch.multinomial's own one-sample draw: the very same classes and generator state
    (so eager BSS results are what they were), but no host-side probability check (a CUDA graph holds it)."""
    t = torch.randn(512, 10, generator=torch.Generator().manual_seed(3)) * 3
    probs = F.softmax(t.scatter(1, t.argmax(1, keepdim=True), float("-inf")), dim=1)
    g_ours, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(attack_classes(t, generator=g_ours), torch.multinomial(probs, 1, generator=g_ref).squeeze(1))
    assert torch.equal(g_ours.get_state(), g_ref.get_state())


def test_attack_classes_sampled_excludes_top1_and_matches_softmax():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 6, generator=g) * 3
    got = attack_classes(t, "sampled", generator=g)
    assert got.shape == (64,) and got.dtype == torch.int64
    assert not (got == t.argmax(dim=1)).any()

    logits = torch.tensor([2.0, 0.5, 1.0, -0.5, 0.0])
    n = 20000
    draws = attack_classes(logits.expand(n, -1), "sampled", generator=torch.Generator().manual_seed(1))
    assert not (draws == 0).any()
    freq = torch.bincount(draws, minlength=5).float() / n
    p = F.softmax(logits, 0)
    p[0] = 0
    p = p / p.sum()
    assert (freq - p).abs().max() < 0.02

    # a teacher so confident that the other classes underflow still yields a valid draw
    sure = torch.tensor([[1000.0, 0.0, 0.0]])
    assert int(attack_classes(sure, "sampled", generator=g)) in (1, 2)


def test_attack_classes_rejects_unknown():
    with pytest.raises(KdpipeError, match=r"attack_class: got 'x'; allowed: sampled, runner_up"):
        attack_classes(torch.zeros(2, 3), "x")
    with pytest.raises(KdpipeError, match=r"attack_clamp: got 'x'; allowed: normalized, image"):
        attack_bounds("x", (0.5,), (0.25,))


def test_attack_bounds():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    lo, hi = attack_bounds("normalized", mean, std)
    assert lo.tolist() == [-2.5] * 3 and hi.tolist() == [2.5] * 3  # KD-Zoo's torch.clamp(x, -2.5, 2.5)
    lo, hi = attack_bounds("image", mean, std)
    for c in range(3):
        assert lo[c].item() == pytest.approx(-mean[c] / std[c], rel=1e-6)
        assert hi[c].item() == pytest.approx((1 - mean[c]) / std[c], rel=1e-6)


# ----------------------------------------------------------------------------- 4. boundary attack


def test_boundary_attack_crosses_teacher_boundary():
    model = Linear2D()
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [3.0, -1.0]])
    y = torch.tensor([0, 0, 0, 0])
    k = torch.tensor([1, 1, 1, 1])
    assert model(x).logits.argmax(1).tolist() == [0, 1, 0, 0]  # sample 1 is already across

    # large steps: clearly across the 0/1 boundary (x0 < x1)
    adv = boundary_attack(model, x, y, k, steps=10, step_size=3.0)
    pred = model(adv).logits.argmax(1)
    assert pred[[0, 2, 3]].tolist() == [1, 1, 1]
    assert torch.equal(adv[1], x[1])  # already across: never moved
    assert not adv.requires_grad

    # moderate steps: lands on the boundary (p_0 ~= p_1), just past it
    adv = boundary_attack(model, x, y, k, steps=10, step_size=1.0)
    p = F.softmax(model(adv).logits, 1)
    assert ((p[:, 0] - p[:, 1]).abs()[[0, 2, 3]] < 1e-3).all()
    assert torch.equal(adv[1], x[1])
    # the move goes toward class 1: x0 down, x1 up
    d = adv - x
    assert (d[[0, 2, 3], 0] < 0).all() and (d[[0, 2, 3], 1] > 0).all()

    # zero steps: identity
    assert torch.equal(boundary_attack(model, x, y, k, steps=0), x)


def test_boundary_attack_stops_once_across():
    model = Linear2D()
    x = torch.tensor([[1.2, 1.0]])
    y, k = torch.tensor([0]), torch.tensor([1])
    one = boundary_attack(model, x, y, k, steps=1, step_size=3.0)
    assert int(model(one).logits.argmax()) == 1
    many = boundary_attack(model, x, y, k, steps=10, step_size=3.0)
    assert torch.equal(one, many)


def test_boundary_attack_matches_per_sample_loop():
    model = Linear2D()
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [3.0, -1.0], [0.5, 0.4]])
    y = torch.tensor([0, 0, 0, 0, 1])
    k = torch.tensor([1, 1, 2, 1, 2])
    for steps, step_size in [(10, 0.3), (4, 3.0)]:
        got = boundary_attack(model, x, y, k, steps=steps, step_size=step_size)
        ref = loop_attack(model, x, y, k, steps, step_size)
        assert torch.allclose(got, ref, atol=1e-6)


def test_boundary_attack_images_clamp_and_loop():
    model = TinyImageNet()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 2, 2, generator=g) * 0.4 - 0.2
    with torch.no_grad():
        t = model(x).logits
    y = t.argmax(1)
    k = attack_classes(t, "runner_up")
    lower = torch.tensor([-0.25, -0.3, -0.2])
    upper = torch.tensor([0.25, 0.3, 0.2])
    got = boundary_attack(model, x, y, k, steps=6, step_size=2.0, lower=lower, upper=upper)
    assert got.shape == x.shape
    assert (got >= lower.view(1, 3, 1, 1) - 1e-7).all() and (got <= upper.view(1, 3, 1, 1) + 1e-7).all()
    # the clamp is active for at least one sample
    at_bound = (got == lower.view(1, 3, 1, 1)) | (got == upper.view(1, 3, 1, 1))
    assert at_bound.any()
    ref = loop_attack(model, x, y, k, 6, 2.0, lower=lower, upper=upper)
    assert torch.allclose(got, ref, atol=1e-6)
    # without bounds the attack moves further out
    free = boundary_attack(model, x, y, k, steps=6, step_size=2.0)
    assert (free.abs().amax(dim=(1, 2, 3)) >= got.abs().amax(dim=(1, 2, 3)) - 1e-7).all()
    assert not torch.equal(free, got)


def test_boundary_attack_normalized_clamp_whole_batch():
    """KD-Zoo clamps every sample to +-2.5 after each step in which any sample moved; no step, no clamp."""
    model = Linear2D()
    lo, hi = torch.full((2,), -2.5), torch.full((2,), 2.5)
    x = torch.tensor([[2.0, 0.0], [0.0, 4.0]])  # sample 1: already across (class 1) and outside +-2.5
    y, k = torch.tensor([0, 0]), torch.tensor([1, 1])
    # independent: one step by hand for sample 0, sample 1 stays, then the whole batch is clamped
    p = F.softmax(torch.tensor([2.0, 0.0, -5.0], dtype=torch.float64), 0)
    # d(p1 - p0)/dx with dp_i/dz_j = p_i (delta_ij - p_j)
    g = torch.stack([-p[1] * p[0] - p[0] * (1 - p[0]), p[1] * (1 - p[1]) + p[0] * p[1]])
    step0 = x[0].double() + 6.0 * (p[0] - p[1] + 1e-4) * g / g.norm()
    assert -2.5 < step0[0] < 2.5 < step0[1]
    want = torch.stack([step0, x[1].double()]).clamp(-2.5, 2.5).float()
    got = boundary_attack(model, x, y, k, steps=1, step_size=6.0, lower=lo, upper=hi)
    assert torch.allclose(got, want, atol=1e-5)
    assert got[0, 1].item() == 2.5  # pushed beyond +2.5 and clamped
    assert got[1].tolist() == [0.0, 2.5]  # not attacked, but clamped with the batch
    assert torch.allclose(got, loop_attack(model, x, y, k, 1, 6.0, lower=lo, upper=hi))
    # nothing to attack: no step, so no clamp either
    alone = boundary_attack(model, x[1:], y[1:], k[1:], steps=3, lower=lo, upper=hi)
    assert torch.equal(alone, x[1:])
    # padding rows (valid False) neither move nor trigger a step
    padded = boundary_attack(model, x, y, k, steps=2, lower=lo, upper=hi, valid=torch.tensor([False, True]))
    assert torch.equal(padded, x)


# ----------------------------------------------------------------------------- 5. no host sync


def test_no_host_sync(monkeypatch):
    model = TinyImageNet()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 2, 2, generator=g)
    with torch.no_grad():
        t = model(x).logits
    s = t + 0.3 * torch.randn(t.shape, generator=g)
    y = t.argmax(1)
    lower, upper = torch.full((3,), -1.0), torch.full((3,), 1.0)

    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation")

    monkeypatch.setattr(torch.Tensor, "item", boom)
    monkeypatch.setattr(torch.Tensor, "__bool__", boom)
    monkeypatch.setattr(torch.Tensor, "tolist", boom)
    monkeypatch.setattr(torch.Tensor, "__float__", boom)
    monkeypatch.setattr(torch.Tensor, "__int__", boom)
    monkeypatch.setattr(torch.Tensor, "nonzero", boom)
    monkeypatch.setattr(torch, "nonzero", boom)

    index, valid = select_attack_samples(s, t, y, attack_size=3)
    target = attack_classes(t, "runner_up")
    adv = boundary_attack(model, x, y, target, steps=3, lower=lower, upper=upper)
    loss = bss_kd_loss(s, t, T=4.0, valid=valid.new_ones(5))
    loss2 = bss_kd_loss(s, t, T=4.0)
    net, xb = bn_net(), torch.randn(4, 3, 8, 8, generator=g)
    with subset_batch_norm(net, torch.tensor([True, False, True, False])):
        net(xb).sum().backward()
    with subset_batch_norm(net, torch.zeros(4, dtype=torch.bool)):
        net(xb)
    monkeypatch.undo()
    assert index.shape == (3,) and target.shape == (5,) and adv.shape == x.shape
    assert torch.isfinite(loss) and torch.isfinite(loss2)
    assert int(net[1].num_batches_tracked) == 4  # one forward with kept rows counted, the empty one not


# ----------------------------------------------------------------------------- 6. loss


def loop_kl(s, t, T, valid):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        if not valid[b]:
            continue
        ps, pt = F.softmax(s[b] / T, 0), F.softmax(t[b] / T, 0)
        total += sum(float(pt[c]) * math.log(float(pt[c]) / float(ps[c])) for c in range(s.shape[1]))
        n += 1
    return total / max(n, 1)


def test_bss_kd_loss_matches_loop_and_valid_mask():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(6, 5, generator=g) * 2
    t = torch.randn(6, 5, generator=g) * 2
    allv = torch.ones(6, dtype=torch.bool)
    assert float(bss_kd_loss(s, t, T=4.0)) == pytest.approx(loop_kl(s, t, 4.0, allv), rel=1e-5)
    valid = torch.tensor([True, False, True, True, False, False])
    assert float(bss_kd_loss(s, t, T=2.0, valid=valid)) == pytest.approx(loop_kl(s, t, 2.0, valid), rel=1e-5)
    # invalid samples don't matter
    s2 = s.clone()
    s2[~valid] = 100.0
    assert torch.allclose(bss_kd_loss(s2, t, 2.0, valid), bss_kd_loss(s, t, 2.0, valid))
    # none valid -> 0
    assert float(bss_kd_loss(s, t, 2.0, torch.zeros(6, dtype=torch.bool))) == 0.0
    # identical logits -> 0
    assert float(bss_kd_loss(t.clone(), t, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_bss_kd_loss_gradients():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(4, 3, generator=g).requires_grad_(True)
    t = torch.randn(4, 3, generator=g).requires_grad_(True)
    bss_kd_loss(s, t, 4.0, valid=torch.tensor([True, True, False, True])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert torch.equal(s.grad[2], torch.zeros(3))
    assert t.grad is None


# ----------------------------------------------------------------------------- 7. no parameter gradients


def test_boundary_attack_leaves_no_param_grads():
    for model, x in [(Linear2D(), torch.tensor([[2.0, 0.0], [1.0, 0.5]])), (TinyImageNet(), torch.randn(3, 3, 2, 2))]:
        with torch.no_grad():
            t = model(x).logits
        y, k = t.argmax(1), attack_classes(t)
        x_in = x.clone().requires_grad_(True)
        adv = boundary_attack(model, x_in, y, k, steps=3)
        assert all(p.grad is None for p in model.parameters())
        assert x_in.grad is None and not adv.requires_grad
        # also under no_grad (e.g. called from an evaluation loop)
        with torch.no_grad():
            adv2 = boundary_attack(model, x, y, k, steps=3)
        assert torch.allclose(adv, adv2)
        assert all(p.grad is None for p in model.parameters())


def test_boundary_attack_frozen_teacher():
    model = Linear2D().requires_grad_(False).eval()
    x = torch.tensor([[2.0, 0.0]])
    adv = boundary_attack(model, x, torch.tensor([0]), torch.tensor([1]), steps=10, step_size=3.0)
    assert int(model(adv).logits.argmax()) == 1
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- 8. batch norm over the kept rows


def batch_norms(net):
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def assert_close(got, want, rtol=1e-5, scale=None, what=""):
    """|got - want| <= rtol * scale, by default scale = max|want| (float32 rounding of differently ordered sums)."""
    scale = want.abs().max().clamp_min(1e-6) if scale is None else scale
    assert (got - want).abs().max() <= rtol * scale, (what, float((got - want).abs().max() / scale))


def test_subset_batch_norm_equals_the_kept_rows_alone():
    """A padded batch under the context: kept rows' outputs, parameter gradients of a loss on them, running
    statistics and batch counters as a forward of the kept rows alone (BatchNorm2d and BatchNorm1d)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 8, 8, generator=g) * 2 + 1
    r = torch.randn(7, 5, generator=g)
    keep = torch.tensor([True, False, True, True, False, False, True])
    padded, alone = bn_net(), bn_net()
    with subset_batch_norm(padded, keep):
        out = padded(x)
    ref = alone(x[keep])
    assert_close(out[keep], ref)
    assert torch.isfinite(out).all()
    # the loss weights the padding by 0, as bss_kd_loss's valid mask does
    ((out - r).square() * keep.float().view(-1, 1)).sum().backward()
    (ref - r[keep]).square().sum().backward()
    # relative to the largest gradient: a convolution's bias before a batch norm has a gradient of 0 up to rounding
    scale = max(float(q.grad.abs().max()) for q in alone.parameters())
    for (name, p), q in zip(padded.named_parameters(), alone.parameters()):
        assert_close(p.grad, q.grad, scale=scale, what=name)
    for (name, b), c in zip(padded.named_buffers(), alone.buffers()):
        assert_close(b.float(), c.float(), rtol=1e-6, what=name)
    assert [int(m.num_batches_tracked) for m in batch_norms(padded)] == [4, 4, 4]
    # the stats moved: the comparison has teeth
    assert not torch.allclose(padded[1].running_mean, bn_net()[1].running_mean)


def test_subset_batch_norm_after_a_plain_training_forward():
    """As in a BSS step: a plain training forward (which saves the running statistics for its backward), then a
    forward under the context, then one backward through both -- as with two plain forwards."""
    g = torch.Generator().manual_seed(5)
    x, x_adv = torch.randn(6, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    keep = torch.tensor([True, True, False, True])
    padded, alone = bn_net(), bn_net()
    clean = padded(x)
    with subset_batch_norm(padded, keep):
        adv = padded(x_adv)
    (clean.square().sum() + (adv.square() * keep.float().view(-1, 1)).sum()).backward()
    (alone(x).square().sum() + alone(x_adv[keep]).square().sum()).backward()
    scale = max(float(q.grad.abs().max()) for q in alone.parameters())
    for (name, p), q in zip(padded.named_parameters(), alone.parameters()):
        assert_close(p.grad, q.grad, scale=scale, what=name)
    for (name, b), c in zip(padded.named_buffers(), alone.buffers()):
        assert_close(b.float(), c.float(), rtol=1e-6, what=name)


def test_subset_batch_norm_cumulative_average():
    """momentum None (running statistics = the average over batches): several forwards with different kept rows
    equal the same forwards of the kept rows alone; a forward with no kept row is not counted."""
    g = torch.Generator().manual_seed(1)
    padded, alone = bn_net(), bn_net()
    for m in batch_norms(padded) + batch_norms(alone):
        m.momentum = None
    masks = [[True, True, False, True, False], [False] * 5, [False, True, True, False, True]]
    for mask in masks:
        x, keep = torch.randn(5, 3, 8, 8, generator=g), torch.tensor(mask)
        with subset_batch_norm(padded, keep):
            padded(x)
        if keep.any():
            alone(x[keep])
    for (name, b), c in zip(padded.named_buffers(), alone.buffers()):
        assert_close(b.float(), c.float(), rtol=1e-6, what=name)
    assert [int(m.num_batches_tracked) for m in batch_norms(padded)] == [5, 5, 5]


def test_subset_batch_norm_no_row_kept():
    """No kept row: running statistics and batch counters unchanged, outputs finite (also for rows far from the
    running statistics), and a loss weighting every row by 0 gives zero, not NaN, gradients."""
    net = bn_net()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 1e3
    with subset_batch_norm(net, torch.zeros(4, dtype=torch.bool)):
        out = net(x)
    assert torch.isfinite(out).all()
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    (out * 0.0).sum().backward()
    for name, p in net.named_parameters():
        assert torch.equal(p.grad, torch.zeros_like(p)), name


def test_subset_batch_norm_channels_last_and_bf16():
    """A channels_last input keeps its layout and values; a bf16 input gets float32 statistics and a bf16
    output."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 8, 8, generator=g)
    keep = torch.tensor([True, False, True, True, True, False])
    dense, last = bn_net(), bn_net()
    with subset_batch_norm(dense, keep):
        want = dense[:2](x)
    with subset_batch_norm(last, keep):
        got = last[:2](x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert_close(got, want)
    assert_close(last[1].running_var, dense[1].running_var, rtol=1e-6)

    bn = nn.BatchNorm1d(4)
    h = (torch.randn(6, 4, generator=g) * 3 + 2).to(torch.bfloat16)
    with subset_batch_norm(bn, keep):
        out = bn(h)
    assert out.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    kept = h[keep].float()  # the bf16 values, in float32
    assert_close(bn.running_mean, 0.1 * kept.mean(0), rtol=1e-6)
    assert_close(bn.running_var, 0.9 + 0.1 * kept.var(0, unbiased=True), rtol=1e-6)
    want = (kept - kept.mean(0)) / torch.sqrt(kept.var(0, unbiased=False) + bn.eps)
    assert (out[keep].float() - want).abs().max() <= 2e-2 * want.abs().max()  # bf16 rounding of the output


def test_subset_batch_norm_leaves_eval_layers_and_restores_forward():
    """Layers in eval mode normalise with their running statistics, bit for bit as without the context; every
    layer gets its own forward back after the context, after an exception and after a nested context."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 8, 8, generator=g)
    keep = torch.tensor([True, False, True, False, False])
    net = bn_net().eval()
    before = copy.deepcopy(net.state_dict())
    with subset_batch_norm(net, keep):
        got = net(x)
    assert torch.equal(got, net(x))
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all("forward" not in vars(m) for m in batch_norms(net))

    net.train()
    with pytest.raises(RuntimeError, match="boom"), subset_batch_norm(net, keep):
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in batch_norms(net))
    with subset_batch_norm(net, keep):
        outer = [vars(m)["forward"] for m in batch_norms(net)]
        with subset_batch_norm(net, ~keep):
            assert all(vars(m)["forward"] is not f for m, f in zip(batch_norms(net), outer))
        assert all(vars(m)["forward"] is f for m, f in zip(batch_norms(net), outer))
    assert all("forward" not in vars(m) for m in batch_norms(net))
    # the plain forward is back: batch statistics of every row
    plain = bn_net()
    assert torch.equal(net[:2](x), plain[:2](x))

    with pytest.raises(ValueError, match="keep has 4 rows, the batch 5"), subset_batch_norm(net, keep[:4]):
        net(x)
    with pytest.raises(ValueError, match="keep must be a"), subset_batch_norm(net, keep.float()):
        pass
