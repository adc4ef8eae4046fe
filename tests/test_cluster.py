"""Cluster profile and the paper grid: dry runs through profiles/slurm, resources per rule, job counts,
overrides that add to the profile, the GPU/CPU choice and the one-line errors before submission."""

import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from conftest import ROOT
from kdpipe import cluster as kc
from kdpipe.costplan import dag_jobs
from kdpipe.workflow import load_config, report_groups, rule_runtime, run_targets

pytest.importorskip("snakemake_executor_plugin_slurm")

PAPER = ROOT / "config" / "paper.yaml"
EXPECTED_JOBS = {
    "data_manifest": 2,  # one data node per dataset, run on the submitting node
    "train_base": 12,  # resnet20, resnet110 x 2 datasets x 3 seeds
    "teacher_cache": 12,  # 2 teachers x 2 datasets x 3 seeds (auto: 200-epoch students >> 162 views)
    "train_kd": 306,  # 17 modes x 3 pairs x 3 seeds x 2 datasets
    "ft_paraphraser": 12,
    "train_ft": 18,
    "train_crd": 18,
    "train_dml": 18,  # 3 cohorts
    "train_bss": 54,  # 3 chains x 3 generations
    "summary": 1,
    "tables": 2,
    "group_plots": 6,
    "cost_plot": 2,
    "race": 18,  # test accuracy, training loss, training time x 6 groups
    "all": 1,
}


ENV = {"KDPIPE_SLURM_PARTITION": "gpu-test", "KDPIPE_SLURM_ACCOUNT": "kd-project", "PATH": "/usr/bin:/bin"}
TRAINING = ("train_base", "train_kd", "train_ft", "ft_paraphraser", "train_crd", "train_dml", "train_bss")
TRAINING += ("teacher_cache",)


