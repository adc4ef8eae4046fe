"""The in-job glue: what every ``scripts/*.py`` calls inside a Snakemake job."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from .cache_policy import cache_decision
from .plan import plan, teacher_seed


def write_data_manifest(opts: dict, path: str | Path) -> dict:
    """Load the dataset as the runs will and write its manifest (content hashes, classes, split)."""
    from .checkpoint import atomic_write_json
    from .data import load_data

    data = load_data(**opts)
    manifest = {**data.describe(), "options": {k: v for k, v in opts.items() if k not in ("img_root", "download")}}
    atomic_write_json(Path(path), manifest)
    return manifest


@contextlib.contextmanager
def rule_logging(snakemake):
    """Send the ``kdpipe`` logger to the rule's ``log:`` file; bad input exits with one line."""
    from .errors import KdpipeError

    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("kdpipe")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger
    except KdpipeError as exc:
        logger.error("error: %s", exc)
        print(f"kdpipe {snakemake.rule}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_rule(snakemake, entry: str, message: str | None = None, **inputs) -> dict:
    """Body of ``scripts/*.py``: run an entry point into the directory of the rule's first output.

    ``inputs`` are options that name the rule's input files (``t_model=...``); ``message``
    is logged first (e.g. why the teacher cache is or is not used).
    """
    from .options import entry_function

    out_dir = Path(snakemake.output[0]).parent
    opts = dict(snakemake.params.opts)
    opts.update(inputs)
    opts.update(
        save_root=str(out_dir.parent),
        note=out_dir.name,
        threads=snakemake.threads,
        cuda=snakemake.config.get("resources", {}).get("cuda"),
        cuda_graphs=snakemake.config.get("resources", {}).get("cuda_graphs"),
    )
    function = entry_function(entry)
    runs = {run.run_dir: run for run in plan(snakemake.config)}
    run = runs.get(str(out_dir))  # helper nodes (caches, paraphrasers) are not runs of the plan
    from .runner import planned_identity  # torch: only inside a job, not when the Snakefile is parsed

    with rule_logging(snakemake) as logger, planned_identity(run.record() if run else None):
        if message:
            logger.info("%s", message)
        return function(**opts)


def student_rule(snakemake, entry: str) -> dict:
    """Body of the kd and crd scripts: the teacher, plus its cache when the plan gives one."""
    w = snakemake.wildcards
    use, why = cache_decision(snakemake.config, w.dataset, w.teacher, teacher_seed(snakemake.config, w.seed))
    inputs = {"t_model": snakemake.input.teacher}
    if "cache" in snakemake.input.keys():
        inputs["teacher_cache"] = str(Path(snakemake.input.cache).parent)
        message = f"teacher: cache -- {why}"
    else:
        message = f"teacher: live -- {why if not use else 'this method reads feature maps'}"
    return run_rule(snakemake, entry, message=message, **inputs)
