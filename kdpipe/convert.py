"""``convert_teacher``: a CIFAR teacher trained by RepDistiller or mdistiller, as a kdpipe ``model.pt``.

``python -m kdpipe convert_teacher --src ckpt_epoch_240.pth --net resnet32x4 --out teachers/resnet32x4/model.pt``

The file.  RepDistiller's ``train_teacher.py`` saves ``{'epoch', 'model': state_dict, 'best_acc',
'optimizer'}``; mdistiller's teacher download (``cifar_teachers.tar``: ``<name>_vanilla/ckpt_epoch_240.pth``)
holds those same files, and mdistiller reads them as ``load_checkpoint(path)["model"]``; its own
``student_best`` files are ``{'model': state_dict}``.  The state dict is taken from ``'model'``, else
``'state_dict'``, else the file is taken to be one; a ``module.`` prefix on every key (a model saved
inside ``DataParallel``) is dropped.  The file is read weights-only (:func:`kdpipe.checkpoint.safe_load`):
tensors and plain containers, never a pickled Python object, so it cannot run code.

The mapping.  Both references define these nets in the same ``models/*.py`` (mdistiller's
``mdistiller/models/cifar/`` copies RepDistiller's, adding only plain attributes), so their parameter
and buffer names are one layout.  For each family, :data:`RULES` names the reference's module for
each of ours, from the two definitions' module structure (``s``, ``b``: our 0-based stage and block;
the suffix ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked`` is kept):

* resnet (resnet8 ... resnet110, resnet8x4, resnet32x4; models/resnet.py): ``conv1``, ``bn1``, ``fc`` as
  they are; ``stages.s.blocks.b.{conv1,bn1,conv2,bn2}`` <- ``layer{s+1}.b.*``;
  ``...shortcut.{0,1}`` <- ``layer{s+1}.b.downsample.{0,1}``.
* resnet50 (models/resnetv2.py ``ResNet50``): ``conv1``, ``bn1``; ``fc`` <- ``linear``;
  ``stages.s.blocks.b.{conv1-3,bn1-3,shortcut.0,shortcut.1}`` <- ``layer{s+1}.b.*``.
* wrn (models/wrn.py): ``conv1``, ``bn1`` (the final norm), ``fc``; ``stages.s.blocks.b.{bn1,conv1,bn2,conv2}``
  <- ``block{s+1}.layer.b.*``; ``...shortcut`` <- ``block{s+1}.layer.b.convShortcut``.
* vgg (models/vgg.py ``vgg*_bn``): ``stem.i`` <- ``block0.i``; ``stages.s.i`` <- ``block{s+1}.i`` (the same
  conv, bn, relu positions in each ``Sequential``); ``fc`` <- ``classifier``.
* mobilenet_v2 (models/mobilenetv2.py ``mobile_half``): ``conv1``/``bn1`` <- ``conv1.0``/``conv1.1``;
  ``conv2``/``bn2`` <- ``conv2.0``/``conv2.1``; ``fc`` <- ``classifier.0``; ``stages.s.j.conv.k`` <-
  ``blocks.g.i.conv.k``, our four stages being the reference's seven groups (1, 2, 3, 4, 3, 3, 1 blocks)
  taken as (0, 1), (2), (3, 4), (5, 6).
* shufflenet_v1 (models/ShuffleNetv1.py ``ShuffleV1``): ``conv1``, ``bn1``; ``fc`` <- ``linear``;
  ``stages.s.units.u.conv{n}.0``/``.1`` <- ``layer{s+1}.u.conv{n}``/``bn{n}``.
* shufflenet_v2 (models/ShuffleNetv2.py ``ShuffleV2``): ``conv1``, ``bn1``, ``conv2``, ``bn2``; ``fc`` <-
  ``linear``; the down-sampling unit ``stages.s.units.0.{left.0,left.1,right.0,right.2,right.3}.{0,1}`` <-
  ``layer{s+1}.0.{conv,bn}{1,2,3,4,5}``; a basic unit's ``branch.{0,2,3}.{0,1}`` <- ``layer{s+1}.u.{conv,bn}{1,2,3}``.

The checks.  Every key of the file must be the reference's name of one of the net's keys, with the
same shape; every key of the net must come from the file.  The one exception: a file written by a
PyTorch before 0.4.1 has no ``num_batches_tracked`` buffers at all; they are then set to 0 (batch
norms with a momentum, as all of these, never read them).  Floating-point tensors of another
precision are cast to the net's (float32).  The first problem is one error line naming the file, the
key and what was expected, and nothing is written.  The net's classifier fixes the class count:
``num_class`` defaults to the file's, and a given one must agree.

The output: ``out`` (the state dict in the net's own key order, what ``--t_model`` reads) and
``<out>.json`` (the source file's sha256, the layout, net, mapping summary and the file's epoch and
best accuracy where it has them), both written atomically.

This module imports torch on first use only, so that the command line's option table can list the
convertible nets without it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable

from .errors import KdpipeError

log = logging.getLogger("kdpipe")

SOURCES = ("auto", "repdistiller", "mdistiller", "kdpipe")

# our net -> (family, the net's name in the references' model dicts)
NETS: dict[str, tuple[str, str]] = {
    **{f"resnet{d}": ("resnet", f"resnet{d}") for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": ("resnet", "resnet8x4"),
    "resnet32x4": ("resnet", "resnet32x4"),
    "resnet50": ("resnet50", "ResNet50"),
    **{f"wrn_{d}_{w}": ("wrn", f"wrn_{d}_{w}") for d in (16, 40) for w in (1, 2)},
    **{f"vgg{d}": ("vgg", f"vgg{d}_bn") for d in (8, 11, 13, 16, 19)},
    "mobilenet_v2": ("mobilenet_v2", "MobileNetV2 (mobile_half)"),
    "shufflenet_v1": ("shufflenet_v1", "ShuffleV1"),
    "shufflenet_v2": ("shufflenet_v2", "ShuffleV2"),
}
CONVERTIBLE = tuple(NETS)

# MobileNetV2: the reference's seven groups of inverted residuals (its interverted_residual_setting's n), and
# which of them make each of our four stages (kdpipe.models.mobilenetv2.STAGE_GROUPS)
MOBILENET_GROUP_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
MOBILENET_STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))

# ShuffleNetV2: our unit's conv+bn pair -> the reference's conv{n}/bn{n} number
SHUFFLE_V2_DOWN = {"left.0": 1, "left.1": 2, "right.0": 3, "right.2": 4, "right.3": 5}
SHUFFLE_V2_BASIC = {"branch.0": 1, "branch.2": 2, "branch.3": 3}


def _mobilenet_block(stage: int, index: int) -> tuple[int, int]:
    """Our ``stages.{stage}.{index}`` -> the reference's ``blocks.{group}.{block}``."""
    for group in MOBILENET_STAGE_GROUPS[stage]:
        if index < MOBILENET_GROUP_BLOCKS[group]:
            return group, index
        index -= MOBILENET_GROUP_BLOCKS[group]
    raise KeyError(f"stages.{stage}.{index}")


