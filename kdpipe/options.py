"""One declarative table of options, shared by the Python API and the command line.

Names follow the seed library (Knowledge-Distillation-Zoo's flags).  Each option knows
its type, default, allowed range and help text; :func:`resolve` validates keyword
arguments against it and :func:`add_to_parser` builds the argparse flags from it, so
the two entry styles cannot drift apart.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import KdpipeError

CROP_PADDINGS = ("auto", "reflect", "zeros")  # option crop_padding (kdpipe.data.augmentation_of)


@dataclass(frozen=True)
class Option:
    name: str
    type: type  # int, float, str, bool, or list (of ints)
    default: Any = None
    help: str = ""
    required: bool = False
    choices: Callable[[], tuple] | tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    nullable: bool = False  # None is a valid value (meaning "automatic")
    item_type: type = int  # element type when ``type`` is list
    validate: Callable[[Any], str | None] | None = None  # a further rule: the reason a value is refused

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self._choices())
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_min else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_max else '<='} {self.maximum:g}")
        kind = {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            list: "a list of integers" if self.item_type is int else "a list of names",
        }
        return kind[self.type] + (" " + " and ".join(parts) if parts else "")

    def _choices(self) -> tuple:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, value: Any, where: str) -> Any:
        """Return the value converted to the option's type, or raise one clear line."""
        label = f"{where}{self.name}"
        if value is None:
            if self.required:
                raise KdpipeError(f"{label}: required; {self.allowed()}")
            if self.nullable or self.default is None:
                return None
            return self.default
        value = self._convert(value, label)
        if self.choices is not None:
            for v in value if isinstance(value, list) else [value]:
                if v not in self._choices():
                    raise KdpipeError(f"{label}: got {v!r}; allowed: {self.allowed()}")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if isinstance(v, float) and not math.isfinite(v):
                    raise KdpipeError(f"{label}: got {v!r}; must be {self.allowed()}")
                if self.minimum is not None and (v < self.minimum or (self.exclusive_min and v == self.minimum)):
                    raise KdpipeError(f"{label}: got {v!r}; must be {self.allowed()}")
                if self.maximum is not None and (v > self.maximum or (self.exclusive_max and v == self.maximum)):
                    raise KdpipeError(f"{label}: got {v!r}; must be {self.allowed()}")
        reason = self.validate(value) if self.validate is not None else None
        if reason:
            raise KdpipeError(f"{label}: got {value!r}; {reason}")
        return value

    def _convert(self, value: Any, label: str) -> Any:
        bad = KdpipeError(f"{label}: got {value!r} ({type(value).__name__}); must be {self.allowed()}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise bad
        if self.type is int:
            if isinstance(value, bool):
                raise bad
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    raise bad from None
            raise bad
        if self.type is float:
            if isinstance(value, bool):
                raise bad
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    raise bad from None
            raise bad
        if self.type is list:
            if isinstance(value, str):  # "100,150" or "100 150"; names and paths (which may hold spaces): "a,b"
                value = value.split(",") if self.item_type is str else value.replace(",", " ").split()
            if self.item_type is str and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                value = [v.strip() for v in value if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise bad
            out = []
            for v in value:
                if self.item_type is str:
                    if not isinstance(v, str) or not v:
                        raise bad
                    out.append(v)
                    continue
                if isinstance(v, bool):
                    raise bad
                try:
                    out.append(int(v))
                except (TypeError, ValueError):
                    raise bad from None
            return out
        if not isinstance(value, str):
            raise bad
        return value


def _nets() -> tuple:
    from .models import MODELS

    return tuple(MODELS)


PARAPHRASER_EPOCHS = 30  # FT's paraphraser recipe (KD-Zoo's train_ft.py), at a constant lr


def _inside_save_root(note: str) -> str | None:
    """A run directory name must stay under --save_root: relative, no '..', not empty."""
    from pathlib import PurePath

    parts = PurePath(note).parts
    if not parts or PurePath(note).is_absolute() or ".." in parts or note.startswith("~"):
        return "must be a relative path inside --save_root (no leading '/', '~' or '..' parts)"
    return None


def val_size_rule(value: float) -> str | None:
    """``val_size`` is a fraction of the training images (below 1) or a count of them (a whole number from 1 on):
    1.5 is neither (it used to be truncated to one image)."""
    if value >= 1 and not float(value).is_integer():
        return "must be a fraction below 1 (e.g. 0.1) or a whole number of images (e.g. 5000)"
    return None


def _cohort_size(peers: list) -> str | None:
    return "a DML cohort has 2 or more peers, e.g. resnet20,resnet20" if len(peers) < 2 else None


# torch's thread count: far more threads than any machine's CPUs crash torch (99999: a segfault) or overflow it
MAX_THREADS = 1024


# ---------------------------------------------------------------- the table

COMMON = [
    Option("save_root", str, "results/runs", "parent directory of the run directory"),
    Option(
        "note",
        str,
        None,
        "run directory name under --save_root (default: derived from method, data, nets, seed)",
        validate=_inside_save_root,
    ),
    Option(
        "other_settings",
        str,
        "refuse",
        "a run directory holding a run (finished or checkpointed) made with other settings, inputs or data: "
        "refuse = stop with one line, nothing touched; replace = move that run's files into "
        "<run dir>/replaced/<time>/ and train anew (the workflow's jobs: Snakemake re-runs a job whose settings "
        "or inputs changed)",
        choices=("refuse", "replace"),
    ),
    Option("img_root", str, "data", "where CIFAR files live (torchvision layout)"),
    Option("download", bool, False, "download CIFAR into --img_root if it is missing"),
    Option("print_freq", int, 50, "log every N batches", minimum=1),
    Option("epochs", int, 200, "training epochs", minimum=1),
    Option("batch_size", int, 128, "mini-batch size", minimum=1),
    Option("lr", float, 0.1, "initial learning rate", minimum=0, exclusive_min=True),
    Option("momentum", float, 0.9, "SGD momentum", minimum=0, maximum=1, exclusive_max=True),
    Option(
        "nesterov",
        bool,
        None,
        "Nesterov momentum (default: on when --momentum > 0, as KD-Zoo; false: plain momentum SGD, as RepDistiller "
        "and mdistiller)",
        nullable=True,
    ),
    Option("weight_decay", float, 1e-4, "SGD weight decay", minimum=0),
    Option(
        "milestones",
        list,
        None,
        "epochs at which lr is multiplied by 0.1 (default: half and three quarters of --epochs)",
        minimum=1,
    ),
    Option(
        "warmup_epochs",
        int,
        0,
        "epochs at lr/10 before the schedule starts (He et al.'s ResNet-110 warm-up)",
        minimum=0,
    ),
    Option("num_class", int, None, "number of classes (follows from --data_name; must agree)", minimum=2),
    Option(
        "cuda", int, None, "1: train on CUDA (error if absent), 0: on CPU; default: CUDA if available", choices=(0, 1)
    ),
    Option(
        "cuda_graphs",
        int,
        None,
        "1: replay each training step as one CUDA graph where the method allows (kdpipe.capture), 0: launch its "
        "kernels one by one; default: 1 on CUDA (no effect on the CPU)",
        choices=(0, 1),
    ),
    Option(
        "memory_format",
        str,
        "auto",
        "layout of models and image batches: channels_last (NHWC), contiguous (NCHW), or auto: channels_last on CUDA, "
        "contiguous on the CPU; channels_last on the CPU trains faster (README, CPU throughput) but refuses a network "
        "with a strided 1x1 convolution of 2-7 input channels (resnet8w4, resnet14w4, resnet20w4), whose weight "
        "gradient torch's CPU channels_last path corrupts; the layouts differ by float rounding, so a run resumes "
        "only in its own",
        choices=("auto", "channels_last", "contiguous"),
    ),
    Option(
        "amp",
        str,
        "auto",
        "bf16 autocast of the forward passes: auto = on CUDA (not on the CPU), off = float32 throughout, as the "
        "reference implementations train; a run resumes only with its own",
        choices=("auto", "off"),
    ),
    Option("threads", int, None, "CPU threads for torch (default: torch's choice)", minimum=1, maximum=MAX_THREADS),
    Option("seed", int, 0, "random seed (init, shuffling, augmentation views)", minimum=0),
    Option("data_name", str, None, "cifar10, cifar100, digits or imagefolder:<path>", required=True),
    Option(
        "val_size",
        float,
        0.1,
        "validation split carved from training data: a fraction below 1, or a whole number of images; 0 = none",
        minimum=0,
        validate=val_size_rule,
    ),
    Option("split_seed", int, 0, "seed of the fixed train/val/test split", minimum=0),
    Option("train_subset", int, None, "train on the first N training images only (smoke tests)", minimum=2),
    Option("image_size", int, None, "imagefolder datasets: resize to this many pixels (default 32)", minimum=8),
    Option(
        "crop_padding",
        str,
        "auto",
        "what the random crop's padding fills with: reflect (KD-Zoo's CIFAR recipe), zeros (torchvision's "
        "RandomCrop(32, padding=4): RepDistiller's and mdistiller's), or auto: the dataset's own (reflect for "
        "CIFAR and image folders, zeros for digits)",
        choices=CROP_PADDINGS,
    ),
    Option(
        "data_manifest",
        str,
        None,
        "a data manifest (the workflow's results/<dataset>/data/manifest.json) that the data loaded must match: "
        "a run on other data is refused (default: none)",
    ),
]


def _modes() -> tuple:
    from .losses import LOSSES

    return tuple(LOSSES)


def _positive(name: str, help: str, integer: bool = False) -> Option:
    return Option(
        name,
        int if integer else float,
        None,
        help + " (default: the mode's reference value)",
        minimum=0,
        exclusive_min=not integer,
        nullable=True,
    )


def _nonnegative(name: str, help: str) -> Option:
    return Option(name, float, None, help + " (default: the mode's reference value)", minimum=0, nullable=True)


def _setting_choices(name: str) -> tuple:
    """The allowed values of a string-valued mode setting, as the losses declare them."""
    from .losses import LOSSES

    return tuple(dict.fromkeys(v for cls in LOSSES.values() for v in cls.setting_choices.get(name, ())))


def _form(name: str, help: str) -> Option:
    """A string-valued mode setting choosing between the reference implementation's form and the paper's."""
    return Option(
        name,
        str,
        None,
        help + " (default: the mode's reference value)",
        choices=lambda: _setting_choices(name),
        nullable=True,
    )


# Each change kdpipe made to what the FT paraphraser node computes, dated: its runs record the revision (option
# ``form``, 1 + these), so that a paraphraser of an earlier one is not taken for today's (the workflow re-plans it).
PARAPHRASER_REVISIONS = (
    "2026-11-28: the paraphraser kept is the last epoch's, as KD-Zoo and RepDistiller use it (it was the lowest "
    "validation loss's)",
)


def revision(revisions: tuple[str, ...]) -> int:
    """The revision of a computation with these dated ``revisions``: 1 + their number."""
    return 1 + len(revisions)


def recorded_form(revisions: tuple[str, ...]) -> int | None:
    """The option ``form`` a run of a computation records: its revision once revised, else unset (as runs
    recorded it before revisions existed, so that an unrevised computation's runs keep their identity).  The one
    rule for kd modes and the FT paraphraser, in the workflow's params and in the runs' fingerprints alike."""
    return revision(revisions) if revisions else None


# FT's paraphraser and translator shape (both FT entry points; a paraphraser must match the student run's)
FT_SHAPE = [
    Option(
        "ft_bn",
        str,
        "auto",
        "BatchNorm in paraphraser and translator: auto = KD-Zoo's choice (on, but off on cifar100), on, off; "
        "translator = in the translator only (RepDistiller's models/util.py)",
        choices=("auto", "on", "off", "translator"),
    ),
    Option(
        "ft_init",
        str,
        "kaiming",
        "initialisation of paraphraser and translator: kaiming = KD-Zoo's (Kaiming-normal fan_out convolutions, "
        "zero biases); torch = PyTorch's layer defaults (RepDistiller's)",
        choices=("kaiming", "torch"),
    ),
    Option(
        "para_decoder_out",
        str,
        "lrelu",
        "end of the paraphraser's decoder: lrelu = [BN +] LeakyReLU like every layer (KD-Zoo); "
        "linear = a plain transposed convolution with bias",
        choices=("lrelu", "linear"),
    ),
]

TEACHER_STUDENT = [
    Option("t_model", str, None, "teacher checkpoint (a kdpipe model.pt state dict)", required=True),
    Option("t_name", str, None, "teacher network", required=True, choices=_nets),
    Option("s_name", str, None, "student network", required=True, choices=_nets),
    Option("s_init", str, None, "initial student weights (default: the seeded initialisation)"),
]

# The kd modes' settings: each loss reads those in its ``defaults``; unset (None) = the mode's reference value.
MODE_OPTIONS = [
    _positive("T", "softmax temperature (st and dkd, and the st_weight term: default 4)"),
    _positive("p", "attention exponent (at)"),
    _nonnegative("w_dist", "RKD distance weight"),
    _nonnegative("w_angle", "RKD angle weight"),
    _nonnegative("m", "activation-boundary margin (ab)"),
    _nonnegative("gamma", "CC kernel width (0: constant kernel); DIST intra-class (per-class correlation) weight"),
    Option("P_order", int, None, "CC Taylor order (default 2)", minimum=0, nullable=True),
    _nonnegative("w_irg_vert", "IRG vertex weight"),
    _nonnegative("w_irg_edge", "IRG edge weight"),
    _nonnegative("w_irg_tran", "IRG transformation weight"),
    _positive("sf", "VID regressor width factor"),
    _positive("init_var", "VID initial variance"),
    _positive("att_f", "AFD attention width factor"),
    _nonnegative("alpha", "DKD target-class (TCKD) weight"),
    _nonnegative("beta", "DKD non-target-class (NCKD) weight; DIST inter-class (per-sample correlation) weight"),
    Option(
        "warmup",
        int,
        None,
        "dkd, reviewkd: epochs over which the distillation term ramps up linearly, min((epoch+1)/warmup, 1) "
        "(mdistiller; not the lr warm-up --warmup_epochs); 0 = none (default: the mode's reference value)",
        minimum=0,
        nullable=True,
    ),
    _positive("tau", "DIST softmax temperature"),
    _positive(
        "eps",
        "pkt: the guard added to the embeddings' norms and inside the log, 1e-6 (KD-Zoo) or 1e-7 (RepDistiller); "
        "vid: the variance floor, 1e-6 (KD-Zoo) or 1e-5 (RepDistiller)",
    ),
    Option(
        "k",
        int,
        None,
        "KDSVD: singular vectors kept per stage from the teacher (the student keeps k+3 to align from) "
        "(default: the mode's reference value)",
        minimum=1,
        nullable=True,
    ),
    _form(
        "logit_stand",
        "st, dkd, dist: on = z-score each sample's logits (teacher and student separately) before the "
        "temperature (Sun et al. 2024), off = raw logits; with on, its authors use T 2 and a KD weight of 9 "
        "(st: with --ce_weight 0.1)",
    ),
    _form(
        "svd_layout",
        "kdsvd matrix per stage: width = (C*H) x W, singular vectors over the width (mdistiller), "
        "channels = (H*W) x C, over the channels (paper)",
    ),
    _form("grad_norm", "sobolev: l2 = each sample's input gradient L2-normalised (KD-Zoo), none = raw (paper)"),
    _form(
        "margin",
        "ofd teacher margin: batch = E[t|t<0] per channel from the teacher's batch features (KD-Zoo), "
        "bn = from the teacher's batch-norm parameters (paper)",
    ),
    _form(
        "reduction",
        "ofd per-stage distance: mean = averaged over elements (KD-Zoo), "
        "sum_batch = summed and divided by batch size and 1000 (paper); ab per-stage loss: mean = averaged over "
        "elements (KD-Zoo), weighted_sum = summed, divided by batch size, x 3/1000 x 2^(i-n+1) for stage i of n "
        "(the AB authors' code, RepDistiller)",
    ),
    _form(
        "stage_reduce",
        "at, vid, nst, sp, ab, fsp: the per-stage terms averaged (mean, KD-Zoo's / 3) or summed "
        "(sum, RepDistiller's sum(loss_group): lambda_kd weighs each stage's term fully)",
    ),
    _form(
        "stages",
        "which stages: sp: all (stage i with stage i, KD-Zoo) or last (each network's last stage, RepDistiller's "
        "feat[-2]); nst: stage3 (KD-Zoo's rb3) or all (stage i with stage i, RepDistiller's feat[1:-1])",
    ),
    Option(
        "hint_stage",
        int,
        None,
        "fitnet: the stage (1-based, the same in both networks) whose output is the hint: 3 = KD-Zoo's rb3, "
        "2 = RepDistiller's --hint_layer 2 (default: the mode's reference value)",
        minimum=1,
        nullable=True,
    ),
    _form(
        "regressor",
        "fitnet: adapter = 1x1 conv + BN only where the shapes differ (KD-Zoo), convreg = RepDistiller's ConvReg "
        "always (conv with bias + BN + ReLU); vid: kdzoo = 1x1 convs without biases, Kaiming-normal (fan_out) "
        "weights (KD-Zoo), plain = without biases, torch's default init (RepDistiller), bias = with biases "
        "(kdpipe's default before 2026-11-27)",
    ),
    _form(
        "correlation",
        "cc: taylor = MSE of Taylor-expanded Gaussian-RBF correlation matrices (KD-Zoo), embed_pairs = "
        "RepDistiller's: learned 128-d linear embeddings of both networks, d = |e_s - e_t|, "
        "mean_i sum_k d_ik d_(i+1)k over consecutive samples",
    ),
    _form("cam", "lwm map: kdzoo = ReLU(sum_c alpha_c dz/dA_c) (KD-Zoo), gradcam = ReLU(sum_c alpha_c A_c) (paper)"),
    _form(
        "warmup_start",
        "reviewkd warm-up at 0-based epoch e: one = min((e+1)/warmup, 1), epochs counted from 1 (mdistiller), "
        "zero = min(e/warmup, 1), the first epoch undistilled (the paper's code)",
    ),
    Option(
        "max_mid_channel",
        int,
        None,
        "reviewkd ABF width: min(this, the student's embedding width) (default: the mode's reference value)",
        minimum=1,
        nullable=True,
    ),
    Option(
        "stu_preact",
        bool,
        None,
        "reviewkd: review the student's stage outputs before their final ReLU (mdistiller's STU_PREACT; "
        "default: after it)",
        nullable=True,
    ),
]

ENTRY_OPTIONS: dict[str, list[Option]] = {
    "base": [Option("net_name", str, None, "network to train", required=True, choices=_nets)],
    "kd": TEACHER_STUDENT
    + [
        Option("kd_mode", str, None, "distillation method", required=True, choices=_modes),
        Option(
            "form",
            int,
            None,
            "the revision of the mode's default computation the run is of (kdpipe.losses: each mode's dated "
            "revisions); unset = today's, the only one that trains; recorded where above 1, so that a finished "
            "run or checkpoint of an earlier revision is another run",
            minimum=1,
            nullable=True,
        ),
        _nonnegative("lambda_kd", "weight of the distillation term"),
        *MODE_OPTIONS,
        Option("st_weight", float, 0.0, "weight of an added soft-target (Hinton) term, for 'X + KD' runs", minimum=0),
        Option(
            "init_epochs",
            int,
            None,
            "initialisation epochs of two-stage modes (fsp, ab); default epochs/4",
            minimum=0,
            nullable=True,
        ),
        Option(
            "init_optimizer",
            str,
            "shared",
            "two-stage modes: shared = one SGD optimizer through both phases, momentum carried over (KD-Zoo); "
            "separate = a fresh optimizer for the CE phase; features = as separate, and the init phase trains "
            "only the student's stem, stages and the connector (no 0 x CE term; the head after the last stage, "
            "classifier and WRN's last BatchNorm, keeps its initial weights in eval mode: RepDistiller's init "
            "over get_feat_modules() and the connector)",
            choices=("shared", "separate", "features"),
        ),
        Option(
            "init_schedule",
            str,
            "steps",
            "two-stage modes' init-phase lr: steps = x0.1, x0.01, x0.001 of --lr over 60/20/20 % of init_epochs "
            "(KD-Zoo's 0.01/0.001/0.0001); constant = --lr throughout (RepDistiller's helper/pretrain.py)",
            choices=("steps", "constant"),
        ),
        Option(
            "teacher_cache",
            str,
            None,
            "directory of a teacher cache (python -m kdpipe teacher_cache) to read "
            "instead of running the teacher; modes logits, st, dkd, dist, pkt, rkd, cc only",
        ),
    ],
    "ft_paraphraser": [
        Option("t_model", str, None, "teacher checkpoint (a kdpipe model.pt state dict)", required=True),
        Option("t_name", str, None, "teacher network", required=True, choices=_nets),
        Option(
            "k",
            float,
            0.5,
            "factor rate: factor channels = k x teacher's last-stage channels",
            minimum=0,
            exclusive_min=True,
        ),
        *FT_SHAPE,
        Option(
            "form",
            int,
            None,
            "the revision of the paraphraser's computation the run is of (kdpipe.options.PARAPHRASER_REVISIONS); "
            "unset = today's, the only one that trains; recorded, so that a finished run or checkpoint of an "
            "earlier revision is another run",
            minimum=1,
            nullable=True,
        ),
    ],
    "ft": TEACHER_STUDENT
    + [
        Option("lambda_kd", float, 200.0, "weight of the factor-transfer term", minimum=0),
        Option("k", float, 0.5, "factor rate of the paraphraser", minimum=0, exclusive_min=True),
        Option(
            "factor_form",
            str,
            "flat",
            "how the FT loss reads a factor: flat = each sample's factor flattened and L2-normalised "
            "(KD-Zoo); spatial = the channel mean of its square, L2-normalised (RepDistiller's FactorTransfer)",
            choices=("flat", "spatial"),
        ),
        *FT_SHAPE,
        Option("paraphraser", str, None, "trained paraphraser (paraphraser.pt); default: train one first, in this run"),
        Option(
            "para_epochs",
            int,
            PARAPHRASER_EPOCHS,
            "paraphraser epochs when trained here (KD-Zoo: 30, at a constant lr, SGD without Nesterov)",
            minimum=1,
        ),
        Option(
            "para_lr",
            float,
            None,
            "paraphraser lr when trained here (default: --lr / 10, KD-Zoo's)",
            minimum=0,
            exclusive_min=True,
            nullable=True,
        ),
        Option("st_weight", float, 0.0, "weight of an added soft-target (Hinton) term", minimum=0),
        Option("T", float, 4.0, "temperature of the st_weight term", minimum=0, exclusive_min=True),
    ],
    "crd": TEACHER_STUDENT
    + [
        Option(
            "lambda_kd",
            float,
            None,
            "weight of the CRD term (default 0.2, or 0.8 with 100+ classes)",
            minimum=0,
            nullable=True,
        ),
        Option("feat_dim", int, 128, "embedding dimension", minimum=1),
        Option("nce_n", int, 16384, "negatives per sample", minimum=1),
        Option("nce_t", float, 0.1, "temperature", minimum=0, exclusive_min=True),
        Option("nce_mom", float, 0.5, "memory-bank momentum", minimum=0, maximum=1, exclusive_max=True),
        Option(
            "mode",
            str,
            "exact",
            "the positive: exact = the image itself; relax = a random image of its class (RepDistiller's modes)",
            choices=("exact", "relax"),
        ),
        Option(
            "sampler",
            str,
            "other_class",
            "negatives: other_class = images of other classes, without replacement (RepDistiller); "
            "uniform = any training image, with replacement",
            choices=("other_class", "uniform"),
        ),
        Option(
            "objective",
            str,
            "nce",
            "nce = the paper's NCE bound with a fixed normaliser (RepDistiller); infonce = softmax over the contrasts",
            choices=("nce", "infonce"),
        ),
        Option("st_weight", float, 0.0, "weight of an added soft-target (Hinton) term (crd+st)", minimum=0),
        Option("T", float, 4.0, "temperature of the st_weight term", minimum=0, exclusive_min=True),
        Option("teacher_cache", str, None, "directory of a teacher cache to read instead of running the teacher"),
    ],
    "teacher_cache": [
        Option("t_model", str, None, "teacher checkpoint (a kdpipe model.pt state dict)", required=True),
        Option("t_name", str, None, "teacher network", required=True, choices=_nets),
        Option("embeddings", bool, True, "also store pooled embeddings (for pkt, rkd, cc, crd)"),
        Option("cache_dtype", str, "float16", "storage precision", choices=("float16", "float32")),
        Option("batch_size", int, 1024, "images per teacher forward while building", minimum=1),
    ],
    "dml": [
        Option("net1_name", str, None, "first peer", choices=_nets),
        Option("net2_name", str, None, "second peer", choices=_nets),
        Option("net1_init", str, None, "initial weights of net1 (default: seeded initialisation)"),
        Option("net2_init", str, None, "initial weights of net2 (default: seeded initialisation)"),
        Option(
            "peers",
            list,
            None,
            "cohort of 2+ peers, e.g. resnet110,resnet20,resnet20 (instead of net1/net2)",
            choices=_nets,
            item_type=str,
            validate=_cohort_size,
        ),
        Option("peer_inits", list, None, "initial weights per peer (instead of net1_init/net2_init)", item_type=str),
        Option("lambda_kd", float, 1.0, "weight of the mutual KL terms", minimum=0),
    ],
    "bss": [
        Option("t_model", str, None, "teacher checkpoint (generation g-1 of a born-again chain)", required=True),
        Option("t_name", str, None, "teacher network", required=True, choices=_nets),
        Option("s_name", str, None, "student network", required=True, choices=_nets),
        Option("s_init", str, None, "initial student weights (default: seeded by seed and generation)"),
        Option("lambda_kd", float, 2.0, "peak weight of the adversarial soft-target term", minimum=0),
        Option("T", float, 3.0, "softmax temperature", minimum=0, exclusive_min=True),
        Option(
            "attack_size",
            int,
            32,
            "boundary samples per batch; 0 = plain soft targets (born-again networks)",
            minimum=0,
        ),
        Option(
            "attack_class",
            str,
            "sampled",
            "attack target: sampled = drawn from the teacher's softmax without its top-1 class (KD-Zoo); "
            "runner_up = the teacher's second class (the paper)",
            choices=("sampled", "runner_up"),
        ),
        Option(
            "attack_clamp",
            str,
            "normalized",
            "clamp of the boundary samples: normalized = to +-2.5 in normalised input space (KD-Zoo); "
            "image = to the valid image range",
            choices=("normalized", "image"),
        ),
        Option("generation", int, 1, "born-again generation this run produces (reporting, student init)", minimum=1),
    ],
}

# DOT (Zhao et al. 2023), an optimizer setting of every teacher-student entry (kdpipe.dot); unset = KD-Zoo's SGD.
DOT_OPTIONS = [
    Option(
        "dot_delta",
        float,
        None,
        "DOT, the distillation-oriented trainer: momentum + dot_delta for the distillation terms' gradient, "
        "momentum - dot_delta for the cross-entropy's, heavy-ball SGD without Nesterov (mdistiller); "
        "mdistiller's value: 0.075 (0.09 on ImageNet); default: off, SGD with Nesterov",
        minimum=0,
        nullable=True,
    ),
    Option(
        "dot_single",
        str,
        None,
        "DOT, parameters only one loss reaches (a connector; layers after a distilled feature): base = plain "
        "--momentum (mdistiller), own = that loss's momentum, the paper's two momenta taken literally (default: base)",
        choices=("base", "own"),
        nullable=True,
    ),
]
# The objective's cross-entropy weight, a setting of every teacher-student entry (and of kd.settings.<mode>).
OBJECTIVE_OPTIONS = [
    Option(
        "ce_weight",
        float,
        None,
        "weight of the cross-entropy term (default 1; RepDistiller's and mdistiller's KD: 0.1, with lambda_kd 0.9)",
        minimum=0,
        nullable=True,
    ),
]
OBJECTIVE_SETTINGS = tuple(option.name for option in OBJECTIVE_OPTIONS)
for _entry in ("kd", "ft", "crd", "bss"):
    ENTRY_OPTIONS[_entry] = ENTRY_OPTIONS[_entry] + OBJECTIVE_OPTIONS + DOT_OPTIONS

# Entry points whose defaults differ from the common table (KD-Zoo's FT paraphraser: 30 epochs at lr 0.01).
ENTRY_DEFAULTS: dict[str, dict] = {"ft_paraphraser": {"epochs": PARAPHRASER_EPOCHS, "lr": 0.01}}
# ... and whose common options mean something else there.
ENTRY_HELP: dict[str, dict[str, str]] = {
    "ft_paraphraser": {
        "momentum": "SGD momentum (without Nesterov, as KD-Zoo's paraphraser)",
        "milestones": "epochs at which lr is multiplied by 0.1 (default: none, a constant lr as KD-Zoo's paraphraser)",
    }
}


# The kd modes' settings: the kd options a loss may read (each loss takes those in its defaults);
# config kd.settings.<mode> accepts them plus the two-stage modes' init_epochs, init_optimizer and init_schedule.
MODE_SETTINGS = tuple(option.name for option in MODE_OPTIONS)
TWO_STAGE_SETTINGS = ("init_epochs", "init_optimizer", "init_schedule")
# The schedule options a sweep may vary besides a method's settings (config kd.sweep.<mode>.lr, crd.sweep.lr).
SWEEP_SCHEDULE = ("lr",)
# The config sections whose students take their settings from the section itself, and the settings their
# students read (the options of that entry): crd's, and ft's lambda_kd -- ft's k and shape are also the
# paraphraser's, a node shared by the students of a teacher, so they are not a student's own to vary.
SECTION_SETTINGS = {
    "crd": ("lambda_kd", "feat_dim", "nce_n", "nce_t", "nce_mom", "mode", "sampler", "objective"),
    "ft": ("lambda_kd",),
}


@dataclass(frozen=True)
class Entry:
    """An entry point, declared once: the command line (``python -m kdpipe <name>``), the Python
    API (``kdpipe.<function>``), the workflow's job dispatch and its options (``options_for``)."""

    name: str
    function: str  # the kdpipe.<function> of the Python API
    module: str  # where it is defined, relative to the kdpipe package (imported on first use)
    help: str
    prints: str | None = None  # the key of its record that the command prints to stdout
    task: str | None = None  # the Task class it trains, in ``module`` (the cost plan asks it whether it replays)


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "base",
            "train_base",
            ".methods.base",
            "plain supervised training of one network (teachers and baselines)",
            task="SupervisedTask",
        ),
        Entry(
            "kd",
            "train_kd",
            ".methods.kd",
            "distil a trained teacher into a student with one of the kd modes",
            task="DistillTask",
        ),
        Entry(
            "ft",
            "train_ft",
            ".methods.ft",
            "factor transfer: paraphraser on the teacher, translator on the student",
            task="FactorTransferTask",
        ),
        Entry(
            "ft_paraphraser",
            "train_ft_paraphraser",
            ".methods.ft",
            "train only FT's paraphraser on a teacher (the workflow's shared node)",
            task="ParaphraserTask",
        ),
        Entry(
            "crd",
            "train_crd",
            ".methods.crd",
            "contrastive representation distillation with a memory bank",
            task="ContrastiveTask",
        ),
        Entry(
            "dml",
            "train_dml",
            ".methods.dml",
            "deep mutual learning of 2+ peers, no pre-trained teacher",
            task="MutualTask",
        ),
        Entry(
            "bss",
            "train_bss",
            ".methods.bss",
            "boundary supporting samples + soft targets; one born-again generation",
            task="BoundarySampleTask",
        ),
        Entry(
            "teacher_cache",
            "build_teacher_cache",
            ".methods.teacher_cache",
            "run a frozen teacher on every view of every training image, once, for the students",
        ),
    )
}
assert set(ENTRIES) == set(ENTRY_OPTIONS), "every entry point has its options and vice versa"


