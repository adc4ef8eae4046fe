"""CRD objective (Tian, Krishnan & Isola, ICLR 2020): sampler, memory, scores, NCE and InfoNCE.

Golden values are recomputed with plain Python loops over samples and contrast entries
(``math.exp`` / ``math.log`` on floats), independently of the vectorised module.  The
sampler's defaults are checked against RepDistiller's data loader (negatives from the other
classes, without replacement unless a class's pool is smaller than nce_n; ``relax``: the
positive is a random image of the anchor's class).
"""

import copy
import math

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.objectives.crd import EPS, ContrastMemory, ContrastSampler, CRDLoss, Embed

B, S_DIM, T_DIM, FEAT, N, NCE_N = 3, 5, 6, 4, 7, 5
# class 0 has 3 images (pool of other-class images: 4 < NCE_N, drawn with replacement),
# classes 1 and 2 have 2 (pool 5 = NCE_N: without replacement)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0])


def rows(t):
    return [[float(x) for x in r] for r in t]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def normalise(a):
    n = math.sqrt(sum(x * x for x in a))
    return [x / n for x in a]


def make_loss(objective="nce", seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    args = dict(feat_dim=FEAT, nce_n=NCE_N, nce_t=0.5, nce_mom=0.5, objective=objective, labels=LABELS)
    args.update(kw)
    return CRDLoss(S_DIM, T_DIM, N, **args).to(dtype)


def make_batch(seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(B, S_DIM, generator=g, dtype=dtype)
    f_t = torch.randn(B, T_DIM, generator=g, dtype=dtype)
    index = torch.tensor([2, 0, 5])
    cidx = torch.cat([index[:, None], torch.randint(0, N, (B, NCE_N), generator=g)], dim=1)
    return f_s, f_t, index, cidx


def loop_scores(v, memory, cidx):
    """s[b][k] = v_b . memory[cidx[b, k]] as nested lists."""
    v, memory, cidx = rows(v), rows(memory), cidx.tolist()
    return [[dot(v[b], memory[j]) for j in cidx[b]] for b in range(len(v))]


def loop_nce(scores, t, z, n_data, nce_n):
    """-(sum_b [log D1 + sum_k log D0_k]) / B with P = exp(s / t) / z, Pn = 1 / n_data."""
    noise = nce_n / n_data
    total = 0.0
    for row in scores:
        p = [math.exp(x / t) / z for x in row]
        total += math.log(p[0] / (p[0] + noise + EPS))
        for pk in p[1:]:
            total += math.log(noise / (pk + noise + EPS))
    return -total / len(scores)


def loop_z(scores, t, n_data):
    flat = [math.exp(x / t) for row in scores for x in row]
    return sum(flat) / len(flat) * n_data


def loop_softmax_ce(scores, t):
    total = 0.0
    for row in scores:
        logits = [x / t for x in row]
        total += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(scores)


def embeddings(loss, f_s, f_t):
    with torch.no_grad():
        return loss.embed_s(f_s), loss.embed_t(f_t)


# 1. dense and gathered scores agree; so do whole forward passes


def test_dense_and_gathered_scores_agree():
    torch.manual_seed(0)
    mem = ContrastMemory(feat_dim=8, n_data=11, nce_n=9, nce_t=0.1, nce_mom=0.5)
    v = torch.randn(4, 8)
    cidx = ContrastSampler(11, 9, sampler="uniform")(torch.tensor([1, 3, 3, 10]))
    dense = mem.scores(v, mem.memory_t, cidx, dense=True)
    gathered = mem.scores(v, mem.memory_t, cidx, dense=False)
    auto = mem.scores(v, mem.memory_t, cidx)  # 11 <= 4 * 10: dense
    assert dense.shape == (4, 10)
    assert torch.allclose(dense, gathered, atol=1e-6)
    assert torch.allclose(auto, dense, atol=1e-6)
    want = loop_scores(v, mem.memory_t, cidx)
    assert torch.allclose(dense, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("objective", ["nce", "infonce"])
def test_forward_dense_equals_gathered(objective):
    base = make_loss(objective, dtype=torch.float32)
    f_s, f_t, index, cidx = make_batch(dtype=torch.float32)
    results = {}
    for dense in (True, False):
        loss_mod = copy.deepcopy(base)
        x = f_s.clone().requires_grad_(True)
        losses = []
        for _ in range(2):  # second call exercises the stored Z and the updated banks
            loss = loss_mod(x, f_t, index, cidx, dense=dense)
            loss.backward()  # dense scoring must survive the in-place memory update
            losses.append(loss.detach())
        results[dense] = (losses, loss_mod, x.grad.clone(), loss_mod.embed_s.linear.weight.grad.clone())
    (l1, m1, g1, w1), (l2, m2, g2, w2) = results[True], results[False]
    for a, b in zip(l1, l2):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.allclose(getattr(m1.memory, name), getattr(m2.memory, name), atol=1e-6), name
    assert torch.allclose(g1, g2, atol=1e-5)
    assert torch.allclose(w1, w2, atol=1e-5)


# 2. the nce objective = loop NCE, Z set once from the first batch


def test_nce_loss_matches_loop_and_z_is_fixed_after_first_call():
    loss_mod = make_loss("nce")
    t = loss_mod.memory.nce_t
    assert loss_mod.memory.z_s.item() == -1.0 and loss_mod.memory.z_t.item() == -1.0
    f_s, f_t, index, cidx = make_batch()

    v_s, v_t = embeddings(loss_mod, f_s, f_t)
    sc_s = loop_scores(v_s, loss_mod.memory.memory_t, cidx)
    sc_t = loop_scores(v_t, loss_mod.memory.memory_s, cidx)
    z_s, z_t = loop_z(sc_s, t, N), loop_z(sc_t, t, N)
    want = loop_nce(sc_s, t, z_s, N, NCE_N) + loop_nce(sc_t, t, z_t, N, NCE_N)

    got = loss_mod(f_s, f_t, index, cidx)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert loss_mod.memory.z_s.item() == pytest.approx(z_s, rel=1e-6)
    assert loss_mod.memory.z_t.item() == pytest.approx(z_t, rel=1e-6)

    # second batch: different features and contrast entries, same Z
    f_s2, f_t2, _, _ = make_batch(seed=7)
    index2 = torch.tensor([6, 1, 4])
    cidx2 = torch.tensor([[6, 0, 0, 3, 5, 2], [1, 6, 4, 4, 1, 0], [4, 2, 3, 5, 6, 1]])
    v_s2, v_t2 = embeddings(loss_mod, f_s2, f_t2)
    sc_s2 = loop_scores(v_s2, loss_mod.memory.memory_t, cidx2)
    sc_t2 = loop_scores(v_t2, loss_mod.memory.memory_s, cidx2)
    assert loop_z(sc_s2, t, N) != pytest.approx(z_s, rel=1e-3)  # a re-estimate would differ
    want2 = loop_nce(sc_s2, t, z_s, N, NCE_N) + loop_nce(sc_t2, t, z_t, N, NCE_N)
    got2 = loss_mod(f_s2, f_t2, index2, cidx2)
    assert got2.item() == pytest.approx(want2, rel=1e-6)
    assert loss_mod.memory.z_s.item() == pytest.approx(z_s, rel=1e-6)
    assert loss_mod.memory.z_t.item() == pytest.approx(z_t, rel=1e-6)


def test_z_survives_state_dict_round_trip():
    a = make_loss("nce")
    f_s, f_t, index, cidx = make_batch()
    a(f_s, f_t, index, cidx)
    b = make_loss("nce", seed=3)
    b.load_state_dict(a.state_dict())
    assert b.memory.z_s.item() == a.memory.z_s.item() > 0
    f_s2, f_t2, _, _ = make_batch(seed=5)
    assert torch.allclose(a(f_s2, f_t2, index, cidx), b(f_s2, f_t2, index, cidx))


# 3. the infonce objective = loop softmax cross-entropy


def test_infonce_loss_matches_loop_softmax():
    loss_mod = make_loss("infonce")
    t = loss_mod.memory.nce_t
    f_s, f_t, index, cidx = make_batch()
    v_s, v_t = embeddings(loss_mod, f_s, f_t)
    want = loop_softmax_ce(loop_scores(v_s, loss_mod.memory.memory_t, cidx), t) + loop_softmax_ce(
        loop_scores(v_t, loss_mod.memory.memory_s, cidx), t
    )
    got = loss_mod(f_s, f_t, index, cidx)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert loss_mod.memory.z_s.item() == -1.0  # Z belongs to the nce objective


# 4. memory update


def test_memory_update_matches_formula():
    torch.manual_seed(0)
    mom = 0.3
    mem = ContrastMemory(feat_dim=FEAT, n_data=N, nce_n=NCE_N, nce_t=0.1, nce_mom=mom).double()
    v_s = torch.nn.functional.normalize(torch.randn(B, FEAT, dtype=torch.float64), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(B, FEAT, dtype=torch.float64), dim=1)
    index = [4, 1, 6]
    before_s, before_t = rows(mem.memory_s), rows(mem.memory_t)
    mem.update(v_s.requires_grad_(True), v_t, torch.tensor(index))
    for before, after, v in ((before_s, mem.memory_s, v_s), (before_t, mem.memory_t, v_t)):
        after = rows(after)
        v = rows(v.detach())
        for i in range(N):
            if i in index:
                b = index.index(i)
                want = normalise([mom * m + (1 - mom) * x for m, x in zip(before[i], v[b])])
                assert after[i] == pytest.approx(want, rel=1e-9, abs=1e-12)
                assert math.sqrt(sum(x * x for x in after[i])) == pytest.approx(1.0, rel=1e-12)
            else:
                assert after[i] == before[i]


def test_memory_init_range():
    torch.manual_seed(0)
    mem = ContrastMemory(feat_dim=12, n_data=50, nce_n=3, nce_t=0.1, nce_mom=0.5)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (mem.memory_s, mem.memory_t):
        assert bank.shape == (50, 12)
        assert bank.abs().max().item() <= stdv
    assert not torch.equal(mem.memory_s, mem.memory_t)
    torch.manual_seed(0)
    again = ContrastMemory(feat_dim=12, n_data=50, nce_n=3, nce_t=0.1, nce_mom=0.5)
    assert torch.equal(again.memory_s, mem.memory_s)  # global RNG


# 5. the sampler


def loop_pool(labels, anchor):
    """RepDistiller's cls_negative[label of anchor]: every training index of another class."""
    return [j for j, c in enumerate(labels) if c != labels[anchor]]


def test_default_loss_uses_other_class_sampler_exact_positive_and_nce():
    loss_mod = CRDLoss(S_DIM, T_DIM, N, feat_dim=FEAT, nce_n=NCE_N, labels=LABELS)
    assert (loss_mod.mode, loss_mod.sampler.sampler, loss_mod.objective) == ("exact", "other_class", "nce")


def test_default_sampled_loss_matches_loop_nce_over_other_class_negatives():
    """The default forward (no contrast_idx): its draw is replayed with the same seed, checked
    against RepDistiller's sampling rule, and the loss recomputed by the loop NCE."""
    loss_mod = CRDLoss(S_DIM, T_DIM, N, feat_dim=FEAT, nce_n=NCE_N, nce_t=0.5, labels=LABELS).double()
    f_s, f_t, index, _ = make_batch()
    torch.manual_seed(11)
    cidx = loss_mod.sampler(index)
    labels = LABELS.tolist()
    for b, anchor in enumerate(index.tolist()):
        assert cidx[b, 0] == anchor
        pool = loop_pool(labels, anchor)
        negatives = cidx[b, 1:].tolist()
        assert set(negatives) <= set(pool)
        if len(pool) >= NCE_N:  # classes 1, 2: without replacement
            assert len(set(negatives)) == NCE_N
    v_s, v_t = embeddings(loss_mod, f_s, f_t)
    t = loss_mod.memory.nce_t
    sc_s = loop_scores(v_s, loss_mod.memory.memory_t, cidx)
    sc_t = loop_scores(v_t, loss_mod.memory.memory_s, cidx)
    want = loop_nce(sc_s, t, loop_z(sc_s, t, N), N, NCE_N) + loop_nce(sc_t, t, loop_z(sc_t, t, N), N, NCE_N)
    torch.manual_seed(11)
    got = loss_mod(f_s, f_t, index)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_other_class_sampler_excludes_the_class_and_never_repeats():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=g)
    sampler = ContrastSampler(500, 64, "other_class", "exact", labels)
    torch.manual_seed(1)
    index = torch.arange(0, 500, 7)
    c = sampler(index)
    assert c.shape == (len(index), 65) and c.dtype == torch.int64
    assert torch.equal(c[:, 0], index)
    for b, anchor in enumerate(index.tolist()):
        negatives = c[b, 1:].tolist()
        assert all(int(labels[j]) != int(labels[anchor]) for j in negatives)
        assert len(set(negatives)) == 64  # without replacement
        assert anchor not in negatives


def test_other_class_sampler_is_uniform_over_the_pool():
    # 12 images, class 0 has 4: its pool is the 8 others; each appears in a draw of 3 with probability 3/8
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    sampler = ContrastSampler(12, 3, "other_class", "exact", labels)
    torch.manual_seed(2)
    draws = 6000
    c = sampler(torch.zeros(draws, dtype=torch.long))[:, 1:]
    freq = torch.bincount(c.flatten(), minlength=12).double() / draws
    pool = loop_pool(labels.tolist(), 0)
    for j in range(12):
        assert freq[j].item() == pytest.approx(3 / 8 if j in pool else 0.0, abs=0.03), j
    assert all(len(set(row)) == 3 for row in c.tolist())


def test_other_class_sampler_replaces_only_where_the_pool_is_too_small():
    # RepDistiller: replace = nce_n > len(cls_negative[target]).  Class 0 (3 images): pool 4 < 5 -> with
    # replacement; classes 1, 2 (2 images): pool 5 -> without.
    sampler = ContrastSampler(N, NCE_N, "other_class", "exact", LABELS)
    torch.manual_seed(3)
    index = torch.tensor([0, 1, 2] * 200)
    c = sampler(index)
    for b, anchor in enumerate(index.tolist()):
        negatives = c[b, 1:].tolist()
        pool = loop_pool(LABELS.tolist(), anchor)
        assert set(negatives) <= set(pool)
        if anchor != 0:
            assert sorted(negatives) == sorted(pool)  # all 5, each once
    rows0 = [c[b, 1:].tolist() for b in range(0, len(index), 3)]
    assert any(len(set(r)) < NCE_N for r in rows0)  # necessarily repeats: 5 draws from 4
    # all classes too small: every row with replacement, still other-class only
    big = ContrastSampler(N, 40, "other_class", "exact", LABELS)
    c = big(torch.tensor([0, 1, 2]))
    for b, anchor in enumerate([0, 1, 2]):
        assert set(c[b, 1:].tolist()) <= set(loop_pool(LABELS.tolist(), anchor))


def test_relax_positive_is_a_random_image_of_the_anchor_class():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 2])
    sampler = ContrastSampler(8, 2, "other_class", "relax", labels)
    torch.manual_seed(4)
    index = torch.tensor([0] * 4000 + [7] * 10)
    c = sampler(index)
    positives = c[:4000, 0]
    assert all(int(labels[j]) == 0 for j in positives.tolist())
    freq = torch.bincount(positives, minlength=8).double() / 4000
    for j in (0, 2, 4, 6):  # the anchor itself included, as numpy.random.choice(cls_positive[target])
        assert freq[j].item() == pytest.approx(0.25, abs=0.03)
    assert c[4000:, 0].tolist() == [7] * 10  # the only image of class 2
    # negatives are still of other classes
    assert all(int(labels[j]) != 0 for j in c[:4000, 1:].flatten().tolist())