def slurm_dry(workdir, *args, env=ENV, config=PAPER):
    """``snakemake -n --profile profiles/slurm`` as the README has it, with extra arguments."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--profile",
            str(ROOT / "profiles" / "slurm"),
            "--configfile",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory):
    # a command-line --set-resources adds to what the rules declare instead of replacing it all
    out = slurm_dry(tmp_path_factory.mktemp("paper"), "--set-resources", "train_kd:runtime=600")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def job_blocks(output: str) -> list[dict]:
    """(rule, output, resources) of every planned job in a dry run."""
    blocks = []
    for chunk in re.split(r"\n(?=rule \w+:)", output):
        m = re.match(r"rule (\w+):", chunk)
        if not m:
            continue
        res = re.search(r"resources: (.+)", chunk)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        blocks.append({"rule": m.group(1), "resources": resources})
    return blocks


def test_paper_grid_job_counts(slurm_dry_run):
    table = slurm_dry_run.split("Job stats:")[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert {k: v for k, v in counts.items() if k != "total"} == EXPECTED_JOBS
    config = load_config(yaml.safe_load(PAPER.read_text()))
    assert dict(Counter(job.rule for job in dag_jobs(config))) == EXPECTED_JOBS  # the cost plan's jobs
    assert len(run_targets(config)) == 12 + 306 + 18 + 18 + 18 + 54
    assert sorted(report_groups(config)) == ["resnet110-resnet110", "resnet110-resnet20", "resnet20-resnet20"]


def test_slurm_resources_per_rule(slurm_dry_run):
    blocks = job_blocks(slurm_dry_run)
    by_rule = {}
    for block in blocks:
        by_rule.setdefault(block["rule"], block)
    for rule in TRAINING:
        res = by_rule[rule]["resources"]
        assert res["gpu"] == "1", rule  # the login node (this machine) has no GPU: asked of SLURM anyway
        assert res["slurm_partition"] == "gpu-test" and res["slurm_account"] == "kd-project", rule
        assert int(res["mem_mb"]) >= 16000 and int(res["runtime"]) >= 120, rule
    assert by_rule["train_kd"]["resources"]["runtime"] == "600"  # the override ...
    assert by_rule["train_kd"]["resources"]["mem_mb"] == "32000"  # ... kept the rest of train_kd
    assert by_rule["train_base"]["resources"]["runtime"] == "720"  # ... and of every other rule
    for rule, block in by_rule.items():  # each job asks for its rule's entry of workflow.RUNTIMES
        if rule != "train_kd" and "gpu" in block["resources"]:
            assert block["resources"]["runtime"] == str(rule_runtime(rule)), rule
    assert by_rule["train_base"]["resources"]["mem_mb"] == "32000"
    assert by_rule["teacher_cache"]["resources"]["mem_mb"] == "64000"
    # local settings do not leak into cluster runs: no global gpu cap, no --cores of the login node
    assert "Provided resources" not in slurm_dry_run or "gpu=" not in slurm_dry_run.split("Provided resources")[1]
    assert "profiles/default" in slurm_dry_run  # Snakemake loads it: it must hold nothing local
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert set(default) <= {"rerun-incomplete", "printshellcmds", "show-failed-logs", "max-checksum-file-size"}
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert not {"set-resources", "set-threads", "cores", "resources"} & set(slurm)
    # aggregation stays on the submitting node: no GPU asked, and declared localrules
    local = re.search(r"localrules:\n((?:\s+\w+,\n)+)", (ROOT / "rules" / "summary.smk").read_text()).group(1)
    assert {name.strip(" ,") for name in local.split()} == {
        *("summary", "tables", "group_plots", "cost_plot", "race", "sweep_tables", "sweep_plot")
    }
    for rule in ("summary", "tables", "group_plots", "cost_plot", "race"):
        assert "gpu" not in by_rule[rule]["resources"]


def test_cpu_partition_is_one_variable(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("base: {nets: [resnet8]}\n")
    out = slurm_dry(tmp_path, env={**ENV, "KDPIPE_SLURM_GPUS": "0", "KDPIPE_SLURM_PARTITION": "cpu"}, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    (res,) = [block["resources"] for block in job_blocks(out.stdout) if block["rule"] == "train_base"]
    assert res.get("gpu", "0") == "0" and res["slurm_partition"] == "cpu" and res["mem_mb"] == "32000"


def test_gpu_share_is_one_variable(tmp_path):
    """KDPIPE_SLURM_GPUS=shard:N: every training job asks that GRES and no whole GPU, so several share one."""
    config = tmp_path / "c.yaml"
    config.write_text("base: {nets: [resnet8]}\n")
    out = slurm_dry(tmp_path, env={**ENV, "KDPIPE_SLURM_GPUS": "shard:2"}, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    (res,) = [block["resources"] for block in job_blocks(out.stdout) if block["rule"] == "train_base"]
    assert res["gres"] == "shard:2" and res.get("gpu", "0") == "0" and res["mem_mb"] == "32000"
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = type("Job", (), {"resources": Resources(gpu=0, gres=res["gres"])})()
    assert set_gres_string(job) == " --gres=shard:2"  # the plugin's sbatch flags: no --gpus beside it


@pytest.mark.parametrize(
    "value, asked",
    [(None, (1, None)), ("1", (1, None)), ("0", (0, None)), ("shard:1", (0, "shard:1")), ("mps:25", (0, "mps:25"))],
)
def test_slurm_gpu_request(monkeypatch, value, asked):
    if value is None:
        monkeypatch.delenv(kc.GPUS_VAR, raising=False)
    else:
        monkeypatch.setenv(kc.GPUS_VAR, value)
    assert kc.slurm_gpus() == asked


@pytest.mark.parametrize("value", ["2", "shard:0", "shard", "gpu:1", "mps:1.5"])
def test_slurm_gpu_request_refused(monkeypatch, value):
    monkeypatch.setenv(kc.GPUS_VAR, value)
    with pytest.raises(ValueError, match=re.escape(f"KDPIPE_SLURM_GPUS={value!r}: use 1 (a GPU partition")):
        kc.slurm_gpus()


@pytest.mark.parametrize(
    "gres, problem",
    [
        (None, None),
        ("shard:1", None),
        ("mps:25", "partition 'gpu' has no mps GRES (GRES gpu:h100:2(S:0-1), shard:h100:8(S:0-1)) for "),
    ],
)
def test_partition_without_the_gpu_share(monkeypatch, gres, problem):
    sinfo = subprocess.CompletedProcess([], 0, stdout="gpu:h100:2(S:0-1),shard:h100:8(S:0-1)\n")
    monkeypatch.setattr(kc, "_run", lambda *cmd: sinfo)
    found = kc.partition_problem("gpu", 0 if gres else 1, gres)
    if problem is None:
        assert found is None
    else:
        assert found.startswith(problem) and found.endswith("ask the admins for GPU MPS, or export KDPIPE_SLURM_GPUS=1")


@pytest.mark.parametrize(
    "env, args, message",
    [
        ({"KDPIPE_SLURM_PARTITION": None}, (), "kdpipe: KDPIPE_SLURM_PARTITION is not set: export"),
        ({"KDPIPE_SLURM_ACCOUNT": None}, (), "kdpipe: KDPIPE_SLURM_ACCOUNT is not set: export"),
        ({}, ("--default-resources", "slurm_partition=a100"), "kdpipe: no slurm_account: a --default-resources"),
        ({"KDPIPE_SLURM_GPUS": "2"}, (), "kdpipe: KDPIPE_SLURM_GPUS='2': use 1"),
        ({"KDPIPE_JOBS_PER_GPU": "4"}, (), "kdpipe: KDPIPE_JOBS_PER_GPU='4' shares the GPUs of this machine"),
    ],
)
def test_one_line_errors_before_submission(tmp_path, env, args, message):
    config = tmp_path / "c.yaml"
    config.write_text("base: {nets: [resnet8]}\n")
    env = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    out = slurm_dry(tmp_path, *args, env=env, config=config)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("kdpipe")]
    assert len(lines) == 1 and lines[0].startswith(message), out.stdout + out.stderr


def test_cluster_check_names_a_missing_plugin(tmp_path):
    """``python -m kdpipe.cluster`` (Snakemake itself stops at --executor slurm before the workflow)."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import importlib.util\n_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name.startswith('snakemake_executor_plugin_slurm') "
        "else _find(name, *a)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "kdpipe.cluster"],
        capture_output=True,
        text=True,
        env={**ENV, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        timeout=120,
    )
    assert out.returncode == 1
    assert "kdpipe cluster: snakemake-executor-plugin-slurm is not installed for" in out.stderr
    assert all(line.startswith("kdpipe cluster: ") for line in out.stderr.splitlines())