def entry_function(entry: str) -> Callable[..., dict]:
    """The Python function of an entry point (imports its module, and so torch, on first use)."""
    import importlib

    spec = ENTRIES[entry]
    return getattr(importlib.import_module(spec.module, __package__), spec.function)


def entry_task(entry: str):
    """The Task class an entry point trains (imports torch), or None for one that trains nothing."""
    import importlib

    spec = ENTRIES[entry]
    return getattr(importlib.import_module(spec.module, __package__), spec.task) if spec.task else None


def find_option(entry: str, name: str) -> Option:
    """An entry point's option by name (common or its own), with the entry's default."""
    for opt in options_for(entry):
        if opt.name == name:
            return opt
    raise KeyError(f"{entry} has no option {name!r}")


def unless_default(entry: str, **options) -> dict:
    """The options given that are not at ``entry``'s defaults: how an option kdpipe added later
    (``ADDED_WITH_A_DEFAULT``) enters a workflow job's params and a run's settings, so that the params, settings
    and runs made before it stay as they were."""
    return {name: value for name, value in options.items() if value != find_option(entry, name).default}


# Options that may differ between a checkpoint and its resumption without changing results.
RESUME_NEUTRAL = {
    *("save_root", "note", "other_settings", "img_root", "download", "print_freq", "threads", "cuda", "cuda_graphs"),
    "data_manifest",  # a check of the data, which the fingerprint's data_sha256 identifies
}

