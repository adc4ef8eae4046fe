"""Pieces shared by the entry points that read trained networks."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..checkpoint import safe_load_state_dict
from ..data import Normalizer
from ..engine import Context, evaluate_model
from ..errors import KdpipeError
from ..models import build_model

log = logging.getLogger(__name__)


def load_network(path: str | Path, name: str, num_classes: int, flag: str) -> nn.Module:
    """Build ``name`` and load a state dict saved by kdpipe (``model.pt``), weights only.

    A checkpoint that does not fit the architecture or the data's class count is one
    clear error naming the flag, the file and the first mismatch.
    """
    state = safe_load_state_dict(path, flag)
    model = build_model(name, num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        if mismatched:
            k = mismatched[0]
            detail = f"{k} has shape {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the network"
        elif missing:
            detail = f"{len(missing)} missing keys (first: {missing[0]})"
        else:
            detail = f"{len(unexpected)} unexpected keys (first: {unexpected[0]})"
        raise KdpipeError(f"{flag} {path}: does not fit {name} with {num_classes} classes: {detail}")
    model.load_state_dict(state)
    return model


def frozen(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients: how every teacher is used."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(ctx: Context) -> nn.Module:
    """The frozen ``t_model`` teacher (a ``t_name`` network), on the task's device."""
    opts = ctx.opts
    return frozen(ctx.prepare(load_network(opts["t_model"], opts["t_name"], ctx.data.num_classes, "t_model")))


def open_cache(ctx: Context, need_embedding: bool):
    """The verified teacher cache named by ``--teacher_cache``, or None (live teacher)."""
    if not ctx.opts.get("teacher_cache"):
        return None
    from ..cache import load_cache

    return load_cache(ctx.opts["teacher_cache"], ctx.opts["t_model"], ctx.data, ctx.device, need_embedding)


def cached_taps(cache, index, view_ids):
    """Teacher taps read from a cache: logits and (when stored) the pooled embedding."""
    from ..models import FeatureTaps

    outputs = cache.lookup(index, view_ids)
    return FeatureTaps(None, (), (), outputs.get("embedding"), outputs["logits"])


def check_st_temperature(entry: str):
    """The settle step of an entry whose ``T`` serves only its ``--st_weight`` term (crd, ft): a ``T`` other
    than the default without that term would be silently ignored, so it is refused."""
    from ..options import find_option

    default = find_option(entry, "T").default

    def settle(opts: dict) -> None:
        if opts["T"] != default and not opts["st_weight"]:
            raise KdpipeError(
                f"T: {opts['T']:g} is the temperature of the --st_weight term, which is 0 (off); "
                f"set --st_weight too, or leave T at {default:g}"
            )

    return settle


def settle_form(opts: dict, revisions: tuple[str, ...], subject: str) -> None:
    """``form``: the revision of ``subject``'s computation (1 + its dated ``revisions``) where it has been revised,
    else unset (as before revisions existed, so that an unrevised computation's runs keep their identity); any
    other value is refused -- kdpipe trains only today's form."""
    from ..options import recorded_form, revision

    current = revision(revisions)
    if opts["form"] is None:
        opts["form"] = recorded_form(revisions)
    elif opts["form"] != current:
        raise KdpipeError(
            f"form: got {opts['form']}; {subject} computes revision {current} "
            f"({revisions[-1] if revisions else 'never revised'}); only that one trains"
        )


def cache_input(opts: dict, taps: frozenset | None) -> dict:
    """The cache's manifest as a run input: its sha256 ties a run to the exact cache it read -- for a student of
    the logits alone, the manifest of the logits (:func:`kdpipe.cache.reader_manifest`).  ``taps``: what the run
    reads through the cache (its task's ``cache_taps_of``, also what it loads)."""
    if not opts.get("teacher_cache"):
        return {}
    from ..cache import reader_manifest

    return {"teacher_cache": str(reader_manifest(opts["teacher_cache"], "embedding" in (taps or ())))}


def teacher_test_accuracy(teacher: nn.Module, ctx: Context) -> float:
    normalize = Normalizer(ctx.data.mean, ctx.data.std, ctx.device, ctx.channels_last)
    return evaluate_model(teacher, ctx, ctx.data.test_x, ctx.data.test_y, normalize)[1]


def teacher_data(t_model: str | Path, data) -> str:
    """Whether the teacher trained on this run's data, by the ``run.json`` beside its ``model.pt``: ``same``
    (the same images in the same splits), ``other`` (other images or splits: its training set may hold this
    run's validation or test images), ``unknown`` (no run record there: a file from elsewhere)."""
    from ..summary import read_run_record

    path = Path(t_model).parent / "run.json"
    record = read_run_record(path)[0] if path.is_file() else None
    teacher_data = record.get("data") if record else None
    if not isinstance(teacher_data, dict) or "sha256" not in teacher_data:
        return "unknown"
    if teacher_data["sha256"] == data.sha256:
        return "same"
    log.warning(
        "t_model %s was trained on other data than this run's (its run.json: data sha256 %s..., this run: %s...): "
        "its training set may hold this run's validation or test images",
        t_model,
        str(teacher_data["sha256"])[:12],
        data.sha256[:12],
    )
    return "other"