def test_relax_updates_the_anchor_row_not_the_positive():
    loss_mod = make_loss("nce", mode="relax")
    f_s, f_t, index, _ = make_batch()
    before = loss_mod.memory.memory_s.clone()
    torch.manual_seed(5)
    cidx = loss_mod.sampler(index)
    torch.manual_seed(5)
    loss_mod(f_s, f_t, index)
    changed = (loss_mod.memory.memory_s != before).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(index.tolist())
    assert all(int(LABELS[p]) == int(LABELS[a]) for p, a in zip(cidx[:, 0].tolist(), index.tolist()))


@pytest.mark.parametrize("nce_n", [3, 40])  # 40 > n_data: with replacement
def test_uniform_sampler(nce_n):
    torch.manual_seed(0)
    sampler = ContrastSampler(9, nce_n, "uniform")  # no labels needed for exact + uniform
    index = torch.tensor([8, 0, 3, 3])
    c = sampler(index)
    assert c.shape == (4, nce_n + 1)
    assert c.dtype == torch.int64
    assert torch.equal(c[:, 0], index)
    assert c.min().item() >= 0 and c.max().item() < 9
    if nce_n > 9:
        assert len(set(c[:, 1:].flatten().tolist())) > 1


def test_sampler_is_replayable_from_the_rng_state():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (60,), generator=g)
    sampler = ContrastSampler(60, 20, "other_class", "relax", labels)
    torch.manual_seed(9)
    first = sampler(torch.arange(16))
    state = torch.get_rng_state()
    second = sampler(torch.arange(16))
    torch.set_rng_state(state)
    assert torch.equal(sampler(torch.arange(16)), second)
    torch.manual_seed(9)
    assert torch.equal(sampler(torch.arange(16)), first)