# Options that a later kdpipe added with a default other than None.  A fingerprint without one (a finished run's
# or a checkpoint's, written by an older kdpipe) reads as having that default, so that such runs still stand for
# runs at the default; any other absent key reads as None, an option left unset.
ADDED_WITH_A_DEFAULT = {"memory_format", "crop_padding", "amp", "factor_form", "ft_init"}
_ADDED_DEFAULTS = {
    opt.name: opt.default
    for opt in [*COMMON, *(o for opts in ENTRY_OPTIONS.values() for o in opts)]
    if opt.name in ADDED_WITH_A_DEFAULT
}
assert set(_ADDED_DEFAULTS) == ADDED_WITH_A_DEFAULT, "each an option"
assert all(
    o.default == _ADDED_DEFAULTS[o.name] for opts in ENTRY_OPTIONS.values() for o in opts if o.name in _ADDED_DEFAULTS
), "one default wherever the option is taken"


def fingerprint_options(opts: dict) -> dict:
    """The options a finished run or a checkpoint must share with a run to stand for it."""
    return {k: v for k, v in opts.items() if k not in RESUME_NEUTRAL}


def differing_keys(stored: dict, current: dict) -> list[str]:
    """Fingerprint keys whose values differ; a key absent on one side counts as None there (or as the
    default of an option added with one), so an option added by a later kdpipe does not make finished
    runs or checkpoints look different."""
    return sorted(
        k for k in set(stored) | set(current) if fingerprint_value(stored, k) != fingerprint_value(current, k)
    )


