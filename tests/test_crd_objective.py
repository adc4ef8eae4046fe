"""CRD objective (Tian, Krishnan & Isola, ICLR 2020): memory, scores, exact NCE and relaxed softmax.

Golden values are recomputed with plain Python loops over samples and contrast entries
(``math.exp`` / ``math.log`` on floats), independently of the vectorised module.
"""

import copy
import math

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.objectives.crd import EPS, ContrastMemory, CRDLoss, Embed

B, S_DIM, T_DIM, FEAT, N, NCE_N = 3, 5, 6, 4, 7, 5


def rows(t):
    return [[float(x) for x in r] for r in t]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def normalise(a):
    n = math.sqrt(sum(x * x for x in a))
    return [x / n for x in a]


def make_loss(mode="exact", seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    args = dict(feat_dim=FEAT, nce_n=NCE_N, nce_t=0.5, nce_mom=0.5, mode=mode)
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
    cidx = mem.sample(torch.tensor([1, 3, 3, 10]))
    dense = mem.scores(v, mem.memory_t, cidx, dense=True)
    gathered = mem.scores(v, mem.memory_t, cidx, dense=False)
    auto = mem.scores(v, mem.memory_t, cidx)  # 11 <= 4 * 10: dense
    assert dense.shape == (4, 10)
    assert torch.allclose(dense, gathered, atol=1e-6)
    assert torch.allclose(auto, dense, atol=1e-6)
    want = loop_scores(v, mem.memory_t, cidx)
    assert torch.allclose(dense, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_forward_dense_equals_gathered(mode):
    base = make_loss(mode, dtype=torch.float32)
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


# 2. exact mode = loop NCE, Z set once from the first batch


def test_exact_loss_matches_loop_and_z_is_fixed_after_first_call():
    loss_mod = make_loss("exact")
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
    a = make_loss("exact")
    f_s, f_t, index, cidx = make_batch()
    a(f_s, f_t, index, cidx)
    b = make_loss("exact", seed=3)
    b.load_state_dict(a.state_dict())
    assert b.memory.z_s.item() == a.memory.z_s.item() > 0
    f_s2, f_t2, _, _ = make_batch(seed=5)
    assert torch.allclose(a(f_s2, f_t2, index, cidx), b(f_s2, f_t2, index, cidx))


# 3. relax mode = loop softmax cross-entropy


def test_relax_loss_matches_loop_softmax():
    loss_mod = make_loss("relax")
    t = loss_mod.memory.nce_t
    f_s, f_t, index, cidx = make_batch()
    v_s, v_t = embeddings(loss_mod, f_s, f_t)
    want = loop_softmax_ce(loop_scores(v_s, loss_mod.memory.memory_t, cidx), t) + loop_softmax_ce(
        loop_scores(v_t, loss_mod.memory.memory_s, cidx), t
    )
    got = loss_mod(f_s, f_t, index, cidx)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert loss_mod.memory.z_s.item() == -1.0  # Z is an exact-mode quantity


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


# 5. sample()


@pytest.mark.parametrize("nce_n", [3, 40])  # 40 > n_data: with replacement
def test_sample(nce_n):
    torch.manual_seed(0)
    mem = ContrastMemory(feat_dim=4, n_data=9, nce_n=nce_n, nce_t=0.1, nce_mom=0.5)
    index = torch.tensor([8, 0, 3, 3])
    c = mem.sample(index)
    assert c.shape == (4, nce_n + 1)
    assert c.dtype == torch.int64
    assert c.device == mem.memory_s.device
    assert torch.equal(c[:, 0], index)
    assert c.min().item() >= 0 and c.max().item() < 9
    if nce_n > 9:
        assert len(set(c[:, 1:].flatten().tolist())) > 1


def test_forward_samples_when_no_contrast_idx_given():
    loss_mod = make_loss("exact", nce_n=20)  # nce_n > n_data
    f_s, f_t, index, _ = make_batch()
    loss = loss_mod(f_s, f_t, index)
    assert torch.isfinite(loss)
    assert loss_mod.memory.z_s.item() > 0


# 6. gradients, parameters and buffers


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_gradients_and_state(mode):
    loss_mod = make_loss(mode)
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


def test_bad_mode():
    with pytest.raises(KdpipeError, match=r"mode: got 'x'; allowed: exact, relax"):
        CRDLoss(S_DIM, T_DIM, N, mode="x")


def test_bad_contrast_idx_shape():
    loss_mod = make_loss("exact")
    f_s, f_t, index, cidx = make_batch()
    with pytest.raises(KdpipeError, match="contrast_idx"):
        loss_mod(f_s, f_t, index, cidx[:, :3])
