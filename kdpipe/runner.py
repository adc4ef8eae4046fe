"""From validated options to a finished run directory.

A run directory is complete when its ``run.json`` exists (it is written last, after
``model.pt`` and ``metrics.csv``) together with the files it lists.  Until then the directory
holds ``checkpoint.pt`` (written atomically every epoch), from which a killed run resumes
exactly; a final checkpoint rewrites every output.  While a process trains in a run directory it
holds the directory's lock (``run.lock``), and a second process on it is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import __version__, hostmem
from .checkpoint import (
    CHECKPOINT,
    LOCK_FILE,
    atomic_save,
    atomic_write_json,
    run_dir_lock,
    load_run_checkpoint,
    sha256_file,
)
from .data import ImageData, check_data_name, load_data, num_classes_of
from .engine import (
    Context,
    Task,
    check_checkpoint_fingerprint,
    current_run_dir,
    fit,
    fit_together,
    rng_state,
    running_in,
    seed_everything,
    set_rng_state,
)
from .errors import KdpipeError
from .gpus import claim_gpu
from .options import differing_keys, fingerprint_options, resolve

log = logging.getLogger("kdpipe")

# The workflow plan's identity of the run being trained (kdpipe.plan.RunId.record()), set by the
# in-job glue around a rule's call; run.json stores it under "run".  None for CLI and API runs.
_PLANNED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kdpipe_planned_identity", default=None)


@contextlib.contextmanager
def planned_identity(identity: dict | None):
    token = _PLANNED.set(identity)
    try:
        yield
    finally:
        _PLANNED.reset(token)


def planned_run() -> dict | None:
    """The planned identity of the run being written (``run.json``'s ``run``), or None outside a workflow job."""
    return _PLANNED.get()


def select_device(cuda: int | None) -> torch.device:
    if cuda == 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = claim_gpu()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if cuda == 1:
        raise KdpipeError("cuda: 1 asks for a CUDA device but none is available; use --cuda 0 or leave it unset")
    return torch.device("cpu")


def versions() -> dict:
    import torchvision

    return {
        "kdpipe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
    }


def _finite_or_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def load_options_data(opts: dict) -> ImageData:
    """The dataset the resolved options name (split, image size and training subset applied), checked against
    ``--data_manifest`` where one is given."""
    data = load_data(
        opts["data_name"],
        opts["img_root"],
        opts["val_size"],
        opts["download"],
        opts["split_seed"],
        opts["image_size"],
        opts["train_subset"],
        opts["crop_padding"],
    )
    if opts.get("data_manifest"):
        check_data_manifest(opts["data_manifest"], data)
    return data


def check_data_manifest(path: str | Path, data: ImageData) -> None:
    """Refuse ``data`` unless it is what the manifest at ``path`` describes: the workflow's data node is made
    again only when Snakemake sees its files change (a newer modification time), so data replaced by files with
    older times (``cp -p``, ``rsync -a``, an unpacked archive) would otherwise mix two datasets in one table."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdpipeError(f"data_manifest: cannot read {path} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    made = manifest.get("sha256") if isinstance(manifest, dict) else None
    if made != data.sha256:
        raise KdpipeError(
            f"data_manifest: {path} describes other data (sha256 {str(made)[:12]}...) than {data.name} holds now "
            f"({data.sha256[:12]}...): its files changed since it was made; make it again "
            f"(snakemake --forcerun {path}), which re-runs the runs of that data"
        )


def check_num_class(opts: dict, data: ImageData | None = None) -> None:
    known = data.num_classes if data is not None else num_classes_of(opts["data_name"])
    if known is not None and opts["num_class"] is not None and opts["num_class"] != known:
        raise KdpipeError(f"num_class: got {opts['num_class']}, but data_name {opts['data_name']} has {known} classes")


def differing(stored: dict, current: dict) -> str:
    """What differs between two fingerprints, for an error line: 'data (...)' or 'settings (lr, T)'."""
    keys = differing_keys(stored, current)
    if keys == ["data_sha256"]:
        old, new = str(stored.get("data_sha256"))[:12], str(current["data_sha256"])[:12]
        return f"data (dataset content sha256 {old}... there, {new}... now)"
    return f"settings ({', '.join(keys)})"


# While run_together collects runs, run_entry hands it its run instead of training it (see there).
_COLLECT: contextvars.ContextVar[list | None] = contextvars.ContextVar("kdpipe_collect_runs", default=None)


def run_entry(
    entry: str,
    kwargs: dict,
    build_task: Callable[[Context], Task],
    default_note: Callable[[dict], str],
    input_files: Callable[[dict], dict[str, str]] = lambda opts: {},
    settle: Callable[[dict], None] = lambda opts: None,
) -> dict:
    """Validate, load data, build the task, train (resuming if possible), write artefacts.

    Every check that can fail on bad input runs before the run directory is created.  ``settle`` fills in
    place the options whose value follows from others, before the run's fingerprint is taken (kd: ``form``).
    Returns the content of ``run.json``.
    """
    run = _run(entry, kwargs, build_task, default_note, input_files, settle)
    collected = _COLLECT.get()
    if collected is not None:
        collected.append(run)
        return {}
    try:
        job = next(run)
    except StopIteration as finished:  # already complete
        return finished.value
    return _finish(run, fit(*job))


def _finish(run, result) -> dict:
    try:
        run.send(result)
    except StopIteration as finished:
        return finished.value
    raise RuntimeError("a run yielded twice")


def run_together(
    calls: list[tuple[Callable[[], object], dict | None]],
    together: Callable[[Task], bool] = lambda task: task.capture_key(0) is not None,
) -> list[dict]:
    """Several entry-point calls in one process: the runs whose steps can be CUDA graphs (``together``)
    train together (:func:`kdpipe.engine.fit_together`, each on its own CUDA stream), the others one
    after another.  ``calls``: (a call of an entry function, e.g. ``lambda: train_kd(**opts)``, and
    the run's planned identity for run.json or None).  Returns each call's run record, in order.

    Each run is what it would be alone: its own checks, directory lock, train.log (its lines only),
    checkpoints, random number generators (from its own seed) and outputs.  A run that fails stops
    the others after their last finished epoch (their checkpoints resume them)."""
    runs, records = [], [None] * len(calls)
    try:
        for i, (call, identity) in enumerate(calls):
            collected: list = []
            token = _COLLECT.set(collected)
            try:
                call()
            finally:
                _COLLECT.reset(token)
            if len(collected) != 1:
                raise RuntimeError(f"call {i} started {len(collected)} runs, not one")
            with planned_identity(identity):
                try:
                    job = next(collected[0])
                except StopIteration as finished:
                    records[i] = finished.value
                else:  # the generators as the run seeded them: fit would start from them alone
                    runs.append((i, collected[0], identity, job, rng_state()))
        joint, alone = [], []
        for r in runs:
            (joint if together(r[3][0]) else alone).append(r)
        results = fit_together([r[3] for r in joint], [r[4] for r in joint]) if joint else []
        for (i, run, identity, _, _), result in zip(joint, results):
            with planned_identity(identity):
                records[i] = _finish(run, result)
        for i, run, identity, job, state in alone:
            set_rng_state(state)
            with planned_identity(identity):
                records[i] = _finish(run, fit(*job))
    finally:
        for run in runs:
            run[1].close()  # a run left unfinished releases its lock and log
    return records


def _run(entry, kwargs, build_task, default_note, input_files, settle):
    """One run as a generator: prepares (checks, data, task, lock, log) and yields ``(task, ctx,
    fingerprint)`` for the caller to fit; is sent the FitResult and returns the run record.  A run
    already complete returns its record without yielding."""
    opts = resolve(entry, kwargs)
    settle(opts)
    check_data_name(opts["data_name"])
    check_num_class(opts)
    opts["note"] = opts["note"] or default_note(opts)
    run_dir = Path(opts["save_root"]) / opts["note"]
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    inputs = {
        name: {"path": str(path), "sha256": sha256_file(path)}
        for name, path in input_files(opts).items()
        if path and Path(path).is_file()
    }
    wall0 = time.perf_counter()
    data = load_options_data(opts)
    check_num_class(opts, data)
    fingerprint = fingerprint_options(opts)
    fingerprint["inputs"] = {name: item["sha256"] for name, item in inputs.items()}
    fingerprint["data_sha256"] = data.sha256  # the files' content, wherever --img_root points

    replace = opts["other_settings"] == "replace"
    record = finished_record(run_dir, fingerprint, replace)
    if record is not None:
        return record

    device = select_device(opts["cuda"])
    ctx = Context(opts, data, device, run_dir)
    seed_everything(opts["seed"])
    task = build_task(ctx)  # loads teachers etc.; may raise before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        replaced = set_aside_other_run(run_dir, fingerprint, replace)  # refused here unless replace
        record = finished_record(run_dir, fingerprint)  # finished by the lock's last holder?
        if record is not None:
            return record
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler.addFilter(lambda rec: current_run_dir() in (None, run_dir))
        log.addHandler(handler)
        try:
            with running_in(run_dir):
                layout = "channels_last" if ctx.channels_last else "contiguous"
                malloc = f", malloc {hostmem.current()}" if hostmem.current() else ""
                log.info(
                    "%s: %s on %s, device %s (%s)%s, run dir %s",
                    entry,
                    task.method,
                    opts["data_name"],
                    device,
                    layout,
                    malloc,
                    run_dir,
                )
                if replaced:
                    log.info("%s held a run with other %s; its files are in %s; training anew", run_dir, *replaced)
                late = [m for m in opts.get("milestones") or () if m >= opts["epochs"]]
                if late:  # PyTorch's step schedules accept them too; the lr simply never drops there
                    log.warning(
                        "warning: milestones %s are not below epochs %d: the lr is never multiplied by 0.1 there",
                        ", ".join(map(str, late)),
                        opts["epochs"],
                    )
            result = yield task, ctx, fingerprint
            with running_in(run_dir):
                record = finalize(entry, task, ctx, result, fingerprint, inputs, time.perf_counter() - wall0)
        finally:
            log.removeHandler(handler)
            handler.close()
    return record


def finished_record(run_dir: Path, fingerprint: dict, replace: bool = False) -> dict | None:
    """``run.json`` of a finished run with these settings whose outputs are all there; else None.

    A finished run with other settings is refused, or with ``replace`` (``--other_settings replace``) not
    this run's: None (:func:`set_aside_other_run` moves it away under the run's lock).  One with an output
    missing (deleted by hand, or by Snakemake after a job was killed between its outputs) is finished again
    from its checkpoint, which rewrites every output.
    """
    finished = run_dir / "run.json"
    if not finished.is_file():
        return None
    record = _read_run_record(run_dir, finished)
    if differing_keys(record.get("fingerprint", {}), fingerprint):
        if replace:
            return None
        raise KdpipeError(
            f"{run_dir} holds a finished run with other {differing(record.get('fingerprint', {}), fingerprint)}; "
            "choose another --note/--save_root, delete it, or set it aside with --other_settings replace"
        )
    missing = [name for name in record.get("outputs", []) if not (run_dir / name).is_file()]
    if missing:
        log.info("%s is finished but %s missing; rewriting its outputs", run_dir, ", ".join(missing))
        return None
    log.info("%s is already complete; nothing to do", run_dir)
    return record


def _read_run_record(run_dir: Path, finished: Path) -> dict:
    """``run.json`` as a dict, or one line naming it and what to do: a damaged one is not guessed at, and
    nothing is deleted (the run's model.pt may be fine)."""
    from .summary import read_run_record

    record, problem = read_run_record(finished)
    if record is not None:
        return record
    if (run_dir / CHECKPOINT).is_file():
        todo = f"delete it to rewrite the run's outputs from its {CHECKPOINT}, or delete {run_dir} to train it anew"
    else:
        todo = f"delete it, or delete {run_dir} to train the run anew"
    raise KdpipeError(f"{finished}: {problem}; kdpipe cannot tell whether the run finished: {todo}")


REPLACED_DIR = "replaced"


def set_aside_other_run(run_dir: Path, fingerprint: dict, replace: bool) -> tuple[str, Path] | None:
    """Where ``run_dir`` holds a run made with other settings, inputs or data (its ``run.json`` or its
    ``checkpoint.pt`` says so): with ``replace``, move that run's files into ``run_dir/replaced/<UTC time>/``
    (the directories inside, e.g. FT's own paraphraser run, stay: they are runs of their own) so that this run
    trains anew, and return (what differed, where the files went); else refuse it in one line, before this
    run writes anything there.  None when the directory holds nothing of another run.  The caller holds the
    run directory's lock."""
    record, checkpoint = run_dir / "run.json", run_dir / CHECKPOINT
    stored = []
    if record.is_file():
        stored.append((record, json.loads(record.read_text()).get("fingerprint", {})))
    if checkpoint.is_file():
        stored.append((checkpoint, load_run_checkpoint(checkpoint).get("fingerprint", {})))
    other = next(((path, s) for path, s in stored if differing_keys(s, fingerprint)), None)
    if other is None:
        return None
    path, previous = other
    if not replace:
        if path == record:
            finished_record(run_dir, fingerprint)  # raises: a finished run with other settings
        check_checkpoint_fingerprint(path, previous, fingerprint)  # raises
    what = differing(previous, fingerprint)
    dest = run_dir / REPLACED_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    while dest.exists():  # two replacements within a second
        dest = dest.with_name(dest.name + "+")
    dest.mkdir(parents=True)
    for item in sorted(run_dir.iterdir()):
        if item.is_file() and item.name != LOCK_FILE:
            item.rename(dest / item.name)
    return what, dest


def role_record(identity: dict, model: torch.nn.Module, best: dict, last: dict) -> dict:
    """``run.json``'s record of one role: its identity (``Task.identity``), parameter count, the epoch
    best on validation with its accuracies, and the last epoch's (``best``/``last``: metrics rows)."""
    return {
        **identity,
        "params": sum(p.numel() for p in model.parameters()),
        "best_epoch": best["epoch"],
        "best_val_acc": _finite_or_none(best["val_acc"]),
        "test_acc_at_best": _finite_or_none(best["test_acc"]),
        "last_val_acc": _finite_or_none(last["val_acc"]),
        "last_test_acc": _finite_or_none(last["test_acc"]),
    }


def write_run_record(
    entry: str,
    method: str,
    ctx: Context,
    roles: dict,
    *,
    epochs: int,
    train_time_s: float,
    mean_epoch_s: float | None,
    wall_time_s: float,
    resumed_at_epochs: list,
    resumed_elsewhere: list,
    step: str | None,
    fingerprint: dict,
    inputs: dict,
    info: dict,
    settings: dict,
    outputs: list,
) -> dict:
    """Write ``run.json``, a run directory's last file (a finished run is one that has it), and return it:
    what the run did, as given, and what the context and this process tell (device, data, versions)."""
    opts = ctx.opts
    record = {
        "kdpipe": __version__,
        "entry": entry,
        "method": method,
        "run": planned_run(),
        "dataset": opts["data_name"],
        "seed": opts["seed"],
        "epochs": epochs,
        "roles": roles,
        "train_time_s": train_time_s,
        "mean_epoch_s": mean_epoch_s,
        "wall_time_s": wall_time_s,
        "resumed_at_epochs": resumed_at_epochs,
        "resumed_elsewhere": resumed_elsewhere,
        "device": str(ctx.device),
        "amp_bf16": ctx.amp,
        "channels_last": ctx.channels_last,
        "step": step,
        "threads": torch.get_num_threads(),
        "malloc": hostmem.current(),
        "config": opts,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "data": ctx.data.describe(),
        "info": info,
        "settings": settings,
        "outputs": outputs,
        "versions": versions(),
        "argv": sys.argv,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(ctx.run_dir / "run.json", record)
    return record


def finalize(entry, task: Task, ctx: Context, result, fingerprint, inputs, wall_time) -> dict:
    run_dir = ctx.run_dir
    roles = list(task.roles)
    for role in roles:
        atomic_save(result.best[role]["state"], run_dir / task.model_file(role))
    epochs_run = sorted({row["epoch"] for row in result.history})
    role_records = {}
    for role in roles:
        rows = [r for r in result.history if r["role"] == role]
        role_records[role] = role_record(task.identity(role), task.roles[role], result.best[role], rows[-1])
    record = write_run_record(
        entry,
        task.method,
        ctx,
        role_records,
        epochs=ctx.opts["epochs"],
        train_time_s=result.train_time_s,
        mean_epoch_s=result.train_time_s / max(1, len(epochs_run)),
        wall_time_s=wall_time,
        resumed_at_epochs=result.resumed_at,
        resumed_elsewhere=result.resumed_elsewhere,
        step=result.step_mode,
        fingerprint=fingerprint,
        inputs=inputs,
        info=task.info(),
        settings=task.settings(),
        outputs=[task.model_file(role) for role in roles] + ["metrics.csv"],
    )
    log.info(
        "done: %s",
        "; ".join(
            f"{role} best-on-val epoch {r['best_epoch']} test {_pct(r['test_acc_at_best'])}, "
            f"last {_pct(r['last_test_acc'])}"
            for role, r in role_records.items()
        ),
    )
    return record