def fingerprint_value(fingerprint: dict, key: str) -> Any:
    """``fingerprint[key]``, or what an absent key means (see ``ADDED_WITH_A_DEFAULT``); ``crop_padding`` as the
    padding it gives the fingerprint's data (``auto`` is ``reflect`` on CIFAR: writing it out is no new recipe)."""
    if key in fingerprint:
        value = fingerprint[key]
    else:
        value = _ADDED_DEFAULTS.get(key)
    if key == "crop_padding" and isinstance(fingerprint.get("data_name"), str) and value in CROP_PADDINGS:
        from .data import augmentation_of  # torch: only where runs are compared
        from .errors import KdpipeError

        try:
            return augmentation_of(fingerprint.get("data_name"), fingerprint.get("image_size"), value).pad_mode
        except KdpipeError:  # no such data (a damaged record): the value as written
            return value
    return value


# What each common option is about.  Every "which options does X take" derives from these
# groups: entry points that do not train, FT's in-run paraphraser, the workflow's data node.
COMMON_GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("save_root", "note"),
    "rerun": ("other_settings",),  # training runs only: what a directory holding another run gets
    "data": (
        *("data_name", "img_root", "download", "val_size", "split_seed", "train_subset", "image_size", "num_class"),
        *("crop_padding", "data_manifest"),
    ),
    "device": ("cuda", "cuda_graphs", "memory_format", "amp", "threads"),
    "log": ("print_freq",),
    "seed": ("seed",),
    "schedule": ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "milestones", "warmup_epochs"),
}
assert sorted(n for names in COMMON_GROUPS.values() for n in names) == sorted(o.name for o in COMMON), "ungrouped"