def _conv_or_bn(position: str, number: Any) -> str:
    """A ``Sequential(conv, bn)`` of ours: position 0 is the reference's ``conv{n}``, 1 its ``bn{n}``."""
    return f"{'conv' if position == '0' else 'bn'}{number}"


def _up(m: re.Match, group: int = 1) -> int:
    return int(m[group]) + 1


# A rule: (our module path, a regular expression matched in full; the reference's module path; what it says)
Rule = tuple[str, Callable[[re.Match], str], str]
SAME: Callable[[re.Match], str] = lambda m: m[0]  # noqa: E731

RULES: dict[str, tuple[Rule, ...]] = {
    "resnet": (
        (r"conv1|bn1|fc", SAME, "conv1, bn1, fc: the same"),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.(conv[12]|bn[12])",
            lambda m: f"layer{_up(m)}.{m[2]}.{m[3]}",
            "layer{s+1}.{b}.{conv,bn}{1,2} -> stages.{s}.blocks.{b}.*",
        ),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.shortcut\.([01])",
            lambda m: f"layer{_up(m)}.{m[2]}.downsample.{m[3]}",
            "layer{s+1}.{b}.downsample.{0,1} -> stages.{s}.blocks.{b}.shortcut.{0,1}",
        ),
    ),
    "resnet50": (
        (r"conv1|bn1", SAME, "conv1, bn1: the same"),
        (r"fc", lambda m: "linear", "linear -> fc"),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.(conv[123]|bn[123]|shortcut\.[01])",
            lambda m: f"layer{_up(m)}.{m[2]}.{m[3]}",
            "layer{s+1}.{b}.{conv,bn}{1,2,3}, .shortcut.{0,1} -> stages.{s}.blocks.{b}.*",
        ),
    ),
    "wrn": (
        (r"conv1|bn1|fc", SAME, "conv1, bn1, fc: the same"),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.(bn[12]|conv[12])",
            lambda m: f"block{_up(m)}.layer.{m[2]}.{m[3]}",
            "block{s+1}.layer.{b}.{bn,conv}{1,2} -> stages.{s}.blocks.{b}.*",
        ),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.shortcut",
            lambda m: f"block{_up(m)}.layer.{m[2]}.convShortcut",
            "block{s+1}.layer.{b}.convShortcut -> stages.{s}.blocks.{b}.shortcut",
        ),
    ),
    "vgg": (
        (r"stem\.(\d+)", lambda m: f"block0.{m[1]}", "block0.{i} -> stem.{i}"),
        (r"stages\.(\d+)\.(\d+)", lambda m: f"block{_up(m)}.{m[2]}", "block{s+1}.{i} -> stages.{s}.{i}"),
        (r"fc", lambda m: "classifier", "classifier -> fc"),
    ),
    "mobilenet_v2": (
        (r"conv1", lambda m: "conv1.0", "conv1.0 -> conv1"),
        (r"bn1", lambda m: "conv1.1", "conv1.1 -> bn1"),
        (r"conv2", lambda m: "conv2.0", "conv2.0 -> conv2"),
        (r"bn2", lambda m: "conv2.1", "conv2.1 -> bn2"),
        (r"fc", lambda m: "classifier.0", "classifier.0 -> fc"),
        (
            r"stages\.(\d+)\.(\d+)\.conv\.([0-7])",
            lambda m: "blocks.{}.{}.conv.{}".format(*_mobilenet_block(int(m[1]), int(m[2])), m[3]),
            "blocks.{g}.{i}.conv.{k} -> stages.{s}.{j}.conv.{k}, groups (0,1),(2),(3,4),(5,6) -> stages 0-3",
        ),
    ),
    "shufflenet_v1": (
        (r"conv1|bn1", SAME, "conv1, bn1: the same"),
        (r"fc", lambda m: "linear", "linear -> fc"),
        (
            r"stages\.(\d+)\.units\.(\d+)\.conv([123])\.([01])",
            lambda m: f"layer{_up(m)}.{m[2]}.{_conv_or_bn(m[4], m[3])}",
            "layer{s+1}.{u}.conv{n}, .bn{n} -> stages.{s}.units.{u}.conv{n}.0, .1",
        ),
    ),
    "shufflenet_v2": (
        (r"conv1|bn1|conv2|bn2", SAME, "conv1, bn1, conv2, bn2: the same"),
        (r"fc", lambda m: "linear", "linear -> fc"),
        (
            r"stages\.(\d+)\.units\.0\.(left\.[01]|right\.[023])\.([01])",
            lambda m: f"layer{_up(m)}.0.{_conv_or_bn(m[3], SHUFFLE_V2_DOWN[m[2]])}",
            "layer{s+1}.0.{conv,bn}{1..5} -> stages.{s}.units.0.{left.0,left.1,right.0,right.2,right.3}.{0,1}",
        ),
        (
            r"stages\.(\d+)\.units\.(\d+)\.(branch\.[023])\.([01])",
            lambda m: f"layer{_up(m)}.{m[2]}.{_conv_or_bn(m[4], SHUFFLE_V2_BASIC[m[3]])}",
            "layer{s+1}.{u}.{conv,bn}{1,2,3} -> stages.{s}.units.{u}.branch.{0,2,3}.{0,1}",
        ),
    ),
}


