# kdpipe: teachers -> (caches, helpers) -> students -> reports, as a file-level DAG.
# Usage: snakemake --cores all results/summary.csv   (see README.md; every config key: config/README.md)
import sys

from snakemake.utils import min_version

# The Snakemake that pyproject.toml requires (tests/test_workflow.py keeps the two equal): from 9.20 a
# --set-resources runtime is read in minutes, as the rules' runtimes and README's overrides are (9.19
# read train_kd:runtime=600 as 10 minutes), and the dry run shows the profile's SLURM partition
min_version("9.20")

from kdpipe.errors import KdpipeError
from kdpipe import cluster as kc
from kdpipe import gpus as kg
from kdpipe import workflow as kw

# The embedded default applies only when no --configfile is given: a user's config means exactly
# what it says plus the schema's defaults (the reference settings), never the demo's choices.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "rules/report/workflow.rst"


try:
    # Snakemake keeps the last of a key given twice in a file: each file is read again to refuse that.
    # A method that cannot distil a pair is refused here; cluster jobs skip that check (their
    # submitting process made it for the same config)
    for path in workflow.configfiles:
        kw.read_config_file(path)
    # --config 'train={epochs: 3}': Snakemake keeps the numbers inside {...} and [...] as text; read them again
    kw.apply_overrides(config, workflow.config_settings.config)
    kw.load_config(config, check_pairs=workflow.is_main_process)
except KdpipeError as exc:
    sys.exit(f"kdpipe: {exc}")

# Data files replaced by older ones (cp -p, rsync -a): their manifest is made again, as newer files' would be.
if workflow.is_main_process:
    for line in kw.outdated_manifests(config):
        print(f"kdpipe: {line}", file=sys.stderr)

# Submitted through profiles/slurm? Then an unset partition or account stops here, in one line.
SLURM = kc.submits_to_slurm(workflow)
if SLURM and workflow.is_main_process:
    for problem in kc.resource_problems(workflow):
        sys.exit(f"kdpipe: {problem}")
# Locally --resources gpu=N counts GPUs: KDPIPE_JOBS_PER_GPU training jobs share each of them.
if not SLURM and workflow.is_main_process:
    try:
        packed = kg.pack_local_gpus(workflow)
    except KdpipeError as exc:
        sys.exit(f"kdpipe: {exc}")
    if packed:
        print(f"kdpipe: {packed}", file=sys.stderr)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/base.smk"
include: "rules/cache.smk"
include: "rules/kd.smk"
include: "rules/ft.smk"
include: "rules/crd.smk"
include: "rules/dml.smk"
include: "rules/bss.smk"
include: "rules/seeds.smk"
include: "rules/summary.smk"


onstart:
    # before the first sbatch: the partition, its GPUs and the status command, against SLURM itself
    for problem in kc.submission_problems(workflow, TRAIN_GPUS, TRAIN_GRES):
        sys.exit(f"kdpipe: {problem}")
    for line in kw.cache_plan(config):
        print(line, file=sys.stderr)


# every run's outputs too, so that a job that failed after an earlier complete run is retried and a deleted
# model.pt or metrics.csv is made again (Snakemake does not rebuild a missing file for a summary it holds up
# to date, nor an output no job requests); with report.partial only the runs present
rule all:
    default_target: True
    input:
        kw.report_targets(config),
        kw.run_outputs(config),
