"""Contrastive representation distillation (CRD).

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020
(arXiv:1910.10699).  Student and teacher embeddings are mapped by linear heads onto the
unit sphere (``g^S``, ``g^T``); the student is trained to tell the congruent pair (the
same image seen by both networks) from ``N`` incongruent pairs (other training images),
which maximises a lower bound on the mutual information between the two representations
(Sec. 3.1).  Negatives come from two momentum memory banks over the training set, one of
student and one of teacher embeddings (Sec. 3.1, "memory buffer"; Wu et al., 2018).

Notation here: ``nce_n`` negatives per anchor (the paper's ``N``), ``n_data`` training
images (the paper's ``M``), ``nce_t`` the temperature ``tau``, ``K = nce_n + 1`` contrast
entries per anchor (column 0 the positive), ``s = <v, m> / nce_t`` the scores of an
anchor ``v`` against memory rows ``m``.  The objective is symmetric: the student
embedding is scored against the teacher bank and the teacher embedding against the
student bank, and the two terms are added.

``mode="exact"`` -- the NCE objective of Sec. 3.1.  The critic is

    h(T, S) = exp(s) / (exp(s) + N / M)    (with exp(s) normalised by a constant Z)

and the maximised bound is ``L_critic(h) = E_{C=1}[log h] + N * E_{C=0}[log(1 - h)]``.
With ``P = exp(s) / Z`` and the uniform noise distribution ``Pn = 1 / M`` this gives per
anchor ``log D1 = log(P_0 / (P_0 + N Pn + eps))`` for the positive and
``log D0_k = log(N Pn / (P_k + N Pn + eps))`` for each negative ``k >= 1``; the term is
``-(sum_b [log D1 + sum_k log D0_k]) / B``.  ``Z`` (one per side) approximates the
partition function by Monte Carlo: ``Z = mean(exp(s)) * M`` over the first batch that
reaches the side, stored in a buffer and then kept fixed.

``mode="relax"`` -- the softmax / InfoNCE-style relaxation (``K``-way classification of the
positive among the contrast entries): the term is the cross-entropy of the logits ``s``
(B, K) with target class 0, averaged over the batch.  ``Z`` is not used.

Numerics: embeddings and memory rows are unit vectors, so ``|s| <= 1 / nce_t``.  ``exp``
is evaluated in (at least) float32, which overflows only beyond ``s ~ 88.7``, i.e. for
``nce_t < ~0.0113``; the default ``nce_t = 0.1`` gives ``exp(s) <= e^10``.  The positive's
``log P_0`` is taken as ``s_0 - log Z`` so that an underflowing ``P_0`` cannot give
``log 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KdpipeError

EPS = 1e-7
MODES = ("exact", "relax")


def _at_least_float32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Embed(nn.Module):
    """Linear(dim_in, feat_dim) then L2 normalisation per sample."""

    def __init__(self, dim_in: int, feat_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return F.normalize(self.linear(x), p=2, dim=1)


class ContrastMemory(nn.Module):
    """Two momentum memory banks over the training set: one of student embeddings, one of teacher embeddings.

    Buffers (saved in ``state_dict``, moved by ``.to()``, never parameters):
    ``memory_s`` / ``memory_t`` (n_data, feat_dim) banks, initialised uniform in
    ``[-stdv, stdv]`` with ``stdv = 1 / sqrt(feat_dim / 3)`` from the global RNG;
    ``z_s`` / ``z_t`` scalar NCE normalisation constants, ``-1`` while unset.  ``z_s``
    normalises the scores of the *student* embedding (against ``memory_t``), ``z_t`` those
    of the *teacher* embedding (against ``memory_s``).
    """

    def __init__(self, feat_dim: int, n_data: int, nce_n: int, nce_t: float, nce_mom: float):
        super().__init__()
        if feat_dim < 1 or n_data < 1 or nce_n < 1:
            raise KdpipeError(f"crd memory: feat_dim, n_data and nce_n must be >= 1; got {feat_dim}, {n_data}, {nce_n}")
        if not nce_t > 0:
            raise KdpipeError(f"nce_t: got {nce_t!r}; must be > 0")
        if not 0.0 <= nce_mom <= 1.0:
            raise KdpipeError(f"nce_mom: got {nce_mom!r}; must be in [0, 1]")
        self.feat_dim, self.n_data, self.nce_n = int(feat_dim), int(n_data), int(nce_n)
        self.nce_t, self.nce_mom = float(nce_t), float(nce_mom)
        stdv = 1.0 / math.sqrt(feat_dim / 3.0)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, n_data={self.n_data}, nce_n={self.nce_n}, "
            f"nce_t={self.nce_t}, nce_mom={self.nce_mom}"
        )

    def sample(self, index: Tensor) -> Tensor:
        """(B, nce_n + 1) int64 contrast indices on the memory's device.

        Column 0 is ``index`` (the positive); columns 1..nce_n are uniform random training
        indices from ``torch.randint`` on the memory's device (global RNG of that device, no
        host sync).  Sampling is with replacement, so ``nce_n`` may exceed ``n_data``, and a
        negative may coincide with the positive (as in the paper's uniform noise).
        """
        device = self.memory_s.device
        index = index.reshape(-1).to(device=device, dtype=torch.long)
        negatives = torch.randint(0, self.n_data, (index.numel(), self.nce_n), device=device)
        return torch.cat([index.unsqueeze(1), negatives], dim=1)

    def scores(self, v: Tensor, memory: Tensor, contrast_idx: Tensor, dense: bool | None = None) -> Tensor:
        """(B, K) dot products ``v_b . memory[contrast_idx[b, k]]``.

        ``dense=True``: ``(v @ memory.T).gather(1, contrast_idx)`` -- reads the bank once and
        never materialises the (B, K, feat_dim) rows; autograd then keeps ``memory`` itself
        for the backward pass, so an in-place :meth:`update` before ``backward()`` raises
        autograd's "modified by an inplace operation" error (pass a copy of the bank if an
        update must come first; :class:`CRDLoss` does).  ``dense=False``:
        ``bmm(memory[contrast_idx], v[..., None])`` -- the gathered form.  ``dense=None``:
        dense when ``n_data <= B * K``.
        """
        contrast_idx = contrast_idx.to(device=memory.device, dtype=torch.long)
        v = v.to(memory.dtype)
        if dense is None:
            dense = self._dense(contrast_idx)
        if dense:
            return (v @ memory.t()).gather(1, contrast_idx)
        return torch.bmm(memory[contrast_idx], v.unsqueeze(2)).squeeze(2)

    def _dense(self, contrast_idx: Tensor) -> bool:
        return self.n_data <= contrast_idx.numel()

    @torch.no_grad()
    def update(self, v_s: Tensor, v_t: Tensor, index: Tensor) -> None:
        """``memory[index] <- L2-normalise(nce_mom * memory[index] + (1 - nce_mom) * v)`` for both banks.

        In place, with ``v`` detached.  With a repeated index in one batch, which of the
        repeated rows is written is unspecified (``index_copy_``).
        """
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            idx = index.reshape(-1).to(device=memory.device, dtype=torch.long)
            rows = memory.index_select(0, idx) * self.nce_mom + v.detach().to(memory.dtype) * (1.0 - self.nce_mom)
            memory.index_copy_(0, idx, F.normalize(rows, p=2, dim=1))


class CRDLoss(nn.Module):
    """Embedding heads for student and teacher + the memory; forward returns the CRD objective.

    ``embed_s`` and ``embed_t`` are learned (both belong with the student's optimiser; the
    teacher network itself gets no gradient).  The returned value is the method's own
    term, not multiplied by any weight.
    """

    def __init__(
        self,
        s_dim: int,
        t_dim: int,
        n_data: int,
        feat_dim: int = 128,
        nce_n: int = 16384,
        nce_t: float = 0.1,
        nce_mom: float = 0.5,
        mode: str = "exact",
    ):
        super().__init__()
        if mode not in MODES:
            raise KdpipeError(f"mode: got {mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, n_data, nce_n, nce_t, nce_mom)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(
        self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor | None = None, dense: bool | None = None
    ) -> Tensor:
        """CRD loss for one batch, then the momentum update of both banks.

        ``f_s`` (B, s_dim) student and ``f_t`` (B, t_dim) teacher embeddings (``f_t`` is
        detached), ``index`` (B,) training-image indices, ``contrast_idx`` (B, nce_n + 1)
        with the positive in column 0 (drawn by :meth:`ContrastMemory.sample` when None).
        """
        mem = self.memory
        index = index.reshape(-1)
        b = index.numel()
        if f_s.shape[0] != b or f_t.shape[0] != b:
            raise KdpipeError(
                f"crd: batch sizes differ: f_s {tuple(f_s.shape)}, f_t {tuple(f_t.shape)}, index {tuple(index.shape)}"
            )
        v_s = self.embed_s(f_s)
        v_t = self.embed_t(f_t.detach())
        if contrast_idx is None:
            contrast_idx = mem.sample(index)
        elif tuple(contrast_idx.shape) != (b, mem.nce_n + 1):
            raise KdpipeError(
                f"crd: contrast_idx must have shape {(b, mem.nce_n + 1)}; got {tuple(contrast_idx.shape)}"
            )
        contrast_idx = contrast_idx.to(device=mem.memory_s.device, dtype=torch.long)
        if dense is None:
            dense = mem._dense(contrast_idx)
        memory_s, memory_t = mem.memory_s, mem.memory_t
        if dense and torch.is_grad_enabled():
            # the dense product saves the bank for backward; score against a snapshot so the
            # in-place update below leaves the graph intact (costs one copy of each bank,
            # no more than the B*K rows the gathered form would copy)
            memory_s, memory_t = memory_s.clone(), memory_t.clone()
        out_s = mem.scores(v_s, memory_t, contrast_idx, dense)  # student anchor vs teacher bank
        out_t = mem.scores(v_t, memory_s, contrast_idx, dense)  # teacher anchor vs student bank
        if self.mode == "exact":
            loss = self._nce(out_s, mem.z_s) + self._nce(out_t, mem.z_t)
        else:
            loss = self._softmax(out_s) + self._softmax(out_t)
        mem.update(v_s, v_t, index)
        return loss

    def _nce(self, scores: Tensor, z: Tensor) -> Tensor:
        """NCE term for one side; sets ``z`` (in place, no host sync) if still unset."""
        mem = self.memory
        s = _at_least_float32(scores) / mem.nce_t
        e = torch.exp(s)
        with torch.no_grad():
            estimate = e.detach().mean() * mem.n_data
            z.copy_(torch.where(z < 0, estimate.to(z.dtype), z))
        log_z = torch.log(z.detach().clone().to(s.dtype))
        p = torch.exp(s - log_z)
        noise = mem.nce_n / mem.n_data  # nce_n * Pn
        log_d1 = (s[:, 0] - log_z) - torch.log(p[:, 0] + noise + EPS)
        log_d0 = math.log(noise) - torch.log(p[:, 1:] + noise + EPS)
        return -(log_d1.sum() + log_d0.sum()) / s.shape[0]

    def _softmax(self, scores: Tensor) -> Tensor:
        s = _at_least_float32(scores) / self.memory.nce_t
        target = torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
        return F.cross_entropy(s, target)