def reference_name(net: str, key: str) -> str:
    """The reference's (RepDistiller's and mdistiller's) name of our state-dict key ``key`` of ``net``."""
    module, _, leaf = key.rpartition(".")
    for pattern, name, _ in RULES[NETS[net][0]]:
        m = re.fullmatch(pattern, module)
        if m:
            return f"{name(m)}.{leaf}"
    raise KdpipeError(f"convert_teacher: no mapping rule for {net}'s {key} (kdpipe.convert.RULES is out of date)")


def reference_names(net: str, keys) -> dict[str, str]:
    """reference name -> our key, for every key of the net; a bijection by construction, checked."""
    mapping: dict[str, str] = {}
    for key in keys:
        ref = reference_name(net, key)
        if ref in mapping:
            raise KdpipeError(f"convert_teacher: {net}'s {mapping[ref]} and {key} both map to {ref}")
        mapping[ref] = key
    return mapping


def _shape(shape) -> str:
    return "(" + ",".join(str(n) for n in shape) + ")"


def _expected_model(net: str, num_class: int):
    """The net (on the CPU: its first build on the meta device costs seconds), without touching the global RNG."""
    import torch

    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        return build_model(net, num_class)


def convert_state_dict(
    state: dict, net: str, num_class: int | None = None, source: str = "auto", where: str = "src"
) -> tuple[dict, dict]:
    """Rename and check a reference-layout (or kdpipe) state dict for ``net``.

    Returns our state dict (the net's key order) and a summary of the mapping; raises one
    :class:`KdpipeError` line, prefixed with ``where``, at the first key that does not fit.
    """
    import torch

    if net not in NETS:
        raise KdpipeError(
            f"{where}: cannot convert to {net!r}; RepDistiller's and mdistiller's nets are: " + ", ".join(CONVERTIBLE)
        )
    if source not in SOURCES:
        raise KdpipeError(f"{where}: source {source!r}; allowed: {', '.join(SOURCES)}")
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise KdpipeError(f"{where}: not a state dict (names -> tensors)")
    stripped = None
    if all(k.startswith("module.") for k in state):  # saved from inside DataParallel
        state, stripped = {k[len("module.") :]: v for k, v in state.items()}, "module."
    if any(k.startswith(("student.", "teacher.")) for k in state):
        raise KdpipeError(
            f"{where}: an mdistiller distiller checkpoint (student. and teacher. keys together); "
            "convert its teacher's own file, or the student_best file of the net you want"
        )
    family, ref_net = NETS[net]

    # the class count: the file's classifier (its name in the file's layout), unless given
    given_classes = num_class is not None
    classifier_names = {"kdpipe": ["fc.weight"], "auto": [reference_name(net, "fc.weight"), "fc.weight"]}
    candidates = classifier_names.get(source, [reference_name(net, "fc.weight")])
    if num_class is None:
        found = next((k for k in candidates if k in state and state[k].dim() == 2), None)
        if found is None:
            raise KdpipeError(f"{where}: no key {candidates[0]} (the classifier of {net}) in the file; is --net right?")
        num_class = int(state[found].shape[0])
        if num_class < 2:
            raise KdpipeError(f"{where}: classifier {found} has {num_class} rows; not a classifier")
    model = _expected_model(net, num_class)
    expected = model.state_dict()

    # the layout: kdpipe's names, or the references'
    ref_to_ours = reference_names(net, expected)
    if source == "auto":
        in_ours, in_ref = sum(k in expected for k in state), sum(k in ref_to_ours for k in state)
        layout = "kdpipe" if in_ours > in_ref else "reference"
        resolved = "kdpipe" if layout == "kdpipe" else "repdistiller"
    else:
        layout = "kdpipe" if source == "kdpipe" else "reference"
        resolved = source
    to_ours = {k: k for k in expected} if layout == "kdpipe" else ref_to_ours
    described = f"kdpipe's {net}" if layout == "kdpipe" else f"RepDistiller's/mdistiller's {ref_net}"
    if source == "auto" and 2 * max(in_ours, in_ref) < len(state):  # the file fits neither layout: say so
        described = f"{net} in kdpipe's or RepDistiller's/mdistiller's names"

    has_counters = any(k.endswith("num_batches_tracked") for k in state)
    out: dict[str, Any] = {}
    cast: dict[str, int] = {}
    for key, value in state.items():
        ours = to_ours.get(key)
        if ours is None:
            raise KdpipeError(
                f"{where}: key {key} is not a parameter or buffer of {described} ({len(expected)} keys); "
                + ("is --net right?" if source == "auto" else "are --net and --source right?")
            )
        want = expected[ours]
        if tuple(value.shape) != tuple(want.shape):
            classifier = ours.startswith("fc.")
            raise KdpipeError(
                f"{where}: key {key} has shape {_shape(value.shape)}, "
                + (f"{net} with {num_class} classes" if classifier else net)
                + f" expects {_shape(want.shape)} at {ours}; "
                + ("is --num_class right?" if classifier and given_classes else "is --net right?")
            )
        if value.dtype != want.dtype:
            if not (value.is_floating_point() and want.is_floating_point()):
                raise KdpipeError(f"{where}: key {key} is {value.dtype}, {net} expects {want.dtype} at {ours}")
            label = f"{str(value.dtype).replace('torch.', '')}->{str(want.dtype).replace('torch.', '')}"
            cast[label] = cast.get(label, 0) + 1
            value = value.to(want.dtype)
        out[ours] = value

    def fillable(ours: str) -> bool:  # a PyTorch < 0.4.1 file: no batch-norm counters at all
        return ours.endswith("num_batches_tracked") and not has_counters

    filled = 0
    ours_to_file = {ours: k for k, ours in to_ours.items()}
    for ours, want in expected.items():
        if ours in out:
            continue
        if fillable(ours):
            out[ours] = torch.zeros((), dtype=want.dtype)
            filled += 1
            continue
        missing = sum(1 for k in expected if k not in out and not fillable(k))
        raise KdpipeError(
            f"{where}: no key {ours_to_file[ours]} (for {ours}): {net} has {len(expected)} keys, "
            f"{missing} of them missing in the file; is --net right?"
        )
    ordered = {k: out[k] for k in expected}
    model.load_state_dict(ordered, strict=True)  # the strict load a teacher gets (load_network)
    renamed = sum(1 for k, ours in to_ours.items() if k in state and k != ours)
    summary = {
        "family": family,
        "reference_net": ref_net,
        "layout": layout,
        "source": resolved,
        "num_class": num_class,
        "keys": len(ordered),
        "renamed": renamed,
        "same_name": len(state) - renamed,
        "rules": [rule[2] for rule in RULES[family]] if layout == "reference" else ["kdpipe names: none"],
        "stripped_prefix": stripped,
        "filled_num_batches_tracked": filled,
        "cast": cast,
    }
    return ordered, summary


