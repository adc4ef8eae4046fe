"""Cluster profile and the paper grid: a dry run through profiles/slurm, resources per rule, job counts."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from kdpipe.workflow import load_config, report_groups, run_targets

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
    "race": 6,
    "all": 1,
}


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("paper")
    env = {"KDPIPE_SLURM_PARTITION": "gpu-test", "KDPIPE_SLURM_ACCOUNT": "kd-project", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
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
            str(PAPER),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


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
    assert len(run_targets(config)) == 12 + 306 + 18 + 18 + 18 + 54
    assert sorted(report_groups(config)) == ["resnet110-resnet110", "resnet110-resnet20", "resnet20-resnet20"]


def test_slurm_resources_per_rule(slurm_dry_run):
    blocks = job_blocks(slurm_dry_run)
    by_rule = {}
    for block in blocks:
        by_rule.setdefault(block["rule"], block)
    for rule in (
        "train_base",
        "train_kd",
        "train_ft",
        "ft_paraphraser",
        "train_crd",
        "train_dml",
        "train_bss",
        "teacher_cache",
    ):
        res = by_rule[rule]["resources"]
        assert res["gpu"] == "1" and res["cpus_per_gpu"] == "8", rule
        assert res["slurm_partition"] == "gpu-test" and res["slurm_account"] == "kd-project", rule
        assert int(res["mem_mb"]) >= 16000 and int(res["runtime"]) >= 120, rule
    assert by_rule["train_kd"]["resources"]["runtime"] == "960"
    assert by_rule["train_base"]["resources"]["mem_mb"] == "32000"
    # aggregation stays on the submitting node: no GPU asked, and declared localrules
    local = re.search(r"localrules:\n((?:\s+\w+,\n)+)", (ROOT / "rules" / "summary.smk").read_text()).group(1)
    assert {name.strip(" ,") for name in local.split()} == {"summary", "tables", "group_plots", "cost_plot", "race"}
    for rule in ("summary", "tables", "group_plots", "cost_plot", "race"):
        assert "gpu" not in by_rule[rule]["resources"]
