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

Three independent settings; the defaults are what RepDistiller (HobbitLong/RepDistiller,
whose CRD numbers our tables quote, and which Knowledge-Distillation-Zoo copies) computes:

``sampler`` -- which training images are the negatives (:class:`ContrastSampler`).
  ``other_class`` (default, RepDistiller's data loader): per anchor, ``nce_n`` images whose
  label differs from the anchor's, drawn without replacement (with replacement only for a
  class whose pool of other-class images is smaller than ``nce_n``, as the reference does).
  ``uniform``: ``nce_n`` uniform draws, with replacement, over the whole training set, the
  anchor's class and the anchor itself included (the paper's uniform noise).

``mode`` -- which image is the positive (column 0).  ``exact`` (default): the anchor image
  itself.  ``relax``: a uniformly drawn training image of the anchor's class (possibly the
  anchor).  Either way the memory banks are updated at the anchor's own row.

``objective`` -- the loss on the (B, K) scores.
  ``nce`` (default, Sec. 3.1 and the reference's ``ContrastLoss``): the critic is

      h(T, S) = exp(s) / (exp(s) + N / M)    (with exp(s) normalised by a constant Z)

  and the maximised bound is ``L_critic(h) = E_{C=1}[log h] + N * E_{C=0}[log(1 - h)]``.
  With ``P = exp(s) / Z`` and the noise probability ``Pn = 1 / M`` (kept uniform whatever
  the sampler, as in the reference) this gives per anchor
  ``log D1 = log(P_0 / (P_0 + N Pn + eps))`` for the positive and
  ``log D0_k = log(N Pn / (P_k + N Pn + eps))`` for each negative ``k >= 1``; the term is
  ``-(sum_b [log D1 + sum_k log D0_k]) / B``.  ``Z`` (one per side) approximates the
  partition function by Monte Carlo: ``Z = mean(exp(s)) * M`` over the first batch that
  reaches the side, stored in a buffer and then kept fixed.
  ``infonce``: the softmax (InfoNCE) form -- the cross-entropy of the logits ``s`` (B, K)
  with target class 0, averaged over the batch.  ``Z`` is not used.

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
from ..losses.base import reads_only_cached_taps

EPS = 1e-7
MODES = ("exact", "relax")
SAMPLERS = ("other_class", "uniform")
OBJECTIVES = ("nce", "infonce")


def _check_choice(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise KdpipeError(f"{name}: got {value!r}; allowed: {', '.join(allowed)}")


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


class ContrastSampler(nn.Module):
    """Draws the contrast indices of a batch: (B, nce_n + 1), the positive in column 0.

    ``sampler`` and ``mode`` are described in the module docstring.  ``labels`` (n_data,) are
    the training set's labels, row ``i`` of the memory being training image ``i``; they are
    needed by ``sampler="other_class"`` and ``mode="relax"`` only.  They are kept as
    non-persistent buffers (moved by ``.to()``, never saved: they follow from the data).

    Every draw uses the global RNG of the labels' device (``torch.rand`` / ``torch.randint``,
    no host synchronisation), so a run seeded and resumed with its RNG state replays the same
    negatives.  Without-replacement draws take, per row, the ``nce_n`` smallest of
    ``n_data`` uniform keys with the anchor's class masked out: a uniform random subset of
    the other-class images (cost O(B * n_data) per batch, like the reference's per-sample
    ``numpy.random.choice(..., replace=False)``).
    """

    def __init__(
        self,
        n_data: int,
        nce_n: int,
        sampler: str = "other_class",
        mode: str = "exact",
        labels: Tensor | None = None,
    ):
        super().__init__()
        _check_choice("sampler", sampler, SAMPLERS)
        _check_choice("mode", mode, MODES)
        if n_data < 1 or nce_n < 1:
            raise KdpipeError(f"crd sampler: n_data and nce_n must be >= 1; got {n_data}, {nce_n}")
        self.n_data, self.nce_n, self.sampler, self.mode = int(n_data), int(nce_n), sampler, mode
        self.needs_labels = sampler == "other_class" or mode == "relax"
        self.replace_some = self.replace_all = sampler == "uniform"
        if labels is None:
            if self.needs_labels:
                raise KdpipeError(
                    f"crd: sampler {sampler!r} with mode {mode!r} needs the training labels "
                    "(sampler 'uniform' with mode 'exact' does not)"
                )
            for name in ("labels", "counts", "starts", "by_class"):  # empty, but they carry the device
                self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)
            return
        labels = torch.as_tensor(labels).reshape(-1).to(torch.long)
        if labels.numel() != self.n_data:
            raise KdpipeError(f"crd: {labels.numel()} labels for a memory of {self.n_data} rows")
        if labels.numel() and int(labels.min()) < 0:
            raise KdpipeError("crd: labels must be >= 0")
        counts = torch.bincount(labels)
        present = counts > 0
        pool = self.n_data - counts  # other-class images per class
        if sampler == "other_class":
            if bool((pool[present] == 0).any()):
                raise KdpipeError("crd: sampler 'other_class' needs training images of at least two classes")
            # the reference samples with replacement only where nce_n exceeds the class's pool
            replace = self.nce_n > pool[present]
            self.replace_some, self.replace_all = bool(replace.any()), bool(replace.all())
        starts = torch.cumsum(counts, 0) - counts
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", starts, persistent=False)
        # training indices grouped by class (stable): class c occupies [starts[c], starts[c] + counts[c])
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, nce_n={self.nce_n}, sampler={self.sampler!r}, mode={self.mode!r}"

    def forward(self, index: Tensor) -> Tensor:
        """(B, nce_n + 1) int64 contrast indices for the anchors ``index`` (B,), on the labels' device."""
        device = self.labels.device
        index = index.reshape(-1).to(device=device, dtype=torch.long)
        b = index.numel()
        if self.mode == "relax":
            y = self.labels[index]
            pick = (torch.rand(b, device=device) * self.counts[y]).long().clamp_max(self.counts[y] - 1)
            positive = self.by_class[self.starts[y] + pick]
        else:
            positive = index
        if self.sampler == "uniform":
            negatives = torch.randint(0, self.n_data, (b, self.nce_n), device=device)
        else:
            negatives = self._other_class(index)
        return torch.cat([positive.unsqueeze(1), negatives], dim=1)

    def _other_class(self, index: Tensor) -> Tensor:
        device = index.device
        y = self.labels[index]
        b, k = index.numel(), self.nce_n
        with_replacement = without = None
        if self.replace_some:
            # uniform positions in the class's pool of other-class images, mapped to training indices:
            # pool position p is by_class[p] before the class's own block, by_class[p + count] after it
            pool = (self.n_data - self.counts[y]).unsqueeze(1)
            pos = (torch.rand(b, k, device=device) * pool).long().clamp_max(pool - 1)
            pos = pos + self.counts[y].unsqueeze(1) * (pos >= self.starts[y].unsqueeze(1))
            with_replacement = self.by_class[pos]
        if not self.replace_all:
            keys = torch.rand(b, self.n_data, device=device)
            keys.masked_fill_(self.labels.unsqueeze(0) == y.unsqueeze(1), 2.0)  # never among the k smallest
            without = keys.topk(k, dim=1, largest=False, sorted=False).indices
        if with_replacement is None:
            return without
        if without is None:
            return with_replacement
        replace_row = (k > self.n_data - self.counts[y]).unsqueeze(1)
        return torch.where(replace_row, with_replacement, without)


class CRDLoss(nn.Module):
    """Embedding heads for student and teacher, the memory and the sampler; forward returns the CRD objective.

    ``embed_s`` and ``embed_t`` are learned (both belong with the student's optimiser; the
    teacher network itself gets no gradient).  The returned value is the method's own
    term, not multiplied by any weight.  ``labels`` (n_data,) are the training labels, needed
    unless ``sampler="uniform"`` and ``mode="exact"``; ``sampler``, ``mode`` and
    ``objective`` are described in the module docstring (defaults: RepDistiller's).
    """

    teacher_taps = frozenset({"embedding"})  # all CRD reads of the teacher: its pooled embedding

    @classmethod
    def cacheable(cls) -> bool:
        """Whether a teacher cache can replace the live teacher (the kd modes' rule, losses.base)."""
        return reads_only_cached_taps(cls.teacher_taps)

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
        sampler: str = "other_class",
        objective: str = "nce",
        labels: Tensor | None = None,
    ):
        super().__init__()
        _check_choice("mode", mode, MODES)
        _check_choice("sampler", sampler, SAMPLERS)
        _check_choice("objective", objective, OBJECTIVES)
        self.mode, self.sampler_name, self.objective = mode, sampler, objective
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, n_data, nce_n, nce_t, nce_mom)
        self.sampler = ContrastSampler(n_data, nce_n, sampler, mode, labels)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sampler={self.sampler_name!r}, objective={self.objective!r}"

    def forward(
        self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor | None = None, dense: bool | None = None
    ) -> Tensor:
        """CRD loss for one batch, then the momentum update of both banks.

        ``f_s`` (B, s_dim) student and ``f_t`` (B, t_dim) teacher embeddings (``f_t`` is
        detached), ``index`` (B,) training-image indices, ``contrast_idx`` (B, nce_n + 1)
        with the positive in column 0 (drawn by :attr:`sampler` when None).
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
            contrast_idx = self.sampler(index)
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
        if self.objective == "nce":
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
