"""The in-job glue: what every ``scripts/*.py`` calls inside a Snakemake job."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from .cache_policy import cache_decision
from .plan import plan, teacher_seed


def write_data_manifest(opts: dict, path: str | Path) -> dict:
    """Load the dataset as the runs will and write its manifest (content hashes, classes, split), and beside it
    ``files.json``: the data files' stamp and content digest (:func:`kdpipe.workflow.outdated_manifests`)."""
    from .checkpoint import atomic_write_json
    from .data import load_data
    from .workflow import files_of, files_record_path, files_stamp

    data = load_data(**opts)
    manifest = {**data.describe(), "options": {k: v for k, v in opts.items() if k not in ("img_root", "download")}}
    files = files_of(opts["data_name"], opts["img_root"])  # read after loading: a download has written them
    record = files_record_path(path)
    if files:
        atomic_write_json(record, {"stamp": files_stamp(files), "content": files_stamp(files, content=True)})
    else:
        record.unlink(missing_ok=True)
    atomic_write_json(Path(path), manifest)
    return manifest


@contextlib.contextmanager
def rule_logging(snakemake):
    """Send the ``kdpipe`` logger to the rule's ``log:`` file; bad input, and a write or read the system
    refuses (a full disk, no permission), exit with one line."""
    from .errors import KdpipeError, os_error_line

    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("kdpipe")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger
    except (KdpipeError, OSError) as exc:
        line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
        logger.error("error: %s", line)
        print(f"kdpipe {snakemake.rule}: error: {line}", file=sys.stderr)
        sys.exit(1)
    finally:
        logger.removeHandler(handler)
        handler.close()


def rule_run(snakemake, entry: str, out_dir: Path, opts: dict, runs: dict, message: str | None = None, **inputs):
    """(a call that runs ``entry`` into ``out_dir`` with the rule's ``opts`` and ``inputs``, the run's
    planned identity or None); ``runs``: the plan's runs by directory."""
    from .options import entry_function, options_for

    opts = dict(opts)
    opts.update(inputs)
    resources = snakemake.config.get("resources", {})
    opts.update(
        save_root=str(out_dir.parent),
        note=out_dir.name,
        # Snakemake runs a training job again when its settings or inputs changed: the run there is replaced
        **({"other_settings": "replace"} if any(o.name == "other_settings" for o in options_for(entry)) else {}),
        threads=snakemake.threads,
        cuda=resources.get("cuda"),
        cuda_graphs=resources.get("cuda_graphs"),
        memory_format=resources.get("memory_format"),
        amp=resources.get("amp"),
    )
    function = entry_function(entry)
    run = runs.get(str(out_dir))  # helper nodes (caches, paraphrasers) are not runs of the plan

    def call():
        if message:
            from .engine import running_in  # torch: only inside a job

            with running_in(out_dir):  # the run's own train.log, also when several runs share the process
                logging.getLogger("kdpipe").info("%s: %s", out_dir, message)
        return function(**opts)

    return call, run.record() if run else None


def runs_by_dir(config: dict) -> dict:
    return {run.run_dir: run for run in plan(config)}


def run_rule(snakemake, entry: str, message: str | None = None, **inputs) -> dict:
    """Body of ``scripts/*.py``: run an entry point into the directory of the rule's first output.

    ``inputs`` are options that name the rule's input files (``t_model=...``); ``message``
    is logged first (e.g. why the teacher cache is or is not used).
    """
    out_dir = Path(snakemake.output[0]).parent
    if "data" in snakemake.input.keys():
        inputs.setdefault("data_manifest", snakemake.input.data)
    call, identity = rule_run(
        snakemake, entry, out_dir, snakemake.params.opts, runs_by_dir(snakemake.config), message, **inputs
    )
    from .runner import planned_identity  # torch: only inside a job, not when the Snakefile is parsed

    with rule_logging(snakemake), planned_identity(identity):
        return call()


# A training rule's input -> the option of its entry point that names the file.  Every rule that loads data
# takes the data node's manifest as its input ``data``: the run checks that its data are the manifest's.
INPUT_OPTIONS = {"teacher": "t_model", "paraphraser": "paraphraser", "data": "data_manifest"}


def seed_input_options(snakemake, rule: str, seed, suffix: str = "") -> tuple[dict, str | None]:
    """The options naming one seed's input files of a job of ``rule`` (kdpipe.workflow.SEEDED_RULES)
    and, for a student that may read a teacher cache, the line saying whether and why it does;
    ``suffix`` picks one seed's inputs of ``<rule>_seeds``."""
    from .workflow import SEEDED_RULES

    given = snakemake.input.keys()
    inputs = {
        option: snakemake.input[f"{name}{suffix}"]
        for name, option in INPUT_OPTIONS.items()
        if f"{name}{suffix}" in given
    }
    if not SEEDED_RULES[rule].teacher_cache:
        return inputs, None
    w, config = snakemake.wildcards, snakemake.config
    use, why = cache_decision(config, w.dataset, w.teacher, teacher_seed(config, seed))
    if f"cache{suffix}" in given:
        inputs["teacher_cache"] = str(Path(snakemake.input[f"cache{suffix}"]).parent)
        return inputs, f"teacher: cache -- {why}"
    return inputs, f"teacher: live -- {why if not use else 'this method reads feature maps'}"


def train_rule(snakemake):
    """Body of a training rule's script: one seed's run of the job's rule (kdpipe.workflow.SEEDED_RULES), or,
    for ``<rule>_seeds`` (``resources.seeds_together``), every seed's run in this one process
    (:func:`kdpipe.runner.run_together`), each into its own directory."""
    from .workflow import SEEDED_RULES

    rule = snakemake.rule.removesuffix("_seeds")
    entry = SEEDED_RULES[rule].entry
    if "seeds" not in snakemake.params.keys():
        inputs, message = seed_input_options(snakemake, rule, snakemake.wildcards.seed)
        return run_rule(snakemake, entry, message=message, **inputs)
    from .runner import run_together

    runs = runs_by_dir(snakemake.config)
    calls = []
    for seed, record in zip(snakemake.params.seeds, snakemake.output.record):
        inputs, message = seed_input_options(snakemake, rule, seed, f"_seed{seed}")
        opts = snakemake.params.opts[str(seed)]
        calls.append(rule_run(snakemake, entry, Path(record).parent, opts, runs, message, **inputs))
    with rule_logging(snakemake):
        return run_together(calls)