def test_sampler_labels_are_not_saved():
    loss_mod = make_loss()
    assert not any(k.startswith("sampler") for k in loss_mod.state_dict())


def test_forward_samples_when_no_contrast_idx_given():
    loss_mod = make_loss("nce", nce_n=20)  # nce_n > every pool: with replacement
    f_s, f_t, index, _ = make_batch()
    loss = loss_mod(f_s, f_t, index)
    assert torch.isfinite(loss)
    assert loss_mod.memory.z_s.item() > 0


# 6. gradients, parameters and buffers


@pytest.mark.parametrize("objective", ["nce", "infonce"])
def test_gradients_and_state(objective):
    loss_mod = make_loss(objective)
    f_s, f_t, index, cidx = make_batch()
    f_s.requires_grad_(True)
    f_t.requires_grad_(True)
    loss_mod(f_s, f_t, index, cidx).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for head in (loss_mod.embed_s, loss_mod.embed_t):
        for p in head.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
    param_ids = {id(p) for p in loss_mod.parameters()}
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert id(getattr(loss_mod.memory, name)) not in param_ids
    keys = set(loss_mod.state_dict())
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= keys
    assert set(dict(loss_mod.named_parameters())) == {
        "embed_s.linear.weight",
        "embed_s.linear.bias",
        "embed_t.linear.weight",
        "embed_t.linear.bias",
    }


