"""Plan-time compatibility of the kd modes with the config's teacher/student pairs.

The rule lives in the losses: a mode that cannot distil two networks refuses when it is built
(e.g. a ``stagewise`` mode on networks of different stage counts, ``kdsvd``'s ``k`` beyond a
stage's singular vectors, a setting out of range).  :func:`check_pairs` builds each distinct
(mode, teacher, student, settings, input size) loss of a config once -- every point of a ``kd.sweep``
included -- on the networks' probed tap shapes, and turns the first refusal into one config line
naming the pair, the key that plans the mode (or the swept values), the mode and why -- when
Snakemake parses the Snakefile, before any job runs.

Cost: every network of the config is built once per (image size, classes) on the CPU and probed
with a batch of two under ``torch.no_grad`` (:class:`kdpipe.losses.TapShapes`), on one torch thread
(on a loaded machine two threads took ten times as long); the networks are dropped after the check
(the Snakemake process lives as long as the workflow), and a config already checked is not
checked again.

``ft``, ``crd`` and ``bss`` have nothing to refuse here: FT reads each network's last stage through
its own paraphraser and translator, CRD each network's embedding through its own projection, BSS
the logits -- any two networks of one dataset (the same classes) fit them.
"""

from __future__ import annotations

import json

from .config import data_name, image_size
from .errors import KdpipeError
from .plan import pair_variants, split_variant, sweep_points, sweep_value_text

_CHECKED: set[str] = set()  # configs (as JSON) this process has checked


def probe_input(config: dict, dataset: str) -> tuple[int, int]:
    """(image size, classes) a dataset's runs see, known without reading its files. An image folder's
    classes are known only from its files; any count serves, teacher and student get the same."""
    from .data import DIGITS_SIZE, IMAGEFOLDER_SIZE, num_classes_of

    name = data_name(config, dataset)
    size = DIGITS_SIZE if name == "digits" else image_size(config, dataset) or IMAGEFOLDER_SIZE
    return size, num_classes_of(name) or 10


def probe(net: str, size: int, classes: int):
    """(TapShapes, the built network) of ``net`` for ``classes`` classes at ``size`` x ``size`` RGB inputs."""
    from .losses import TapShapes
    from .models import build_model

    model = build_model(net, classes)
    return TapShapes.probe(model, (3, size, size)), model


def loss_settings(config: dict, pair: dict, mode: str) -> dict:
    """The loss settings of ``mode`` for a pair's students: ``kd.settings`` then the pair's own (what
    :func:`kdpipe.workflow.kd_options` passes on), less the two-stage schedule keys."""
    from .losses import LOSSES

    settings = {**config["kd"]["settings"].get(mode, {}), **pair.get("settings", {}).get(mode, {})}
    return {k: v for k, v in settings.items() if k in LOSSES[mode].defaults}


def _cases(config: dict, pair: dict, i: int) -> list[tuple[str, str, dict]]:
    """(mode, the key that plans it, loss settings) of each loss a pair's kd students build: each mode's own
    settings, then those of each point of its sweep (a pair that runs the plain mode runs its sweep)."""
    from .losses import LOSSES

    cases = []
    variants = pair_variants(config, pair)
    for mode in dict.fromkeys(split_variant(v)[0] for v in variants):
        settings = loss_settings(config, pair, mode)
        cases.append((mode, _planned_by(config, mode, i), settings))
        for point in sweep_points(config, mode) if mode in variants else []:
            swept = {k: v for k, v in point if k in LOSSES[mode].defaults}
            if swept:
                where = ", ".join(f"{k}={sweep_value_text(v)}" for k, v in swept.items())
                cases.append((mode, f"kd.sweep.{mode} ({where}):", {**settings, **swept}))
    return cases


def _planned_by(config: dict, mode: str, i: int) -> str:
    for key in ("modes", "with_st", "with_dot"):
        if mode in config["kd"][key]:
            return f"kd.{key}"
    return f"pairs.{i}.with_dot"


def check_pairs(config: dict) -> None:
    """Refuse, in one line, the first planned (pair, kd mode) whose loss cannot be built."""
    key = json.dumps(config, sort_keys=True, default=str)
    if key in _CHECKED:
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            _check(config)
    finally:
        torch.set_num_threads(threads)
    _CHECKED.add(key)


def _check(config: dict) -> None:
    from .losses import LOSSES

    probes: dict[tuple[str, int, int], tuple] = {}  # (net, image size, classes) -> (TapShapes, network)
    built: set[str] = set()  # each distinct loss once
    for dataset in config["datasets"]:
        size, classes = probe_input(config, dataset)
        for i, pair in enumerate(config["pairs"]):
            teacher, student = pair["teacher"], pair["student"]
            for mode, planned_by, settings in _cases(config, pair, i):
                case = json.dumps([mode, teacher, student, size, classes, settings], sort_keys=True, default=str)
                if case in built:
                    continue
                for net in (teacher, student):
                    if (net, size, classes) not in probes:
                        probes[net, size, classes] = probe(net, size, classes)
                t_shapes, t_model = probes[teacher, size, classes]
                s_shapes = probes[student, size, classes][0]
                try:
                    LOSSES[mode](s_shapes, t_shapes, teacher_model=t_model, **settings)
                except KdpipeError as exc:
                    why = str(exc).removeprefix(f"kd_mode {mode}: ")
                    where = f" on {dataset}" if len(config["datasets"]) > 1 else ""
                    if planned_by.startswith("kd.sweep"):
                        raise KdpipeError(
                            f"config pairs.{i} ({teacher} -> {student}{where}), {planned_by} {why}; "
                            f"drop the value from the sweep, or list {mode} under pairs.{i}.skip"
                        ) from None
                    raise KdpipeError(
                        f"config pairs.{i} ({teacher} -> {student}{where}), {planned_by} {mode}: {why}; "
                        f"drop the pair or the mode, or list {mode} under pairs.{i}.skip"
                    ) from None
                built.add(case)
