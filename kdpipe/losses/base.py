"""What every distillation loss shares: the call convention, tap shapes, and shape adapters.

A loss is an ``nn.Module``; ``forward(student, teacher, batch)`` takes the student's and
the teacher's :class:`~kdpipe.models.FeatureTaps` plus a :class:`DistillBatch` and
returns a scalar: the method's own term, *not* multiplied by ``lambda_kd`` (the training
task applies the weight).  Learned helpers (regressors, connectors, adapters) are
submodules, so they are optimised with the student and saved with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import KdpipeError
from ..models import FeatureTaps


@dataclass(frozen=True)
class TapShapes:
    """Per-sample shapes of a network's taps (no batch dimension), found by a probe forward."""

    stem: tuple[int, ...]
    stages: tuple[tuple[int, ...], ...]  # (C, H, W) per stage; stages_pre has the same shapes
    embedding: int
    num_classes: int

    @classmethod
    def probe(cls, model: nn.Module, image_shape: tuple[int, int, int]) -> "TapShapes":
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            taps = model(torch.zeros(2, *image_shape, device=device))
        model.train(was_training)
        return cls(
            tuple(taps.stem.shape[1:]),
            tuple(tuple(t.shape[1:]) for t in taps.stages),
            int(taps.embedding.shape[1]),
            int(taps.logits.shape[1]),
        )


@dataclass
class DistillBatch:
    """Context some losses need besides the taps."""

    x: Tensor  # normalised inputs; requires grad when the loss sets ``input_grad``
    y: Tensor  # labels
    index: Tensor | None = None  # training-image indices of the batch
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    epoch: int = 0  # 0-based epoch of the training (after a two-stage mode's initialisation phase)


class Adapter(nn.Module):
    """Makes a student feature map comparable with a teacher's of another shape.

    Channels: a learned 1x1 convolution + batch norm on the student side.  Spatial size:
    parameter-free average pooling of whichever map is larger.  ``describe()`` says what
    was inserted, for ``run.json``.
    """

    def __init__(
        self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], where: str, pool_only: bool = False
    ):
        super().__init__()
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        self.where = where
        self.student_shape, self.teacher_shape = tuple(student_shape), tuple(teacher_shape)
        self.conv: nn.Module = nn.Identity()
        if cs != ct and not pool_only:
            self.conv = nn.Sequential(nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct))
        self.size = (min(hs, ht), min(ws, wt))
        self.pool_student = (hs, ws) != self.size
        self.pool_teacher = (ht, wt) != self.size

    @property
    def active(self) -> bool:
        return not isinstance(self.conv, nn.Identity) or self.pool_student or self.pool_teacher

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        student = self.conv(student)
        if self.pool_student:
            student = nn.functional.adaptive_avg_pool2d(student, self.size)
        if self.pool_teacher:
            teacher = nn.functional.adaptive_avg_pool2d(teacher, self.size)
        return student, teacher

    def describe(self) -> dict:
        return {
            "where": self.where,
            "student_shape": list(self.student_shape),
            "teacher_shape": list(self.teacher_shape),
            "conv1x1_bn": not isinstance(self.conv, nn.Identity),
            "pool": {(True, True): "both", (True, False): "student", (False, True): "teacher"}.get(
                (self.pool_student, self.pool_teacher)
            ),
        }


CACHED_TAPS = frozenset({"logits", "embedding"})


def reads_only_cached_taps(teacher_taps: frozenset, teacher_grad: bool = False, input_grad: bool = False) -> bool:
    """The one rule for every method (kd modes, CRD): a teacher cache (logits and pooled embeddings
    per view) can replace the live teacher when the method reads only those taps, with no
    gradient through the teacher or w.r.t. the input."""
    return teacher_taps <= CACHED_TAPS and not teacher_grad and not input_grad


