"""``import_teacher``: a teacher trained elsewhere, as a finished kdpipe run (the workflow's ``teacher_checkpoint``).

The file is a RepDistiller / mdistiller teacher (converted by name, :mod:`kdpipe.convert`) or a kdpipe
``model.pt``, read weights-only.  The run directory gets what a trained base run leaves: ``model.pt``
(what students read as ``--t_model``), a one-row ``metrics.csv`` and ``run.json`` with the network's
validation and test accuracy measured here on the run's data -- so a table's teacher row shows what
this checkpoint scores on our split, beside the published number -- the source file's sha256 and the
conversion's summary.  Nothing is trained: ``epochs`` is 0 and the file's own epoch and best accuracy,
where it records them, are kept under ``info``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_save, run_dir_lock, sha256_file
from ..data import Normalizer, check_data_name
from ..engine import METRIC_COLUMNS, Context, evaluate_model, write_metrics
from ..errors import KdpipeError
from ..models import build_model
from ..options import fingerprint_options, resolve
from ..runner import (
    check_num_class,
    finished_record,
    load_options_data,
    role_record,
    select_device,
    write_run_record,
)
from .common import load_network

log = logging.getLogger("kdpipe")


def _weights(src: Path, net: str, num_classes: int, source: str) -> tuple[dict, dict]:
    """(the net's state dict, what the conversion did) from ``src``; one error line where it does not fit."""
    from ..convert import CONVERTIBLE, _load, _scalar, _state_dict_of, convert_state_dict

    where = f"teacher_checkpoint {src}"
    if net not in CONVERTIBLE:  # a network of kdpipe's own: only its own model.pt layout
        if source not in ("auto", "kdpipe"):
            raise KdpipeError(f"{where}: {net} is kdpipe's own network; {source} has no such net (use source kdpipe)")
        model = load_network(src, net, num_classes, "teacher_checkpoint")
        return model.state_dict(), {"source": "kdpipe", "state_dict": "file"}
    obj = _load(src)
    state, container = _state_dict_of(obj, where)
    converted, mapping = convert_state_dict(state, net, num_classes, source, where)
    summary = {**mapping, "state_dict": container}
    if container != "file":
        summary.update({k: _scalar(obj.get(k)) for k in ("epoch", "best_acc") if obj.get(k) is not None})
    return converted, summary


def import_teacher(**kwargs) -> dict:
    """Convert ``src`` for ``net_name``, evaluate it on the run's data and write a finished run.

    Keyword arguments are the flags of ``python -m kdpipe import_teacher``; returns ``run.json``.
    A finished import of the same file, network and data is kept as it is.
    """
    opts = resolve("import_teacher", kwargs)
    check_data_name(opts["data_name"])
    check_num_class(opts)
    src = Path(opts["src"])
    if not src.is_file():
        raise KdpipeError(f"teacher_checkpoint {src}: no such file")
    note = opts["note"] or f"imported-{opts['data_name'].replace(':', '_').replace('/', '_')}-{opts['net_name']}"
    run_dir = Path(opts["save_root"]) / note
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    wall0 = time.perf_counter()
    data = load_options_data(opts)
    check_num_class(opts, data)
    src_sha = sha256_file(src)
    fingerprint = fingerprint_options(opts)
    fingerprint.update(inputs={"src": src_sha}, data_sha256=data.sha256)
    record = finished_record(run_dir, fingerprint)
    if record is not None:
        return record
    state, conversion = _weights(src, opts["net_name"], data.num_classes, opts["source"])
    device = select_device(opts["cuda"])
    ctx = Context(opts, data, device, run_dir)
    model = build_model(opts["net_name"], data.num_classes)
    model.load_state_dict(state)
    model = ctx.prepare(model)
    normalize = Normalizer(data.mean, data.std, device, ctx.channels_last)
    val_loss, val_acc = evaluate_model(model, ctx, data.val_x, data.val_y, normalize)
    test_loss, test_acc = evaluate_model(model, ctx, data.test_x, data.test_y, normalize)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        atomic_save(state, run_dir / "model.pt")
        row = dict.fromkeys(METRIC_COLUMNS, "")
        row.update(epoch=0, role="net", val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc)
        write_metrics(run_dir / "metrics.csv", [row])
        measured = {"epoch": None, "val_acc": val_acc, "test_acc": test_acc}  # best and last: the one evaluation
        identity = {
            "method": "baseline",
            "variant": "imported",
            "teacher": "",
            "student": opts["net_name"],
            "generation": None,
        }
        record = write_run_record(
            "import_teacher",
            "baseline",
            ctx,
            {"net": role_record(identity, model, measured, measured)},
            epochs=0,
            train_time_s=0.0,
            mean_epoch_s=None,
            wall_time_s=time.perf_counter() - wall0,
            resumed_at_epochs=[],
            resumed_elsewhere=[],
            step=None,
            fingerprint=fingerprint,
            inputs={"src": {"path": str(src), "sha256": src_sha}},
            info={"teacher_checkpoint": str(src), "conversion": conversion},
            settings={"teacher_checkpoint": src.name},
            outputs=["model.pt", "metrics.csv"],
        )
    log.info(
        "%s: %s from %s: val %.2f %%, test %.2f %% -> %s",
        opts["data_name"],
        opts["net_name"],
        src,
        val_acc,
        test_acc,
        run_dir,
    )
    return record