@pytest.mark.parametrize(
    "version, problem",
    [("2.8.0", None), ("2.2.0", None), ("10.0", None), ("1.9.2", "snakemake-executor-plugin-slurm 1.9.2 is older")],
)
def test_cluster_check_names_an_old_plugin(version, problem):
    """profiles/slurm's slurm-jobname-prefix needs plugin 2.2: an older one stops Snakemake at the profile."""
    found = kc.plugin_problem(version)
    if problem is None:
        assert found is None
    else:
        assert found.startswith(problem) and "'snakemake-executor-plugin-slurm>=2.2'" in found


def test_plugin_floor_is_the_one_packaging_asks():
    need = ".".join(map(str, kc.MIN_PLUGIN))
    assert f'"snakemake-executor-plugin-slurm>={need}"' in (ROOT / "pyproject.toml").read_text()
    assert f"snakemake-executor-plugin-slurm>={need}" in (ROOT / "environment.yml").read_text()


@pytest.mark.parametrize(
    "limit, minutes",
    [("1:00:00", 60), ("2-00:00:00", 2880), ("30:00", 30), ("45", 45), ("1-12", 2160), ("infinite", None)],
)
def test_partition_time_limit_in_minutes(monkeypatch, limit, minutes):
    monkeypatch.setattr(kc, "_run", lambda *cmd: subprocess.CompletedProcess([], 0, stdout=f"{limit}\n"))
    assert kc.partition_minutes("gpu") == minutes