class DistillLoss(nn.Module):
    """Base class of the ``kd`` modes.

    Class attributes describe the method to the training task:

    * ``defaults``: the reference hyperparameters (SPEC); ``lambda_kd`` among them.  Where the
      reference implementation departs from the paper, the paper's form is a string-valued
      setting whose default selects the reference's form.
    * ``setting_choices``: the allowed values of each string-valued setting in ``defaults``.
    * ``teacher_taps``: which teacher taps the loss reads; a loss that reads only
      ``logits`` and/or ``embedding`` can be served from the teacher cache.
    * ``teacher_grad``: the teacher forward must be differentiable (w.r.t. its
      activations or input; its weights stay frozen).
    * ``input_grad``: the input batch must require grad (input-gradient matching).
    * ``two_stage``: the loss is used only in an initialisation phase, followed by
      cross-entropy training (FSP, AB).
    * ``capturable``: the loss runs on the device alone, so that a step using it can be replayed as
      a CUDA graph (:mod:`kdpipe.capture`); False where it synchronises with the host.
    * ``stagewise``: the loss pairs the student's stage i with the teacher's stage i, for every
      stage, so the two networks must have as many stages (:func:`require_same_stages`, checked
      here once for every such mode, and at config load for every planned pair).  A
      ``(setting, value)`` pair: only in that form (sp with ``stages all``); see :meth:`stagewise_for`.
    * ``revisions``: each change kdpipe made to what the mode computes with its defaults, dated; a run
      records the mode's revision (:meth:`revision`, option ``form``), so that a run of an earlier one is
      not taken for a run of today's (the workflow re-plans it).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    revisions: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    setting_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages"})
    teacher_grad: ClassVar[bool] = False
    input_grad: ClassVar[bool] = False
    two_stage: ClassVar[bool] = False
    capturable: ClassVar[bool] = True
    stagewise: ClassVar[bool | tuple[str, str]] = False

    @classmethod
    def revision(cls) -> int:
        """The revision of the mode's default computation: 1 + the changes listed in ``revisions``."""
        from ..options import revision

        return revision(cls.revisions)

    @classmethod
    def recorded_form(cls) -> int | None:
        """The option ``form`` a run of the mode records: its revision once revised, else unset (as runs
        recorded it before revisions existed, so that an unrevised mode's runs keep their identity)."""
        from ..options import recorded_form

        return recorded_form(cls.revisions)

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        """``teacher_model`` is given for losses that read teacher parameters at construction (OFD)."""
        super().__init__()
        self.student_shapes, self.teacher_shapes = student, teacher
        self.settings = {**self.defaults, **{k: v for k, v in settings.items() if v is not None}}
        self._check_settings()
        if self.stagewise_for(self.settings):
            require_same_stages(student, teacher, self.name)
        self.adapters = nn.ModuleDict()

    @classmethod
    def stagewise_for(cls, settings: dict) -> bool:
        """Whether the loss, with these (complete) settings, pairs every stage one to one."""
        if isinstance(cls.stagewise, tuple):
            key, value = cls.stagewise
            return settings.get(key, cls.defaults[key]) == value
        return cls.stagewise

    def _check_settings(self) -> None:
        """Every setting checked against its declaration, also when a loss is built directly (the
        API and CLI have checked them already): a string setting against this mode's
        ``setting_choices``, a numeric one against its kd option (type and range, converted)."""
        from ..options import find_option

        for key, value in self.settings.items():
            where = f"kd_mode {self.name}: "
            if key not in self.defaults:
                raise KdpipeError(f"{where}{key}: not a setting of this mode; its settings: {', '.join(self.defaults)}")
            if key in self.setting_choices:
                allowed = self.setting_choices[key]
                if value not in allowed:
                    raise KdpipeError(f"{where}{key}: got {value!r}; allowed: one of {', '.join(allowed)}")
            else:
                self.settings[key] = find_option("kd", key).check(value, where)

    def capture_key(self, epoch: int) -> tuple:
        """The Python values :meth:`forward` bakes into its kernels in (0-based) ``epoch`` -- a CUDA graph of
        the step is recorded anew when they change (:mod:`kdpipe.capture`); a loss whose forward reads
        ``batch.epoch`` returns what it computes from it."""
        return ()

    @classmethod
    def cacheable(cls) -> bool:
        """Whether a teacher cache (logits and pooled embeddings per view) can replace the live teacher."""
        return reads_only_cached_taps(cls.teacher_taps, cls.teacher_grad, cls.input_grad)

    def adapter(
        self, key: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], pool_only: bool = False
    ) -> Adapter | None:
        """Register (once) and return an adapter where the shapes differ; None where they match.

        ``pool_only``: only the spatial sizes need to agree (the method compares maps of
        any channel count, or maps channels itself), so no 1x1 convolution is added.
        ``key`` names the tap (e.g. ``"stage1"``); it must not contain dots.
        """
        compared = slice(1, None) if pool_only else slice(None)
        if tuple(student_shape)[compared] == tuple(teacher_shape)[compared]:
            return None
        if key not in self.adapters:
            self.adapters[key] = Adapter(student_shape, teacher_shape, key, pool_only=pool_only)
        return self.adapters[key]

    def adapted(self, key: str, student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
        adapter = self.adapters[key] if key in self.adapters else None
        return adapter(student_map, teacher_map) if adapter is not None else (student_map, teacher_map)

    def describe(self) -> dict:
        return {
            "mode": self.name,
            "paper": self.paper,
            "settings": dict(self.settings),
            "adapters": [a.describe() for a in self.adapters.values()],
            "learned_parameters": sum(p.numel() for p in self.parameters()),
        }

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        raise NotImplementedError


def require_same_classes(student: TapShapes, teacher: TapShapes, mode: str) -> None:
    if student.num_classes != teacher.num_classes:
        raise KdpipeError(
            f"kd_mode {mode}: teacher has {teacher.num_classes} classes, student {student.num_classes}; they must agree"
        )


def require_same_stages(student: TapShapes, teacher: TapShapes, mode: str) -> None:
    """A mode that pairs stages one to one needs as many stages in both networks.

    RepDistiller and mdistiller ``zip`` the two feature lists, which silently drops the deeper
    network's last stages; none of their published tables has such a pair (their cross-family
    pairs have equal counts), so kdpipe refuses instead of guessing a pairing.
    """
    n_s, n_t = len(student.stages), len(teacher.stages)
    if n_s != n_t:
        raise KdpipeError(
            f"kd_mode {mode}: pairs stages one to one, but the teacher has {n_t} stages and the student {n_s}"
        )