def common_options(*groups: str) -> tuple[str, ...]:
    """Names of the common options in ``groups``, e.g. ``common_options("data")``."""
    return tuple(name for group in groups for name in COMMON_GROUPS[group])


# Entry points that do not train: they take the run, data, device and seed options only.
NON_TRAINING = {"teacher_cache": set(common_options("run", "data", "device", "seed"))}


# ---------------------------------------------------------------- convert_teacher (kdpipe.convert), declared here
# in one block: its options, its entry, and no common options (it reads one file and writes one model.pt).
def _convertible() -> tuple:
    import importlib

    return importlib.import_module(".convert", __package__).CONVERTIBLE  # torch-free: the nets it has rules for


ENTRY_OPTIONS["convert_teacher"] = [
    Option(
        "src",
        str,
        None,
        "teacher file of RepDistiller's train_teacher.py or mdistiller's cifar_teachers.tar "
        "(a dict with 'model' = state dict), read weights-only",
        required=True,
    ),
    Option(
        "net",
        str,
        None,
        "the network in --src, by kdpipe's name (RepDistiller's ResNet50 = resnet50, vggN_bn = vggN, "
        "MobileNetV2 = mobilenet_v2, ShuffleV1/ShuffleV2 = shufflenet_v1/shufflenet_v2)",
        required=True,
        choices=_convertible,
    ),
    Option("out", str, None, "kdpipe model.pt to write (and <out>.json: source sha256, mapping)", required=True),
    Option(
        "source",
        str,
        "auto",
        "layout of --src: repdistiller and mdistiller (one layout), kdpipe (checked and re-saved), "
        "auto = whichever the file's keys are",
        choices=("auto", "repdistiller", "mdistiller", "kdpipe"),
    ),
    Option("num_class", int, None, "classes of the teacher (default: its classifier's; must agree)", minimum=2),
]
ENTRIES["convert_teacher"] = Entry(
    "convert_teacher",
    "convert_teacher",
    ".convert",
    "turn a RepDistiller or mdistiller CIFAR teacher file into a kdpipe model.pt (weights-only, every key checked)",
)
NON_TRAINING["convert_teacher"] = set()