def test_a_runtime_over_the_partition_limit_is_refused(monkeypatch):
    """A job asking more than the partition's MaxTime would sit PENDING (PartitionTimeLimit) for ever."""
    monkeypatch.setattr(kc, "_run", lambda *cmd: subprocess.CompletedProcess([], 0, stdout="8:00:00\n"))
    assert kc.time_limit_problem("gpu", {"train_base": 480, "teacher_cache": 120}) is None
    problem = kc.time_limit_problem("gpu", {"train_base": 720, "train_kd_seeds": 960, "teacher_cache": 120})
    assert problem.startswith("partition 'gpu' allows jobs 480 minutes (sinfo -o %l), but these rules ask for more")
    assert "train_base 720, train_kd_seeds 960;" in problem
    assert "--set-resources train_base:runtime=480 train_kd_seeds:runtime=480 (" in problem


def test_rule_runtimes_are_those_of_the_jobs_to_run():
    Job = type("Job", (), {})
    jobs = []
    for name, runtime in (("train_base", 720), ("train_base", 30), ("summary", None), ("train_kd", 600)):
        job = Job()
        job.rule = type("Rule", (), {"name": name})()
        job.resources = {"runtime": runtime} if runtime else {}
        jobs.append(job)
    workflow = type("W", (), {"dag": type("D", (), {"needrun_jobs": lambda self: jobs})()})()
    assert kc.rule_runtimes(workflow) == {"train_base": 720, "train_kd": 600}


def test_cluster_check_fits_the_runtimes_to_the_partition(monkeypatch, capsys):
    def run(*cmd):
        out = {"%l": "12:00:00\n", "%G": "gpu:2\n"}.get(cmd[-1], "")
        return subprocess.CompletedProcess([], 0, stdout=out)

    monkeypatch.setattr(kc, "_run", run)
    monkeypatch.setattr(kc, "status_problem", lambda status: None)
    monkeypatch.setattr(kc.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setenv(kc.PARTITION_VAR, "gpu")
    monkeypatch.setenv(kc.ACCOUNT_VAR, "")
    monkeypatch.delenv(kc.GPUS_VAR, raising=False)
    monkeypatch.delenv("KDPIPE_JOBS_PER_GPU", raising=False)
    assert kc.main() == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert command.startswith(
        "snakemake --profile profiles/slurm --set-resources train_bss:runtime=720 train_bss_seeds:runtime=720 "
        "train_crd:runtime=720 train_crd_seeds:runtime=720 train_crd_sweep:runtime=720 "
    )
    assert command.endswith(" --configfile config/paper.yaml")
    fitted = {part.split(":")[0] for part in command.split() if ":runtime=" in part}
    # every rule that asks more than 12 h, its sweep's and seeds_together's rules too (another config than
    # paper.yaml may run them), none that asks less (base 720, caches and paraphrasers 120)
    assert fitted == {
        f"train_{m}{suffix}"
        for m in ("kd", "ft", "crd", "dml", "bss")
        for suffix in ("", "_seeds", "_sweep", "_sweep_seeds")
        if not (m in ("dml", "bss") and "sweep" in suffix)
    }


@pytest.mark.parametrize("asked", [(1, None), (0, "shard:1"), (0, None)])
def test_a_cpu_only_torch_is_refused_for_gpu_jobs(monkeypatch, asked):
    """Conda on a login node without a GPU driver installs torch's CPU build: the jobs would hold GPUs and train
    on the CPU (README step 1: conda env create -f environment.yml on the login node)."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    problem = kc.torch_build_problem(*asked)
    if asked == (0, None):
        assert problem is None  # a CPU partition
    else:
        assert problem.startswith(f"torch {torch.__version__} of {sys.executable} is a CPU-only build: every training")
        assert problem.endswith("or export KDPIPE_SLURM_GPUS=0 for a CPU partition")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert kc.torch_build_problem(*asked) is None


@pytest.mark.parametrize("age, refused", [("120 sec", True), ("179 sec", True), ("180 sec", False), ("300 sec", False)])
def test_squeue_needs_finished_jobs_kept_past_the_plugins_longest_status_interval(monkeypatch, age, refused):
    """The plugin's checks drift to 180 s apart while no job finishes: a job gone from squeue sooner is lost."""
    config = {"AccountingStorageType": "accounting_storage/none", "MinJobAge": age}
    monkeypatch.setattr(kc, "slurm_config", lambda: config)
    problem = kc.status_problem("squeue")
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"MinJobAge is {age.split()[0]} s: squeue forgets finished jobs before Snakemake")