def _load(src: Path) -> Any:
    """The file, weights-only: a pickled Python object in it is refused, naming it where torch does
    (:func:`kdpipe.checkpoint.safe_load`)."""
    from .checkpoint import safe_load

    return safe_load(src, "src")


def _state_dict_of(obj: Any, where: str) -> tuple[dict, str]:
    """The state dict inside a loaded file, and where it was: 'model', 'state_dict' or the file itself."""
    if isinstance(obj, dict):
        for field in ("model", "state_dict"):
            if isinstance(obj.get(field), dict):
                return obj[field], field
        import torch

        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj, "file"
        fields = ", ".join(repr(k) for k in list(obj)[:6])
        raise KdpipeError(
            f"{where}: no state dict found: expected a dict with 'model' (RepDistiller, mdistiller) or "
            f"'state_dict', or a state dict itself; its top-level keys are {fields or 'none'}"
        )
    raise KdpipeError(f"{where}: no state dict found: the file holds a {type(obj).__name__}, not a dict")


def _scalar(value: Any) -> Any:
    """An epoch or accuracy from the file as a JSON number (RepDistiller stores best_acc as a tensor)."""
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def convert_teacher(**kwargs) -> dict:
    """Convert a RepDistiller / mdistiller CIFAR teacher file into a kdpipe ``model.pt``.

    Keyword arguments are the flags of ``python -m kdpipe convert_teacher`` (``src``, ``net``, ``out``,
    ``source``, ``num_class``).  Writes ``out`` and ``<out>.json``; returns the latter's record.  Any
    problem is one :class:`KdpipeError` line, and then nothing is written.
    """
    from .checkpoint import atomic_save, atomic_write_json, sha256_file
    from .options import options_for, resolve

    allowed = sorted(opt.name for opt in options_for("convert_teacher"))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise KdpipeError(f"convert_teacher: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    opts = resolve("convert_teacher", kwargs)
    src, out = Path(opts["src"]), Path(opts["out"])
    where = f"src {src}"
    if not src.is_file():
        raise KdpipeError(f"{where}: no such file")
    if out.exists() and out.resolve() == src.resolve():
        raise KdpipeError(f"out {out}: is --src itself; write the kdpipe model.pt elsewhere")
    if out.is_dir():
        raise KdpipeError(f"out {out}: is a directory; name the model.pt to write")
    obj = _load(src)
    state, container = _state_dict_of(obj, where)
    converted, mapping = convert_state_dict(state, opts["net"], opts["num_class"], opts["source"], where)
    source = mapping.pop("source")
    if opts["source"] == "auto" and source != "kdpipe" and container == "model" and set(obj) == {"model"}:
        source = "mdistiller"  # its trainer's student files; RepDistiller's train_teacher adds epoch, best_acc...
    from_file = {k: _scalar(obj.get(k)) for k in ("epoch", "best_acc")} if container != "file" else {}
    record = {
        "entry": "convert_teacher",
        "src": {"path": str(src), "sha256": sha256_file(src), "state_dict": container},
        "source": source,
        "source_requested": opts["source"],
        "net": opts["net"],
        "num_class": mapping.pop("num_class"),
        "mapping": mapping,
        **{k: v for k, v in from_file.items() if v is not None},
        "out": str(out),
    }
    atomic_save(converted, out)
    record["out_sha256"] = sha256_file(out)
    sidecar = out.with_name(out.name + ".json")
    atomic_write_json(sidecar, record)
    log.info(
        "%s: %s %s (%d keys, %d renamed) -> %s (+ %s)",
        src,
        source,
        opts["net"],
        mapping["keys"],
        mapping["renamed"],
        out,
        sidecar.name,
    )
    return record
