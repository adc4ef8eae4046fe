"""Submitting the workflow to SLURM (``--profile profiles/slurm``): checks before anything is submitted.

The profile takes the partition and account from ``KDPIPE_SLURM_PARTITION`` and
``KDPIPE_SLURM_ACCOUNT``; ``KDPIPE_SLURM_GPUS`` says what GPU each training job asks for: 1 (the
default, a GPU), 0 (none: a CPU partition) or a share of one GPU, ``shard:N`` or ``mps:N`` (the
GRES ``shard`` or ``mps`` where the site configured GPU sharding or CUDA MPS), so that several
small jobs run on one GPU.  Every problem found here is one line:

* in the Snakefile, at parse time (also ``-n``): an unset variable, a partition or account
  dropped by a ``--default-resources`` that replaced the profile's;
* in the Snakefile's ``onstart`` (a real run, before the first ``sbatch``): a partition SLURM does
  not know, a GPU partition without GPUs, and a status command that cannot see finished jobs (no
  accounting database: ``sacct`` answers "accounting storage is disabled" and Snakemake would
  wait forever);
* ``python -m kdpipe.cluster``: all of the above plus a missing executor plugin (Snakemake
  itself stops at ``--executor slurm`` before reading the workflow), then the command to submit
  with.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

from .errors import KdpipeError
from .gpus import JOBS_PER_GPU_VAR, jobs_per_gpu

PARTITION_VAR = "KDPIPE_SLURM_PARTITION"
ACCOUNT_VAR = "KDPIPE_SLURM_ACCOUNT"
GPUS_VAR = "KDPIPE_SLURM_GPUS"
PLUGIN = "snakemake_executor_plugin_slurm"
# profiles/slurm's slurm-jobname-prefix came with 2.2.0 (--slurm-status-command with 2.0.1): an older
# plugin stops Snakemake at the profile, "unrecognized arguments: --slurm-jobname-prefix=kdpipe"
MIN_PLUGIN = (2, 2)
# The plugin's status checks drift apart by 10 s each round in which no job finished, up to 180 s (its
# max_sleep_time): with squeue, a job that ends and leaves squeue (MinJobAge) between two checks is never
# seen to finish, and Snakemake waits for it for ever.  Long training jobs keep the checks 180 s apart.
MIN_JOB_AGE_FOR_SQUEUE = 180


# ---------------------------------------------------------------- the Snakemake side


def default_resources(workflow) -> dict[str, str]:
    """The raw ``--default-resources`` of this Snakemake run (environment variables unexpanded)."""
    res = workflow.resource_settings.default_resources
    if res is None:
        return {}
    if hasattr(res, "args"):
        return dict(arg.split("=", 1) for arg in res.args)
    return {name: str(getattr(value, "raw", value)) for name, value in dict(res).items()}


def submits_to_slurm(workflow) -> bool:
    """Whether this run submits through profiles/slurm (its default resources name a slurm_partition)."""
    return "slurm_partition" in default_resources(workflow)


GPU_SHARE = re.compile(r"(shard|mps):[1-9][0-9]*")


def slurm_gpus() -> tuple[int, str | None]:
    """What each training job asks of SLURM, from ``KDPIPE_SLURM_GPUS`` (1 when unset): whole GPUs
    (the rules' ``gpu``, sbatch ``--gpus``) and a share of one GPU (their ``gres``, ``--gres``) or None."""
    value = os.environ.get(GPUS_VAR, "1").strip() or "1"
    if value in ("0", "1"):
        return int(value), None
    if GPU_SHARE.fullmatch(value):
        return 0, value
    raise ValueError(
        f"{GPUS_VAR}={value!r}: use 1 (a GPU partition, one GPU per job), 0 (a CPU partition) or "
        f"shard:N / mps:N (N GPU shards or MPS units per job, where the partition has that GRES)"
    )


def describe_request(gpus: int, gres: str | None) -> str:
    """What each training job asks, for the preflight's summary line."""
    return "one GPU" if gpus else f"a GPU share ({gres})" if gres else "no GPU"


def local_only_problem() -> str | None:
    """KDPIPE_JOBS_PER_GPU set for a SLURM run, where it would do nothing (each job sees only its own GPU)."""
    try:
        if jobs_per_gpu() == 1:
            return None
    except KdpipeError as exc:
        return str(exc)
    value = os.environ[JOBS_PER_GPU_VAR].strip()
    return (
        f"{JOBS_PER_GPU_VAR}={value!r} shares the GPUs of this machine (local runs); on SLURM ask a share of a "
        f"GPU per job instead: export {GPUS_VAR}=shard:1 (or mps:N), or unset {JOBS_PER_GPU_VAR}"
    )


def resource_problems(workflow) -> list[str]:
    """Unset partition/account variables, or the profile's default resources replaced without them."""
    res = default_resources(workflow)
    problems = []
    for name, var, hint in (
        ("slurm_partition", PARTITION_VAR, "sinfo -s lists the partitions"),
        ("slurm_account", ACCOUNT_VAR, "sshare -U lists yours; empty for a cluster without accounts"),
    ):
        if name not in res:
            problems.append(
                f"no {name}: a --default-resources on the command line replaces the profile's; "
                f"set {PARTITION_VAR} and {ACCOUNT_VAR} instead"
            )
        elif f"${var}" in os.path.expandvars(res[name]) or "${" + var + "}" in os.path.expandvars(res[name]):
            problems.append(f"{var} is not set: export {var}=<{name.split('_')[1]}> ({hint}), then submit again")
    try:
        slurm_gpus()
    except ValueError as exc:
        problems.append(str(exc))
    problem = local_only_problem()
    if problem:
        problems.append(problem)
    return problems


def submission_problems(workflow, gpus: int, gres: str | None = None) -> list[str]:
    """Checks against the running SLURM, for ``onstart`` of a real run (nothing submitted yet)."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", "") != "slurm":
        return []
    if not submits_to_slurm(workflow):
        return ["submit with --profile profiles/slurm: it names the partition and account of every job"]
    problems = resource_problems(workflow)
    if problems:
        return problems
    partition = os.path.expandvars(default_resources(workflow)["slurm_partition"]).strip("'\"")
    problem = partition_problem(partition, gpus, gres)
    if problem:
        problems.append(problem)
    problem = time_limit_problem(partition, rule_runtimes(workflow))
    if problem:
        problems.append(problem)
    problem = torch_build_problem(gpus, gres)
    if problem:
        problems.append(problem)
    status = getattr(workflow.executor_settings, "status_command", None) or "sacct"
    problem = status_problem(status)
    if problem:
        problems.append(problem)
    return problems


def torch_build_problem(gpus: int, gres: str | None) -> str | None:
    """Jobs that ask SLURM for a GPU, run by a CPU-only torch (the jobs run this same Python): each would
    hold its GPU and train on the CPU."""
    if not gpus and not gres:
        return None
    try:
        import torch
    except ImportError:
        return None
    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return None
    return (
        f"torch {torch.__version__} of {sys.executable} is a CPU-only build: every training job would ask SLURM for "
        f"{describe_request(gpus, gres)} and train on the CPU. Install a CUDA build of torch (conda picks the CPU "
        f"one on a node without a GPU driver: CONDA_OVERRIDE_CUDA=12 conda env create -f environment.yml), "
        f"or export {GPUS_VAR}=0 for a CPU partition"
    )


def rule_runtimes(workflow) -> dict[str, int]:
    """The longest time limit (minutes) the jobs of each rule that will run ask of SLURM, --set-resources
    included (every rule's own where the DAG is not built yet)."""
    try:
        jobs = [(job.rule.name, job.resources.get("runtime")) for job in workflow.dag.needrun_jobs()]
    except AttributeError:
        jobs = [(rule.name, rule.resources.get("runtime")) for rule in workflow.rules]
    runtimes = {}
    for name, value in jobs:
        value = getattr(value, "value", value)
        if isinstance(value, int) and not isinstance(value, bool):
            runtimes[name] = max(value, runtimes.get(name, 0))
    return runtimes


# ---------------------------------------------------------------- the SLURM side


def _run(*cmd: str) -> subprocess.CompletedProcess | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (empty when SLURM cannot be asked)."""
    out = _run("scontrol", "show", "config")
    if out is None or out.returncode != 0:
        return {}
    pairs = (line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _seconds(value: str) -> int | None:
    m = re.match(r"(\d+)\s*([a-z]*)", value.lower())
    if not m:
        return None
    return int(m.group(1)) * (3600 if m.group(2) in ("h", "hour", "hours") else 1)


def status_problem(status_command: str) -> str | None:
    """Why the executor plugin's status command would never see finished jobs here, or None."""
    config = slurm_config()
    no_accounting = config.get("AccountingStorageType") == "accounting_storage/none"
    if status_command == "squeue":
        age = _seconds(config.get("MinJobAge", ""))
        if no_accounting and age is not None and age < MIN_JOB_AGE_FOR_SQUEUE:
            return (
                f"MinJobAge is {age} s: squeue forgets finished jobs before Snakemake asks, and there is no "
                f"accounting database for sacct; ask the admins for MinJobAge >= 300"
            )
        return None
    if no_accounting:
        return (
            "this cluster has no accounting database (AccountingStorageType=accounting_storage/none), so sacct "
            "never reports a finished job: add --slurm-status-command squeue"
        )
    return None


def partition_problem(partition: str, gpus: int, gres: str | None = None) -> str | None:
    """A partition SLURM does not know, or a GPU (or GPU share) request on a partition without that GRES."""
    out = _run("sinfo", "-h", "-p", partition, "-o", "%G")
    if out is None or out.returncode != 0:
        return None  # sbatch will say
    gres_of_partition = {g for line in out.stdout.split() for g in line.split(",") if g}
    if not gres_of_partition:
        known = _run("sinfo", "-h", "-o", "%R")
        names = sorted(set(known.stdout.split())) if known and known.returncode == 0 else []
        return f"SLURM has no partition {partition!r} (sinfo lists: {', '.join(names) or 'none'})"
    if gpus and not any(g.startswith("gpu") for g in gres_of_partition):
        return (
            f"partition {partition!r} has no GPUs (GRES {', '.join(sorted(gres_of_partition))}): "
            f"for a CPU partition export {GPUS_VAR}=0"
        )
    name = gres.split(":")[0] if gres else None
    if name and not any(g == name or g.startswith(f"{name}:") for g in gres_of_partition):
        return (
            f"partition {partition!r} has no {name} GRES (GRES {', '.join(sorted(gres_of_partition))}) for "
            f"{GPUS_VAR}={gres}: ask the admins for GPU {'sharding' if name == 'shard' else 'MPS'}, "
            f"or export {GPUS_VAR}=1"
        )
    return None


def _minutes(limit: str) -> int | None:
    """sinfo's time limit ([days-]hours:minutes:seconds, minutes:seconds, minutes) in whole minutes;
    None for none (``infinite``) or a form not known here."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit.strip())
    if not m:
        return None
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(4) is not None:  # [d-]h:m:s
        return days * 1440 + a * 60 + b
    if m.group(3) is not None:  # d-h:m or m:s
        return days * 1440 + a * 60 + b if m.group(1) else a
    return days * 1440 + a * 60 if m.group(1) else a


def partition_minutes(partition: str) -> int | None:
    """The partition's time limit (MaxTime) in minutes; None when it has none or SLURM cannot say."""
    out = _run("sinfo", "-h", "-p", partition, "-o", "%l")
    if out is None or out.returncode != 0 or not out.stdout.split():
        return None
    limits = [_minutes(word) for word in out.stdout.split()]
    return None if None in limits else max(limits)


def _over_limit(most: int | None, runtimes: dict[str, int]) -> dict[str, int]:
    """The rules (sorted) whose jobs ask more minutes than ``most`` (None: no limit), with what they ask."""
    return {} if most is None else {rule: m for rule, m in sorted(runtimes.items()) if m > most}


def time_limit_fits(partition: str, runtimes: dict[str, int]) -> list[str]:
    """``<rule>:runtime=<limit>`` for each rule whose jobs ask more minutes than the partition allows."""
    most = partition_minutes(partition)
    return _fitted(most, _over_limit(most, runtimes))


def _fitted(most: int | None, over: dict[str, int]) -> list[str]:
    """``--set-resources`` entries that bring those rules down to the partition's ``most`` minutes."""
    return [f"{rule}:runtime={most}" for rule in over]


def time_limit_problem(partition: str, runtimes: dict[str, int]) -> str | None:
    """Rules whose jobs ask a longer time limit than the partition allows (its MaxTime): SLURM accepts
    such a job and holds it PENDING (Reason PartitionTimeLimit) for ever, and Snakemake waits for it."""
    most = partition_minutes(partition)  # one sinfo
    over = _over_limit(most, runtimes)
    if not over:
        return None
    fits = _fitted(most, over)
    asks = ", ".join(f"{rule} {minutes}" for rule, minutes in over.items())
    return (
        f"partition {partition!r} allows jobs {most} minutes (sinfo -o %l), but these rules ask for more (minutes): "
        f"{asks}; SLURM would hold them PENDING (PartitionTimeLimit) for ever. Ask for what it allows: "
        f"--set-resources {' '.join(fits)} (a training job killed at its limit resumes from its epoch checkpoint "
        "when Snakemake retries it; a teacher cache starts over)"
    )


# ---------------------------------------------------------------- python -m kdpipe.cluster


def plugin_version() -> str | None:
    """The installed snakemake-executor-plugin-slurm's version, or None when it is not installed."""
    if importlib.util.find_spec(PLUGIN) is None:
        return None
    try:
        return importlib.metadata.version("snakemake-executor-plugin-slurm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def plugin_problem(version: str | None) -> str | None:
    """A missing executor plugin, or one older than profiles/slurm's keys need."""
    need = ".".join(map(str, MIN_PLUGIN))
    if version is None:
        return (
            f"snakemake-executor-plugin-slurm is not installed for {sys.executable}: "
            f"pip install 'snakemake-executor-plugin-slurm>={need}' (it is in kdpipe's [test] extra)"
        )
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if len(numbers) == 2 and numbers < MIN_PLUGIN:
        return (
            f"snakemake-executor-plugin-slurm {version} is older than the {need} profiles/slurm needs (Snakemake would "
            f"stop at its slurm-jobname-prefix): pip install 'snakemake-executor-plugin-slurm>={need}'"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Check this login node for a submission with profiles/slurm; print the command to use."""
    problems = []
    problem = plugin_problem(plugin_version())
    if problem:
        problems.append(problem)
    missing = [cmd for cmd in ("sbatch", "sinfo", "squeue", "scontrol") if shutil.which(cmd) is None]
    if missing:
        problems.append(f"no SLURM client commands ({', '.join(missing)}) on PATH: run this on the login node")
    for var in (PARTITION_VAR, ACCOUNT_VAR):
        if var not in os.environ:
            problems.append(f"{var} is not set: export {var}=<{var.rsplit('_', 1)[1].lower()}>")
    try:
        gpus, gres = slurm_gpus()
    except ValueError as exc:
        problems.append(str(exc))
        gpus, gres = 1, None
    problem = local_only_problem() or torch_build_problem(gpus, gres)
    if problem:
        problems.append(problem)
    status, fits = "sacct", []
    if not missing:
        if PARTITION_VAR in os.environ:
            problem = partition_problem(os.environ[PARTITION_VAR], gpus, gres)
            if problem:
                problems.append(problem)
            else:
                from .workflow import all_rule_runtimes

                fits = time_limit_fits(os.environ[PARTITION_VAR], all_rule_runtimes())
        if status_problem("sacct"):
            status = "squeue"
            problem = status_problem("squeue")
            if problem:
                problems.append(problem)
    for problem in problems:
        print(f"kdpipe cluster: {problem}", file=sys.stderr)
    if problems:
        return 1
    extra = " --slurm-status-command squeue" if status == "squeue" else ""
    if fits:
        print(
            f"kdpipe cluster: partition {os.environ[PARTITION_VAR]} allows shorter jobs than some rules ask for: "
            "the command sets their runtime to its limit (a training job killed at its limit resumes from its "
            "epoch checkpoint when Snakemake retries it)"
        )
        extra += " --set-resources " + " ".join(fits)
    print(
        f"kdpipe cluster: ok: partition {os.environ[PARTITION_VAR]}, account {os.environ[ACCOUNT_VAR] or '(none)'}, "
        f"{describe_request(gpus, gres)} per training job, status command {status}"
    )
    print(f"snakemake --profile profiles/slurm{extra} --configfile config/paper.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