# import_teacher (kdpipe.methods.imported): convert_teacher's file options, into a finished run evaluated on the
# run's data (the workflow's node for a pair's teacher_checkpoint).
ENTRY_OPTIONS["import_teacher"] = [
    Option(
        "src",
        str,
        None,
        "teacher file: a kdpipe model.pt, or a RepDistiller / mdistiller teacher (a dict with 'model' = state dict); "
        "read weights-only",
        required=True,
    ),
    next(o for o in ENTRY_OPTIONS["convert_teacher"] if o.name == "source"),
    Option("net_name", str, None, "the network in --src, by kdpipe's name", required=True, choices=_nets),
]
ENTRIES["import_teacher"] = Entry(
    "import_teacher",
    "import_teacher",
    ".methods.imported",
    "a teacher trained elsewhere (kdpipe, RepDistiller or mdistiller file) as a finished run: converted, "
    "evaluated on the run's data",
)
NON_TRAINING["import_teacher"] = set(common_options("run", "data", "device", "seed"))

# plan (kdpipe.costplan): a config's jobs by rule with estimated device-hours; no common options, trains nothing.
ENTRY_OPTIONS["plan"] = [
    Option(
        "configfile",
        list,
        None,
        "the workflow config file(s) to plan, as snakemake --configfile takes them: a later file's keys override "
        "an earlier one's, nested mappings merged key by key",
        required=True,
        item_type=str,
        validate=lambda paths: next((f"no such file: {p}" for p in paths if not Path(p).is_file()), None),
    ),
    Option(
        "device",
        str,
        "h200",
        "the device of each job, by its name in the calibration table (e.g. h200: measured as kdpipe trains today; "
        "h200-eager, h100: eager steps; cpu)",
    ),
    Option("calibration", str, None, "step-cost table to read (default: kdpipe/reference/step_costs.csv)"),
]
ENTRIES["plan"] = Entry(
    "plan",
    "plan_cost",
    ".costplan",
    "a config's jobs by rule with estimated GPU-hours, from measured step costs, before a cluster run",
    prints="table",
)
NON_TRAINING["plan"] = set()
assert set(ENTRIES) == set(ENTRY_OPTIONS), "every entry point has its options and vice versa"