def test_embed_normalises_and_flattens():
    torch.manual_seed(0)
    e = Embed(12, 5)
    out = e(torch.randn(3, 3, 2, 2))
    assert out.shape == (3, 5)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-6)


# 7. errors


def test_bad_settings():
    with pytest.raises(KdpipeError, match=r"mode: got 'x'; allowed: exact, relax"):
        CRDLoss(S_DIM, T_DIM, N, mode="x", labels=LABELS)
    with pytest.raises(KdpipeError, match=r"sampler: got 'x'; allowed: other_class, uniform"):
        CRDLoss(S_DIM, T_DIM, N, sampler="x", labels=LABELS)
    with pytest.raises(KdpipeError, match=r"objective: got 'x'; allowed: nce, infonce"):
        CRDLoss(S_DIM, T_DIM, N, objective="x", labels=LABELS)
    with pytest.raises(KdpipeError, match="needs the training labels"):
        CRDLoss(S_DIM, T_DIM, N)
    with pytest.raises(KdpipeError, match="needs the training labels"):
        CRDLoss(S_DIM, T_DIM, N, sampler="uniform", mode="relax")
    with pytest.raises(KdpipeError, match="7 labels for a memory of 8 rows"):
        CRDLoss(S_DIM, T_DIM, 8, labels=LABELS)
    with pytest.raises(KdpipeError, match="at least two classes"):
        CRDLoss(S_DIM, T_DIM, N, labels=torch.zeros(N, dtype=torch.long))
    CRDLoss(S_DIM, T_DIM, N, sampler="uniform")  # the paper's uniform noise needs no labels


def test_bad_contrast_idx_shape():
    loss_mod = make_loss("nce")
    f_s, f_t, index, cidx = make_batch()
    with pytest.raises(KdpipeError, match="contrast_idx"):
        loss_mod(f_s, f_t, index, cidx[:, :3])
