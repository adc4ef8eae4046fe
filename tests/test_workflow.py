import csv
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from kdpipe.errors import KdpipeError
from kdpipe.workflow import base_options, base_runs, load_config


def snakemake(*args, workdir=None, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    return subprocess.run(cmd, cwd=workdir or ROOT, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict:
    table = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_default_config_is_valid_and_names_teacher_and_student():
    config = load_config(yaml.safe_load(open(ROOT / "config" / "config.yaml")))
    assert config["datasets"] == ["digits"]
    assert {"teacher": "resnet110", "student": "resnet20"} in config["pairs"]
    assert base_runs(config) == ["results/digits/base/resnet110/seed0", "results/digits/base/resnet20/seed0"]


def test_params_slice_has_only_what_the_rule_reads():
    config = load_config({"train": {"epochs": 3}, "base": {"nets": ["resnet8"], "train": {"lr": 0.5}}})
    opts = base_options(config, "digits", "resnet8", "2")
    assert opts["net_name"] == "resnet8" and opts["seed"] == 2 and opts["epochs"] == 3 and opts["lr"] == 0.5
    assert "threads" not in opts and "cuda" not in opts  # resources never trigger re-runs


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"epochs": 0}}, "config train.epochs: 0 is less than the minimum of 1"),
        ({"train": {"lr": "fast"}}, "config train.lr: 'fast' is not of type 'number'"),
        ({"train": {"epoch": 3}}, "'epoch' was unexpected"),
        ({"datasets": ["mnist"]}, "unknown dataset 'mnist'"),
        ({"pairs": [{"teacher": "resnet111", "student": "resnet20"}]}, "config pairs.0.teacher: unknown network 'resnet111'"),
        ({"seeds": [0, 0]}, "repeats a seed"),
        ({"data": {"val_size": -0.1}}, "config data.val_size"),
        ({"resources": {"cuda": 2}}, "config resources.cuda"),
        ({"base": {"nets": []}}, "config base.nets: nothing to train"),
    ],
)
def test_schema_errors(config, message):
    with pytest.raises(KdpipeError) as err:
        load_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_config_one_line_from_snakemake(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {epochs: -3}\n")
    out = snakemake("-n", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert out.returncode != 0
    assert "kdpipe: config train.epochs: -3 is less than the minimum of 1" in out.stderr + out.stdout


def test_default_dag_dry_run(tmp_path):
    config = str(ROOT / "config" / "config.yaml")
    out = snakemake("results/summary.csv", "-n", "--cores", "2", "--configfile", config, workdir=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    assert counts["train_base"] >= 2 and counts["summary"] == 1


@pytest.mark.slow
def test_tiny_real_snakemake_run(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "seeds: [0, 1]\npairs: [{teacher: resnet14, student: resnet8}]\n"
        "train: {epochs: 2, batch_size: 64, lr: 0.05}\n"
    )
    out = snakemake("results/summary.csv", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert len(rows) == 4
    assert {(r["student"], r["role"], r["seed"]) for r in rows} == {
        ("resnet14", "teacher", "0"), ("resnet14", "teacher", "1"), ("resnet8", "student", "0"), ("resnet8", "student", "1")
    }
    for row in rows:
        assert row["method"] == "baseline" and row["dataset"] == "digits" and row["epochs"] == "2"
        assert float(row["test_acc_at_best"]) > 10 and float(row["mean_epoch_s"]) > 0
    for net in ("resnet14", "resnet8"):
        assert (tmp_path / "results" / "logs" / "digits" / "base" / net / "seed0.log").read_text().count("test acc") == 2
    # nothing to do on a second invocation
    again = snakemake("results/summary.csv", "-n", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # a changed training setting re-runs the training jobs and the summary
    (tmp_path / "c.yaml").write_text(
        "seeds: [0, 1]\npairs: [{teacher: resnet14, student: resnet8}]\n"
        "train: {epochs: 2, batch_size: 64, lr: 0.04}\n"
    )
    changed = snakemake("results/summary.csv", "-n", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert job_counts(changed.stdout + changed.stderr)["train_base"] == 4