def options_for(entry: str) -> list[Option]:
    from dataclasses import replace

    overrides, helps = ENTRY_DEFAULTS.get(entry, {}), ENTRY_HELP.get(entry, {})
    common = [replace(o, default=overrides[o.name]) if o.name in overrides else o for o in COMMON]
    common = [replace(o, help=helps[o.name]) if o.name in helps else o for o in common]
    if entry in NON_TRAINING:
        common = [o for o in common if o.name in NON_TRAINING[entry]]
    return common + ENTRY_OPTIONS[entry]


def resolve(entry: str, kwargs: dict) -> dict:
    """Validate API keyword arguments; returns every option with defaults filled in."""
    table = {opt.name: opt for opt in options_for(entry)}
    unknown = sorted(set(kwargs) - set(table))
    if unknown:
        raise KdpipeError(f"train_{entry}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(table))}")
    return {name: opt.check(kwargs.get(name), "") for name, opt in table.items()}


class _JoinWords(argparse.Action):
    """A list of numbers' words as one string, which :meth:`Option.check` splits on commas and spaces as it
    splits the API's string (``--milestones 100 150``, ``100,150``, ``"100 150"``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, " ".join(values))


class _ListWords(argparse.Action):
    """A list of names' or paths' words: each word one item, or several separated by commas (``--peers a,b``);
    a path with spaces is one quoted word."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [item for word in values for item in word.split(",")])


class _Parser(argparse.ArgumentParser):
    """The command line's parser and each entry's: a flag is taken only as spelled in full (a prefix of one, such
    as Snakemake's ``--config`` of ``plan``'s ``--configfile``, is an unknown argument); errors in one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_to_parser(parser: argparse.ArgumentParser, entry: str) -> None:
    for opt in options_for(entry):
        if opt.type is bool:
            # bare --nesterov is true; a value says either way (--nesterov false, --embeddings 0), as the API's
            # and the config's false does: a store_true flag could not turn off an option that defaults on
            shape = {"nargs": "?", "const": "true", "metavar": "{true,false}"}
        elif opt.type is list:
            # a list takes its items as separate words or one comma/space separated word: --milestones 100 150
            shape = {"nargs": "+", "action": _ListWords if opt.item_type is str else _JoinWords}
            shape["metavar"] = opt.name.upper()
        else:
            shape = {"metavar": opt.name.upper()}
        default = str(opt.default).lower() if opt.type is bool else opt.default
        default_note = "" if opt.default is None else f" (default: {default})"
        parser.add_argument(
            f"--{opt.name}",
            type=str,  # converted and range-checked by Option.check, so errors read the same as the API's
            default=None,
            required=opt.required,
            help=(opt.help + default_note).replace("%", "%%"),
            **shape,
        )


def make_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="kdpipe: knowledge distillation runs")
    sub = parser.add_subparsers(
        dest="entry", required=True, metavar="{" + ",".join(ENTRIES) + "}", parser_class=_Parser
    )
    for entry in ENTRIES.values():
        p = sub.add_parser(entry.name, help=entry.help, description=entry.help)
        add_to_parser(p, entry.name)
    return parser
