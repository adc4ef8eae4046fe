import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
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
    """Jobs by rule from the "Job stats" table, which a dry run and a real run (before its jobs) both print."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_default_config_is_valid_and_names_teacher_and_student():
    config = load_config(yaml.safe_load(open(ROOT / "config" / "config.yaml")))
    assert config["datasets"] == ["digits"] and config["seeds"] == [0, 1, 2]  # mean ± std over 3 seeds
    assert config["pairs"] == [{"teacher": "resnet20", "student": "resnet8w8"}]
    assert base_runs(config) == [
        f"results/digits/base/{net}/seed{s}" for net in ("resnet20", "resnet8w8") for s in (0, 1, 2)
    ]


def test_snakefile_min_version_is_the_installed_requirement():
    """The Snakefile's min_version (the catalog's convention) is pyproject.toml's and environment.yml's
    lower bound on Snakemake, and the Snakemake running the tests satisfies it."""
    from importlib.metadata import version

    from packaging.version import Version

    declared = re.search(r'^min_version\("([\d.]+)"\)$', (ROOT / "Snakefile").read_text(), re.M).group(1)
    pyproject = re.search(r'"snakemake>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    conda = re.search(r"- snakemake-minimal>=([\d.]+)", (ROOT / "environment.yml").read_text()).group(1)
    assert Version(declared) == Version(pyproject) == Version(conda)
    assert Version(version("snakemake")) >= Version(declared)


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
        (
            {"pairs": [{"teacher": "resnet111", "student": "resnet20"}]},
            "config pairs.0.teacher: unknown network 'resnet111'",
        ),
        ({"seeds": [0, 0]}, "repeats a seed"),
        ({"data": {"val_size": -0.1}}, "config data.val_size"),
        ({"resources": {"cuda": 2}}, "config resources.cuda"),
        ({"base": {"nets": []}}, "config base.nets: nothing to train"),
        ({"crd": {"sampler": "same"}}, "config crd.sampler: 'same' is not one of ['other_class', 'uniform']"),
        ({"crd": {"objective": "ce"}}, "config crd.objective: 'ce' is not one of ['nce', 'infonce']"),
        ({"bss": {"attack_clamp": "pix"}}, "config bss.attack_clamp: 'pix' is not one of ['normalized', 'image']"),
        ({"bss": {"attack_class": "top"}}, "config bss.attack_class: 'top' is not one of ['sampled', 'runner_up']"),
        ({"ft": {"paraphraser_decoder_out": "relu"}}, "config ft.paraphraser_decoder_out: 'relu' is not one of"),
        ({"ft": {"bn": "sometimes"}}, "config ft.bn: 'sometimes' is not one of"),
        ({"ft": {"paraphraser_epochs": "half"}}, "config ft.paraphraser_epochs: 'half' is not valid"),
        ({"ft": {"paraphraser_epochs": 0}}, "config ft.paraphraser_epochs: 0 is not valid"),
        (
            {
                "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
                "kd": {"settings": {"fsp": {"init_optimizer": 1}}},
            },
            "config kd.settings.fsp.init_optimizer: 1 is not one of ['shared', 'separate', 'features']",
        ),
    ],
)
def test_schema_errors(config, message):
    with pytest.raises(KdpipeError) as err:
        load_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


FIDELITY_CONFIG = """
pairs: [{teacher: resnet14, student: resnet8}]
train: {epochs: 40, lr: 0.2, warmup_epochs: 2}
kd: {modes: [fsp], settings: {fsp: {init_optimizer: separate}}}
ft: {enabled: true}
crd: {enabled: true}
bss: {pairs: true}
"""


def test_reference_settings_reach_the_rules():
    """Defaults: KD-Zoo's paraphraser recipe, RepDistiller's CRD sampler, KD-Zoo's BSS target and clamp."""
    from kdpipe.options import resolve
    from kdpipe.workflow import bss_options, crd_options, ft_options, ft_paraphraser_options, kd_options

    config = load_config(yaml.safe_load(FIDELITY_CONFIG))
    para = ft_paraphraser_options(config, "cifar100", "resnet14", 0)
    assert para["epochs"] == 30 and para["lr"] == pytest.approx(0.02)  # KD-Zoo: 30 epochs at the students' lr/10
    assert para["milestones"] is None and para["warmup_epochs"] == 0  # a constant lr
    assert (para["ft_bn"], para["para_decoder_out"]) == ("auto", "lrelu")
    assert para["form"] == 2  # the paraphraser kept is the last epoch's: the earlier revision's nodes re-run
    student = ft_options(config, "cifar100", "resnet14", "resnet8", 0)
    # options added later pass only where not at their defaults: the params of the FT runs made before stay
    assert not {"ft_init", "factor_form"} & (set(para) | set(student))
    crd = crd_options(config, "cifar100", "crd", "resnet14", "resnet8", 0)
    assert (crd["mode"], crd["sampler"], crd["objective"]) == ("exact", "other_class", "nce")
    bss = bss_options(config, "cifar100", "resnet14-resnet8", 0, 1)
    assert (bss["attack_class"], bss["attack_clamp"]) == ("sampled", "normalized")
    fsp = kd_options(config, "cifar100", "fsp", "resnet14", "resnet8", 0)
    assert fsp["init_optimizer"] == "separate"
    for entry, opts in [("ft_paraphraser", para), ("ft", student), ("crd", crd), ("bss", bss), ("kd", fsp)]:
        resolve(entry, {**opts, "t_model": "t.pt"})  # every key is an option of its entry
    # the students' scaled schedule stays available; YAML's bare off is the string setting
    config = load_config(
        yaml.safe_load(
            FIDELITY_CONFIG.replace("{enabled: true}\ncrd", "{enabled: true, bn: off, paraphraser_epochs: scaled}\ncrd")
        )
    )
    para = ft_paraphraser_options(config, "cifar100", "resnet14", 0)
    assert para["epochs"] == 6 and para["ft_bn"] == "off"
    assert ft_options(config, "cifar100", "resnet14", "resnet8", 0)["ft_bn"] == "off"
    # the embedded demo sets the scaled epochs explicitly
    demo = load_config(yaml.safe_load(open(ROOT / "config" / "config.yaml")))
    assert ft_paraphraser_options(demo, "digits", "resnet20", 0)["epochs"] == 6  # 15 % of 40


def test_repdistiller_recipe_settings_reach_the_kd_rule():
    """RepDistiller's and mdistiller's KD: CE weight 0.1, lambda 0.9, plain momentum SGD."""
    from kdpipe.options import resolve
    from kdpipe.workflow import kd_options

    text = FIDELITY_CONFIG.replace("train: {", "train: {nesterov: false, ").replace(
        "settings: {fsp:", "settings: {st: {ce_weight: 0.1, lambda_kd: 0.9}, fsp:"
    )
    config = load_config(yaml.safe_load(text))
    st = kd_options(config, "cifar100", "st", "resnet14", "resnet8", 0)
    assert (st["ce_weight"], st["lambda_kd"], st["nesterov"]) == (0.1, 0.9, False)
    fsp = kd_options(config, "cifar100", "fsp", "resnet14", "resnet8", 0)
    assert "ce_weight" not in fsp and fsp["nesterov"] is False
    resolve("kd", {**st, "t_model": "t.pt"})
    with pytest.raises(KdpipeError, match=r"^config kd\.settings\.st\.ce_weight: -1 is less than the minimum of 0$"):
        load_config(yaml.safe_load(text.replace("ce_weight: 0.1", "ce_weight: -1")))


def test_repdistiller_ft_shape_reaches_the_ft_rules():
    """config/repdistiller.yaml's FT (models/util.py, distiller_zoo/FT.py): BN in the translator alone, PyTorch's
    initialisation, the spatial factor -- in the paraphraser's and the students' options."""
    from kdpipe.options import resolve
    from kdpipe.workflow import ft_options, ft_paraphraser_options

    config = load_config(yaml.safe_load(open(ROOT / "config" / "repdistiller.yaml")))
    pair = config["pairs"][0]
    para = ft_paraphraser_options(config, "cifar100", pair["teacher"], 0)
    student = ft_options(config, "cifar100", pair["teacher"], pair["student"], 0)
    assert (para["ft_bn"], para["ft_init"], para["form"]) == ("translator", "torch", 2)
    assert (student["ft_bn"], student["ft_init"], student["factor_form"]) == ("translator", "torch", "spatial")
    resolve("ft_paraphraser", {**para, "t_model": "t.pt"})
    resolve("ft", {**student, "t_model": "t.pt"})


def test_fingerprints_without_later_added_options_stand_for_their_defaults():
    """A finished run or checkpoint made before ``factor_form`` / ``ft_init`` existed reads as KD-Zoo's form."""
    from kdpipe.options import differing_keys

    old = {"lambda_kd": 200.0, "ft_bn": "auto"}
    assert differing_keys(old, {**old, "factor_form": "flat", "ft_init": "kaiming"}) == []
    assert differing_keys(old, {**old, "factor_form": "spatial", "ft_init": "torch"}) == ["factor_form", "ft_init"]


def test_bad_config_one_line_from_snakemake(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {epochs: -3}\n")
    out = snakemake("-n", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert out.returncode != 0
    assert "kdpipe: config train.epochs: -3 is less than the minimum of 1" in out.stderr + out.stdout


def test_a_key_given_twice_in_a_configfile_is_refused_by_snakemake(tmp_path):
    """Snakemake keeps the second ``epochs`` silently; the Snakefile reads each file again and refuses it."""
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    out = snakemake("-n", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert out.returncode != 0
    twice = "line 4: key 'epochs' is given twice in one mapping (first at line 2)"
    assert f"kdpipe: configfile {tmp_path / 'c.yaml'}: {twice}" in out.stderr + out.stdout


def test_command_line_config_overrides_keep_their_numbers(tmp_path):
    """--config 'train={epochs: 3}' seeds=[0,1]: Snakemake reads the scalars inside {...} and [...] as text
    (and passes them to cluster jobs so); the Snakefile reads them as a config file would."""
    (tmp_path / "c.yaml").write_text("datasets: [digits]\nseeds: [0]\nbase: {nets: [resnet8]}\npairs: []\n")
    out = snakemake(
        "-n", "--cores", "1", "--configfile", "c.yaml", "--config", "train={epochs: 3, lr: 0.1}", "seeds=[0, 1]",
        "teacher_cache=false", workdir=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert job_counts(out.stdout + out.stderr)["train_base"] == 2
    from snakemake.cli import parse_config

    from kdpipe.config import apply_overrides

    given = parse_config(
        [
            "train={epochs: 3, lr: 0.1}",
            "seeds=[0, 1]",
            "teacher_cache=false",
            "kd={modes: [st]}",
            "report={partial: true}",
        ]
    )  # the last as README ("Reports") gives it
    assert given["train"] == {"epochs": "3", "lr": "0.1"} and given["teacher_cache"] == "false"  # Snakemake's text
    config = apply_overrides({"train": {"epochs": 200, "batch_size": 64}}, given)
    assert config == {
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "seeds": [0, 1],
        "teacher_cache": False,
        "kd": {"modes": ["st"]},
        "report": {"partial": True},
    }


def test_user_config_does_not_inherit_the_embedded_default(tmp_path):
    """--configfile means exactly that file plus the schema's defaults: none of the demo's extra
    chains, cohorts or methods (which a run without --configfile plans: test_default_dag_has_every_entry_point)."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")  # found by the Snakefile
    (tmp_path / "c.yaml").write_text(
        "datasets: [digits]\npairs: [{teacher: resnet20, student: resnet8}]\nbss: {pairs: true}\n"
    )
    out = snakemake("results/summary.csv", "-n", "--cores", "1", "--configfile", "c.yaml", workdir=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    assert counts == {"data_manifest": 1, "train_base": 2, "train_bss": 1, "summary": 1}, counts


@pytest.mark.slow
def test_tiny_real_snakemake_run(tmp_path):
    """Both nets of a pair trained on all of digits (one seed: the rows of several seeds are
    test_reports_build_and_report_settings_rerun_only_reports's), nothing left, a training setting re-runs."""
    (tmp_path / "c.yaml").write_text(
        "seeds: [0]\npairs: [{teacher: resnet14, student: resnet8}]\ntrain: {epochs: 2, batch_size: 64, lr: 0.05}\n"
    )
    out = snakemake("results/summary.csv", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert len(rows) == 2
    assert {(r["student"], r["role"], r["seed"]) for r in rows} == {
        ("resnet14", "teacher", "0"),
        ("resnet8", "student", "0"),
    }
    for row in rows:
        assert row["method"] == "baseline" and row["dataset"] == "digits" and row["epochs"] == "2"
        assert float(row["test_acc_at_best"]) > 10 and float(row["mean_epoch_s"]) > 0
    for net in ("resnet14", "resnet8"):
        assert (tmp_path / "results" / "logs" / "digits" / "base" / net / "seed0.log").read_text().count(
            "test acc"
        ) == 2
    # nothing to do on a second invocation
    again = snakemake(
        "results/summary.csv", "-n", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    # a changed training setting re-runs the training jobs and the summary
    (tmp_path / "c.yaml").write_text(
        "seeds: [0]\npairs: [{teacher: resnet14, student: resnet8}]\ntrain: {epochs: 2, batch_size: 64, lr: 0.04}\n"
    )
    changed = snakemake(
        "results/summary.csv", "-n", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path
    )
    assert job_counts(changed.stdout + changed.stderr)["train_base"] == 2
    # ... and they train anew (their directories' final checkpoints were made with the old lr); Snakemake
    # deleted the old outputs, the replaced run's checkpoint (its best weights, history) and log are kept
    run = tmp_path / "results" / "digits" / "base" / "resnet8" / "seed0"
    old_model = torch.load(run / "model.pt", weights_only=True)
    rerun = snakemake("results/summary.csv", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["fingerprint"]["lr"] == 0.04
    (kept,) = (run / "replaced").iterdir()
    assert {p.name for p in kept.iterdir()} == {"checkpoint.pt", "train.log"}
    state = torch.load(kept / "checkpoint.pt", weights_only=True)
    assert state["fingerprint"]["lr"] == 0.05 and state["epoch"] == 2
    new_model = torch.load(run / "model.pt", weights_only=True)
    (best,) = state["best"].values()  # the one role's best-on-val epoch: the old model.pt
    assert all(torch.equal(old_model[k], v) for k, v in best["state"].items())
    assert not all(torch.equal(old_model[k], new_model[k]) for k in old_model)
    log = (run / "train.log").read_text()
    where = f"results/digits/base/resnet8/seed0/replaced/{kept.name}"
    assert f"held a run with other settings (lr); its files are in {where}; training anew" in log
    # a deleted model.pt or metrics.csv of a finished run (the plots and races read metrics.csv) is made again by
    # the default target, which names every run's outputs: its job rewrites them from the final checkpoint
    kept_bytes = {name: (run / name).read_bytes() for name in ("model.pt", "metrics.csv")}
    kept_record = json.loads((run / "run.json").read_text())
    for name in kept_bytes:
        (run / name).unlink()
    remade = snakemake("--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert remade.returncode == 0, remade.stderr[-3000:]
    assert {name: (run / name).read_bytes() for name in kept_bytes} == kept_bytes
    # run.json (Snakemake removes it before the job) holds the same numbers; these four tell of the rewrite (README)
    record = json.loads((run / "run.json").read_text())
    rewrite = ("wall_time_s", "resumed_at_epochs", "argv", "finished_at")
    assert {k: v for k, v in record.items() if k not in rewrite} == {
        k: v for k, v in kept_record.items() if k not in rewrite
    }
    assert record["resumed_at_epochs"] == [kept_record["epochs"]]
    assert "is final; rewriting the run's outputs" in (run / "train.log").read_text()
    # a job that failed after a complete run (its outputs gone, the summary still there) is retried by the default
    # target, which names every run's run.json
    for name in ("model.pt", "metrics.csv", "run.json"):
        (run / name).unlink()
    retry = snakemake("-n", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert job_counts(retry.stdout + retry.stderr)["train_base"] == 1, retry.stdout[-2000:]
    assert "resuming" not in log and log.count("test acc") == 2


@pytest.mark.slow
def test_changed_data_reruns_exactly_its_dependants(tmp_path):
    """The dataset is a DAG node: rewriting CIFAR files re-runs that dataset's runs, not the others'."""
    from conftest import write_cifar

    write_cifar(tmp_path / "data", n_train=40, n_test=20)
    (tmp_path / "c.yaml").write_text(
        "datasets: [cifar10, digits]\nbase: {nets: [resnet8]}\ndata: {train_subset: 32, val_size: 8}\n"
        "train: {epochs: 1, batch_size: 16}\nreport: {races: false}\n"
    )
    cfg = ["--cores", "2", "--configfile", "c.yaml"]
    out = snakemake("results/summary.csv", *cfg, workdir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((tmp_path / "results" / "cifar10" / "data" / "manifest.json").read_text())
    record = json.loads((tmp_path / "results" / "cifar10" / "base" / "resnet8" / "seed0" / "run.json").read_text())
    assert record["data"]["sha256"] == manifest["sha256"] == record["fingerprint"]["data_sha256"]
    assert record["run"]["run_dir"] == "results/cifar10/base/resnet8/seed0"  # the plan's identity record
    assert record["run"]["log"] == "results/logs/cifar10/base/resnet8/seed0.log" and record["run"]["group"] == ""
    assert manifest["sizes"] == {"train": 32, "val": 8, "test": 20} and len(manifest["classes"]) == 10
    assert "Nothing to be done" in (lambda o: o.stdout + o.stderr)(
        snakemake("results/summary.csv", "-n", *cfg, workdir=tmp_path)
    )

    assert record["config"]["data_manifest"] == "results/cifar10/data/manifest.json"  # the run checked its data

    write_cifar(tmp_path / "data", n_train=40, n_test=20, seed=1)  # same files, other images
    dry = snakemake("results/summary.csv", "-n", *cfg, workdir=tmp_path)
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts == {"data_manifest": 1, "train_base": 1, "summary": 1}, counts
    planned = re.findall(r"rule (\w+):\n\s+input: [^\n]*\n\s+output: ([^\n]+)", dry.stdout)
    assert ("train_base", "results/cifar10/base/resnet8/seed0/model.pt") in [(r, o.split(",")[0]) for r, o in planned]

    # files replaced by others with older times (cp -p, rsync -a, an unpacked archive): Snakemake alone sees nothing
    assert snakemake("results/summary.csv", *cfg, workdir=tmp_path).returncode == 0
    data_dir, made = tmp_path / "data" / "cifar-10-batches-py", tmp_path / "results" / "cifar10" / "data"
    files = sorted(data_dir.iterdir())

    def set_back(seconds):  # every data file's time moved back, its bytes as they are
        for f in files:
            when = f.stat().st_mtime_ns - seconds * 10**9
            os.utime(f, ns=(when, when))

    set_back(3600)  # the same bytes, older times: nothing runs again, nothing is said
    same = snakemake("results/summary.csv", *cfg, workdir=tmp_path)
    assert "Nothing to be done" in same.stdout + same.stderr and "kdpipe: the data files" not in same.stderr
    content = (made / "manifest.json").read_bytes()
    write_cifar(tmp_path / "data", n_train=40, n_test=20, seed=2)
    set_back(7200)
    said = "kdpipe: the data files of cifar10 changed since results/cifar10/data/manifest.json was made"
    dry = snakemake("results/summary.csv", "-n", *cfg, workdir=tmp_path)
    assert f"{said} (their times are older than it): its time is set back below theirs" in dry.stderr
    assert job_counts(dry.stdout + dry.stderr) == {"data_manifest": 1, "train_base": 1, "summary": 1}
    assert (made / "manifest.json").read_bytes() == content  # its time alone set back
    assert (made / "manifest.json").stat().st_mtime_ns < min(f.stat().st_mtime_ns for f in files)
    run = snakemake("results/summary.csv", "--rerun-triggers", "mtime", *cfg, workdir=tmp_path)
    assert run.returncode == 0  # the newer inputs alone make it again (no other trigger needed)
    assert job_counts(run.stdout + run.stderr) == {"data_manifest": 1, "train_base": 1, "summary": 1}
    manifest = json.loads((made / "manifest.json").read_text())
    record = json.loads((tmp_path / "results" / "cifar10" / "base" / "resnet8" / "seed0" / "run.json").read_text())
    assert record["data"]["sha256"] == manifest["sha256"] == record["fingerprint"]["data_sha256"]
    again = snakemake("results/summary.csv", "-n", *cfg, workdir=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr and "kdpipe: the data files" not in again.stderr


def test_a_run_refuses_data_other_than_its_data_manifest_describes(tmp_path):
    """``--data_manifest``, which every workflow job gets: a manifest made before the files changed (an older
    kdpipe's, without the files' record, so not made again) stops the job in one line before anything is written."""
    from conftest import cli_in_process, tiny_cli_flags, write_cifar
    from kdpipe.jobs import write_data_manifest

    write_cifar(tmp_path / "data")
    manifest = tmp_path / "manifest.json"
    data = {"data_name": "cifar10", "img_root": str(tmp_path / "data"), "val_size": 0, "train_subset": 16}
    made = write_data_manifest(data, manifest)
    assert made["sha256"] and set(json.loads((tmp_path / "files.json").read_text())) == {"stamp", "content"}
    flags = tiny_cli_flags(tmp_path / "runs")
    flags[flags.index("digits")] = "cifar10"
    flags += ["--img_root", str(tmp_path / "data"), "--val_size", "0", "--train_subset", "16"]
    flags += ["--data_manifest", str(manifest), "--net_name", "resnet8"]
    write_cifar(tmp_path / "data", seed=3)
    refused = cli_in_process("base", *flags)
    assert refused.returncode != 0 and not (tmp_path / "runs").exists()
    now = write_data_manifest(data, tmp_path / "now.json")["sha256"]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"kdpipe base: error: data_manifest: {manifest} describes other data "
        f"(sha256 {made['sha256'][:12]}...) than cifar10 holds now ({now[:12]}...): its files changed since it "
        f"was made; make it again (snakemake --forcerun {manifest}), which re-runs the runs of that data"
    )
    manifest.write_text("{not json")
    assert f"data_manifest: cannot read {manifest} (JSONDecodeError: " in cli_in_process("base", *flags).stderr
    assert cli_in_process("base", *flags[:-4], "--net_name", "resnet8").returncode == 0  # without one: trains


def test_crop_padding_written_out_as_the_datasets_own_is_the_same_run(tmp_path):
    """``auto`` is zeros on digits (reflect on CIFAR): a config that writes the padding out finds its runs
    finished (the workflow's jobs only rewrite their outputs); the other padding is another run."""
    from conftest import cli_in_process, tiny_cli_flags

    flags = [*tiny_cli_flags(tmp_path / "runs"), "--net_name", "resnet8"]
    assert cli_in_process("base", *flags).returncode == 0
    assert "already complete" in cli_in_process("base", *flags, "--crop_padding", "zeros").stderr
    other = cli_in_process("base", *flags, "--crop_padding", "reflect")
    assert other.returncode != 0 and "other settings (crop_padding)" in other.stderr


def test_cli_refuses_a_finished_run_whose_data_changed(tmp_path):
    from conftest import cli, cli_in_process, tiny_cli_flags, write_cifar

    write_cifar(tmp_path / "data")
    flags = tiny_cli_flags(tmp_path / "runs")
    flags[flags.index("digits")] = "cifar10"
    flags += ["--img_root", str(tmp_path / "data"), "--val_size", "0", "--train_subset", "16"]
    # the run and its repeat through the CLI's entry in this process; the refusal through ``python -m kdpipe``
    first = cli_in_process("base", "--net_name", "resnet8", *flags)
    assert first.returncode == 0, first.stderr
    assert "already complete" in cli_in_process("base", "--net_name", "resnet8", *flags).stderr
    write_cifar(tmp_path / "data", seed=3)
    again = cli("base", "--net_name", "resnet8", *flags)
    assert again.returncode != 0
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "finished run with other data" in lines[0], lines


KD_CONFIG = """
seeds: [0, 1]
pairs: [{teacher: resnet14, student: resnet8}, {teacher: resnet8, student: resnet8}]
train: {epochs: 1, batch_size: 64}
kd:
  modes: [st, at, fsp]
  with_st: [rkd]
  settings: {at: {lambda_kd: 500}, st: {T: 3}}
"""


def test_kd_nodes_and_params(tmp_path):
    from kdpipe.workflow import kd_options, kd_runs, teacher_model

    config = load_config(yaml.safe_load(KD_CONFIG))
    runs = kd_runs(config)
    assert len(runs) == 4 * 2 * 2  # variants x pairs x seeds
    assert "results/digits/kd-rkd+st/resnet14-resnet8/seed1" in runs
    at = kd_options(config, "digits", "at", "resnet14", "resnet8", 1)
    assert at["lambda_kd"] == 500 and at["kd_mode"] == "at" and "T" not in at and at["seed"] == 1
    assert kd_options(config, "digits", "st", "resnet14", "resnet8", 0)["T"] == 3
    plus = kd_options(config, "digits", "rkd+st", "resnet14", "resnet8", 0)
    assert plus["kd_mode"] == "rkd" and plus["st_weight"] == 0.1
    assert teacher_model(config, "digits", "resnet14", 1) == "results/digits/base/resnet14/seed1/model.pt"
    config["teacher_seed"] = 0
    assert teacher_model(config, "digits", "resnet14", 1) == "results/digits/base/resnet14/seed0/model.pt"


@pytest.mark.parametrize(
    "kd, message",
    [
        ({"modes": ["xyz"]}, "config kd.modes: unknown mode 'xyz'"),
        ({"settings": {"at": {"w_dist": 1}}}, "config kd.settings.at.w_dist: not a setting of at"),
        ({"settings": {"st": {"T": 0}}}, "config kd.settings.st.T: 0 is less than or equal to the minimum of 0"),
    ],
)
def test_kd_config_errors(kd, message):
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": kd})
    assert message in str(err.value)


@pytest.mark.slow
def test_kd_wiring_and_exact_reruns(tmp_path):
    """Teacher -> students wiring (a cache reader, a live student, a +st variant), and exactly which jobs a
    change re-plans (real tiny runs)."""
    config = """
seeds: [0]
pairs: [{teacher: resnet8, student: resnet8}]
data: {train_subset: 32}
train: {epochs: 1, batch_size: 16}
teacher_cache: "on"
kd:
  modes: [st, at]
  with_st: [rkd]
  settings: {at: {lambda_kd: 500}}
"""
    (tmp_path / "c.yaml").write_text(config)
    cfg = ("--configfile", str(tmp_path / "c.yaml"))
    dry = {}

    def plan():
        out = snakemake("results/summary.csv", "-n", "--cores", "2", *cfg, workdir=tmp_path)
        assert out.returncode == 0, out.stderr
        dry["stdout"] = out.stdout
        return job_counts(out.stdout) if "Job stats" in out.stdout else {}

    run = snakemake("results/summary.csv", "--cores", "2", *cfg, workdir=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # what it planned (the real run prints the dry run's Job stats before its jobs)
    planned = {"data_manifest": 1, "train_base": 1, "teacher_cache": 1, "train_kd": 3, "summary": 1}
    assert job_counts(run.stdout + run.stderr) == planned
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert sorted((r["method"], r["variant"]) for r in rows) == [
        ("at", ""),
        ("baseline", ""),
        ("rkd", "+st"),
        ("st", ""),
    ]
    assert plan() == {}
    # one mode's lambda: only that mode's students and the summary
    (tmp_path / "c.yaml").write_text(config.replace("lambda_kd: 500", "lambda_kd: 250"))
    assert plan() == {"train_kd": 1, "summary": 1}
    # a new seed: only that seed's jobs
    (tmp_path / "c.yaml").write_text(config.replace("seeds: [0]", "seeds: [0, 1]"))
    assert plan() == {"train_base": 1, "teacher_cache": 1, "train_kd": 3, "summary": 1}
    outputs = [o for o in re.findall(r"^\s+output: (.+)$", dry["stdout"], re.M) if "summary.csv" not in o]
    assert len(outputs) == 5 and all("seed1" in o and "seed0" not in o for o in outputs)
    # a retrained teacher (new weights): its cache, all its students and the summary, not the teacher itself
    (tmp_path / "c.yaml").write_text(config)
    teacher = tmp_path / "results/digits/base/resnet8/seed0/model.pt"
    state = torch.load(teacher, weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, teacher)
    assert plan() == {"teacher_cache": 1, "train_kd": 3, "summary": 1}
    # which students read the cache, and the logged reason
    st_log = (tmp_path / "results/logs/digits/kd-st/resnet8-resnet8/seed0.log").read_text()
    at_log = (tmp_path / "results/logs/digits/kd-at/resnet8-resnet8/seed0.log").read_text()
    assert "teacher: cache -- teacher_cache: on" in st_log and "teacher: live" in at_log
    assert "teacher cache results/digits/cache/resnet8/seed0: built" in run.stderr


def test_generation_chain_and_reruns(tmp_path):
    """generations: 3 plans gen1 -> gen2 -> gen3; new weights in gen1 re-plan gen2 and gen3 only."""
    config = """
seeds: [0]
base: {nets: [resnet8]}
data: {train_subset: 32}
train: {epochs: 1, batch_size: 16}
bss: {nets: [resnet8], generations: 3, attack_size: 4}
"""
    (tmp_path / "c.yaml").write_text(config)
    cfg = ("--configfile", str(tmp_path / "c.yaml"))
    # the chain: each generation's input is the previous generation's model
    dag = snakemake("results/summary.csv", "--dag", *cfg, workdir=tmp_path).stdout
    assert "train_bss" in dag
    from kdpipe.workflow import bss_teacher

    cfg_dict = load_config(yaml.safe_load(config))
    assert bss_teacher(cfg_dict, "digits", "resnet8", 0, 1) == "results/digits/base/resnet8/seed0/model.pt"
    assert bss_teacher(cfg_dict, "digits", "resnet8", 0, 3) == "results/digits/bss/resnet8/seed0/gen2/model.pt"
    run = snakemake("results/summary.csv", "--cores", "2", *cfg, workdir=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    planned = job_counts(run.stdout + run.stderr)  # the real run prints the dry run's Job stats first
    assert planned == {"data_manifest": 1, "train_base": 1, "train_bss": 3, "summary": 1}
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert sorted(r["generation"] for r in rows if r["method"] == "bss") == ["1", "2", "3"]
    gen1 = tmp_path / "results/digits/bss/resnet8/seed0/gen1/model.pt"
    state = torch.load(gen1, weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, gen1)
    replan = snakemake("results/summary.csv", "-n", "--cores", "1", *cfg, workdir=tmp_path).stdout
    assert job_counts(replan) == {"train_bss": 2, "summary": 1}
    outputs = [o for o in re.findall(r"^\s+output: (.+)$", replan, re.M) if "summary.csv" not in o]
    assert sorted(o.split("/gen")[1][0] for o in outputs) == ["2", "3"]


def test_default_dag_has_every_entry_point(tmp_path):
    """The embedded default (config/config.yaml, which applies when no --configfile is given) plans every
    entry point, the same jobs as the cost plan."""
    from kdpipe.costplan import dag_jobs
    from kdpipe.workflow import run_targets

    config = load_config(yaml.safe_load(open(ROOT / "config" / "config.yaml")))
    runs = run_targets(config)
    for prefix in ("base/", "kd-", "/ft/", "/crd/", "/dml/", "/bss/"):
        assert any(prefix in r for r in runs), prefix
    assert sum("/bss/" in r for r in runs) >= 2
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")  # found by the Snakefile
    out = snakemake("-n", "--cores", "2", workdir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert counts["train_base"] >= 2 and counts["summary"] == 1
    assert counts["ft_paraphraser"] == 3 and counts["train_ft"] == 3 and counts["train_crd"] == 3  # 3 seeds
    assert counts["train_dml"] == 3 and counts["train_bss"] == 6
    # the cost plan lists the same jobs as Snakemake, rule by rule
    assert counts == dict(Counter(job.rule for job in dag_jobs(config)))


@pytest.mark.parametrize(
    "setting, epochs, modes, expected, reason",
    [
        ("auto", 12, ["st", "rkd", "at"], False, "auto: 24 live teacher passes per image <= 25 views"),
        ("auto", 12, ["st", "rkd", "cc"], True, "auto: 3 students x their epochs = 36 live teacher passes per image"),
        ("auto", 12, ["st"], False, "12 live teacher passes per image <= 25 views"),
        ("auto", 30, ["st"], True, "30 live teacher passes per image > 25 views"),
        ("on", 1, ["st"], True, "teacher_cache: on"),
        ("off", 200, ["st", "rkd"], False, "teacher_cache: off"),
        ("auto", 200, ["at", "fitnet"], False, "no student reads only logits or embeddings"),
    ],
)
def test_cache_decision(setting, epochs, modes, expected, reason):
    from kdpipe.workflow import cache_decision

    config = load_config(
        {
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "teacher_cache": setting,
            "train": {"epochs": epochs},
            "kd": {"modes": modes},
        }
    )
    use, why = cache_decision(config, "digits", "resnet20", 0)
    assert use is expected and reason in why


@pytest.mark.parametrize(
    "modes, crd, embeddings",
    [
        (["st", "dkd"], False, False),  # logits only: the cache stores no embeddings
        (["st", "rkd"], False, True),  # rkd reads the pooled embedding
        (["st"], True, True),  # so does CRD
        (["st+st"], False, False),
    ],
)
def test_cache_stores_embeddings_only_for_a_student_that_reads_them(modes, crd, embeddings):
    from kdpipe.workflow import cache_options, cache_plan

    config = load_config(
        {
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "teacher_cache": "on",
            "kd": {"modes": [m for m in modes if "+" not in m], "with_st": [m[:-3] for m in modes if "+" in m]},
            "crd": {"enabled": crd},
        }
    )
    assert cache_options(config, "digits", "resnet20", 0)["embeddings"] is embeddings
    (line,) = cache_plan(config)
    assert ("built (logits and embeddings)" if embeddings else "built (logits)") in line


def test_paraphraser_lr_by_teacher_sets_only_that_teachers_node():
    from kdpipe.workflow import ft_paraphraser_options

    pairs = [{"teacher": "resnet20", "student": "resnet8"}, {"teacher": "resnet32", "student": "resnet8"}]
    ft = {"enabled": True, "paraphraser_lr": 0.01, "paraphraser_lr_by_teacher": {"resnet32": 0.05}}
    config = load_config({"pairs": pairs, "ft": ft})
    assert ft_paraphraser_options(config, "digits", "resnet32", 0)["lr"] == 0.05
    assert ft_paraphraser_options(config, "digits", "resnet20", 0)["lr"] == 0.01
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": pairs, "ft": {**ft, "paraphraser_lr_by_teacher": {"vgg13": 0.05}}})
    assert str(err.value) == (
        "config ft.paraphraser_lr_by_teacher: 'vgg13' teaches no pair; teachers: resnet20, resnet32"
    )


def test_cache_off_for_too_many_views(monkeypatch):
    from kdpipe import cache
    from kdpipe.workflow import cache_decision

    monkeypatch.setattr(cache, "MAX_CACHE_VIEWS", 100)
    config = load_config(
        {
            "datasets": ["cifar10"],
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "teacher_cache": "on",
            "kd": {"modes": ["st"]},
        }
    )
    use, why = cache_decision(config, "cifar10", "resnet20", 0)
    assert not use and "162 views per image exceed the 100" in why


@pytest.mark.slow
def test_reports_build_and_report_settings_rerun_only_reports(tmp_path):
    from PIL import Image, ImageSequence

    pytest.importorskip("bar_chart_race")
    config = """
seeds: [0, 1]
pairs: [{teacher: resnet8, student: resnet8}]
data: {train_subset: 32}
train: {epochs: 3, batch_size: 16}
kd: {modes: [st]}
report: {steps_per_period: 2}
"""
    (tmp_path / "c.yaml").write_text(config)
    cfg = ("--configfile", str(tmp_path / "c.yaml"))
    out = snakemake("--cores", "2", *cfg, workdir=tmp_path)  # the default target: everything
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "results"
    # the summary holds every seed's row of every method, each trained for the configured epochs
    rows = list(csv.DictReader(open(results / "summary.csv")))
    assert sorted((r["method"], r["seed"], r["status"], r["epochs"]) for r in rows) == [
        ("baseline", "0", "ok", "3"),
        ("baseline", "1", "ok", "3"),
        ("st", "0", "ok", "3"),
        ("st", "1", "ok", "3"),
    ], rows
    assert (results / "logs/digits/kd-st/resnet8-resnet8/seed1.log").read_text().count("test acc") == 3
    for path in (
        "tables/digits.md",
        "tables/digits.csv",
        "tables/digits.tex",
        "plots/digits/cost.png",
        "plots/digits/resnet8-resnet8/test_acc.png",
        "plots/digits/resnet8-resnet8/loss.png",
        "plots/digits/resnet8-resnet8/final.png",
    ):
        assert (results / path).stat().st_size > 0, path
    for png in results.glob("plots/**/*.png"):
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    for metric in ("test_acc", "train_loss", "train_time"):
        with Image.open(results / f"race/digits/resnet8-resnet8/{metric}.gif") as gif:
            frames = sum(1 for _ in ImageSequence.Iterator(gif))
        assert frames == (3 - 1) * 2 + 1  # one frame per epoch step: (epochs - 1) x steps_per_period + 1
    table = (results / "tables/digits.md").read_text()
    assert "| st |" in table and "| baseline |" in table and "published" not in table
    report = snakemake("--report", "results/report.html", *cfg, workdir=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (results / "report.html").read_text(errors="replace")
    assert "race" in html and "test_acc.png" in html and "digits.md" in html
    # a report setting re-runs only the report rules that read it
    (tmp_path / "c.yaml").write_text(config.replace("steps_per_period: 2", "steps_per_period: 3"))
    plan = snakemake("-n", "--cores", "1", *cfg, workdir=tmp_path)
    assert job_counts(plan.stdout) == {"race": 3, "all": 1}
    (tmp_path / "c.yaml").write_text(
        config.replace("report: {steps_per_period: 2}", "report: {steps_per_period: 2, published: false}")
    )
    plan = snakemake("-n", "--cores", "1", *cfg, workdir=tmp_path)
    assert job_counts(plan.stdout) == {"tables": 1, "all": 1}


def test_cache_off_for_large_image_folders(tmp_path):
    from kdpipe.workflow import base_options, cache_decision

    config = load_config(
        {
            "datasets": ["flowers"],
            "imagefolders": {"flowers": {"path": str(tmp_path), "image_size": 64}},
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "teacher_cache": "on",
            "kd": {"modes": ["st"]},
        }
    )
    use, why = cache_decision(config, "flowers", "resnet20", 0)
    assert not use and "578 views per image exceed the 512" in why
    opts = base_options(config, "flowers", "resnet8", 0)
    assert opts["data_name"] == f"imagefolder:{tmp_path}" and opts["image_size"] == 64
    small = load_config(
        {
            "datasets": ["flowers"],
            "imagefolders": {"flowers": str(tmp_path)},
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "teacher_cache": "on",
            "kd": {"modes": ["st"]},
        }
    )
    assert cache_decision(small, "flowers", "resnet20", 0)[0]  # 32 pixels: 162 views


def test_bss_chains_of_two_pairs_stay_in_their_own_cells(tmp_path):
    """Generations >= 2 of a pair's chain learn from a student-architecture model, but they belong
    to the pair: identity, group and table cell come from the plan, not from the job's t_name."""
    from kdpipe.plan import plan
    from kdpipe.summary import summary_rows

    config = load_config(
        {
            "pairs": [{"teacher": "resnet14", "student": "resnet8"}, {"teacher": "resnet8", "student": "resnet8"}],
            "bss": {"pairs": True, "generations": 3},
        }
    )
    bss = [r for r in plan(config) if r.method == "bss"]
    assert len(bss) == 6
    by_chain = {(r.run_dir.split("/bss/")[1].split("/")[0], r.generation): r for r in bss}
    for gen in (1, 2, 3):
        assert by_chain[("resnet14-resnet8", gen)].group == "resnet14-resnet8"
        assert by_chain[("resnet8-resnet8", gen)].group == "resnet8-resnet8"
    # the job of gen2 loads a resnet8 teacher (gen1's model); its own record says so
    from kdpipe.workflow import bss_options, bss_teacher

    opts = bss_options(config, "digits", "resnet14-resnet8", 0, 2)
    assert opts["t_name"] == "resnet8" and opts["s_name"] == "resnet8"
    assert bss_teacher(config, "digits", "resnet14-resnet8", 0, 2).endswith("bss/resnet14-resnet8/seed0/gen1/model.pt")
    # a finished gen2 run and a missing gen3 run land in the pair's group all the same
    gen2 = by_chain[("resnet14-resnet8", 2)]
    run_dir = tmp_path / gen2.run_dir
    run_dir.mkdir(parents=True)
    role = {"method": "bss", "variant": "", "teacher": "resnet8", "student": "resnet8", "generation": 2}
    role.update(params=1, best_epoch=1, best_val_acc=50.0, test_acc_at_best=50.0, last_val_acc=50.0, last_test_acc=50.0)
    record = {"method": "bss", "epochs": 1, "roles": {"student": role}, "train_time_s": 1.0, "mean_epoch_s": 1.0}
    (run_dir / "run.json").write_text(json.dumps(record))
    runs = [{**gen2.record(), "run_dir": str(run_dir)}, by_chain[("resnet14-resnet8", 3)].record()]
    rows = summary_rows(runs, teachers=("resnet14", "resnet8"))
    assert [(r["status"], r["teacher"], r["student"], r["group"], r["generation"]) for r in rows] == [
        ("ok", "resnet14", "resnet8", "resnet14-resnet8", 2),
        ("missing", "resnet14", "resnet8", "resnet14-resnet8", 3),
    ]


def test_run_options_are_each_rules_own_options():
    """The cost plan's options of a planned run (run_options, through the run directory's wildcards) are
    those its rule's options function gives for that run's dataset, nets, variant, cohort, chain,
    generation, seed and sweep point."""
    from kdpipe.plan import bss_chains, plan
    from kdpipe.workflow import (
        base_options,
        bss_options,
        crd_options,
        dml_options,
        ft_options,
        kd_options,
        run_options,
    )

    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["kd"]["sweep"] = {"st": {"T": [2, 8]}}
    raw["crd"]["with_st"] = True
    config = load_config(raw)
    chains = {chain for chain, _, _ in bss_chains(config)}
    seen = Counter()
    for run in plan(config):
        d, t, s, seed, variant = run.dataset, run.teacher, run.student, run.seed, run.method + run.variant
        expected = {
            "train_base": lambda: base_options(config, d, s, seed),
            "train_kd": lambda: kd_options(config, d, variant, t, s, seed),
            "train_kd_sweep": lambda: kd_options(config, d, variant, t, s, seed, run.sweep),
            "train_ft": lambda: ft_options(config, d, t, s, seed),
            "train_crd": lambda: crd_options(config, d, variant, t, s, seed),
            "train_dml": lambda: dml_options(config, d, "-".join(run.peers), seed),
            "train_bss": lambda: bss_options(
                config, d, next(c for c in chains if f"/bss/{c}/" in run.run_dir), seed, run.generation
            ),
        }[run.rule]()
        assert run_options(config, run) == expected, run.run_dir
        seen[run.rule] += 1
    assert set(seen) == {"train_base", "train_kd", "train_kd_sweep", "train_ft", "train_crd", "train_dml", "train_bss"}
    assert seen["train_kd_sweep"] == 2 * len(config["seeds"])


def test_unchanged_inputs_rerun_nothing_and_precision_reruns_training(tmp_path):
    """A touched teacher above Snakemake's default checksum size (a ResNet-20 model.pt is 1.1 MB) re-plans
    nothing (profiles/default: max-checksum-file-size); a teacher cache rebuilt from the same teacher writes
    the same manifest, so its readers keep their runs; resources.amp re-plans every training job and cache."""
    config = """
seeds: [0]
pairs: [{teacher: resnet20, student: resnet8}]
data: {train_subset: 32}
train: {epochs: 1, batch_size: 16}
teacher_cache: "on"
kd: {modes: [st]}
"""
    (tmp_path / "c.yaml").write_text(config)
    cfg = ("--configfile", str(tmp_path / "c.yaml"))

    def plan():
        out = snakemake("results/summary.csv", "-n", "--cores", "2", *cfg, workdir=tmp_path)
        assert out.returncode == 0, out.stderr
        return job_counts(out.stdout) if "Job stats" in out.stdout else {}

    run = snakemake("results/summary.csv", "--cores", "2", *cfg, workdir=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert job_counts(run.stdout + run.stderr) == {
        "data_manifest": 1,
        "train_base": 2,
        "teacher_cache": 1,
        "train_kd": 1,
        "summary": 1,
    }
    teacher = tmp_path / "results/digits/base/resnet20/seed0/model.pt"
    assert teacher.stat().st_size > 1_000_000  # above Snakemake's default checksum limit
    time.sleep(1.1)
    os.utime(teacher)  # now: newer than every output downstream of it
    assert plan() == {}
    manifest = tmp_path / "results/digits/cache/resnet20/seed0/manifest.json"
    before = manifest.read_text()
    forced = snakemake("results/summary.csv", "--cores", "2", "--forcerun", "teacher_cache", *cfg, workdir=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert manifest.read_text() == before
    st_log = (tmp_path / "results/logs/digits/kd-st/resnet20-resnet8/seed0.log").read_text()
    # the reader's job ran again (its input was rewritten), found its finished run and only rewrote its outputs
    assert "is final; rewriting the run's outputs" in st_log and "other settings" not in st_log, st_log
    (tmp_path / "c.yaml").write_text(config + "resources: {amp: 'off'}\n")
    assert plan() == {"train_base": 2, "teacher_cache": 1, "train_kd": 1, "summary": 1}


def test_a_born_again_chains_generation_0_is_a_planned_run():
    """A bss.nets chain learns from its net's base run at teacher_seed: with teacher_seed outside seeds that
    run trained as generation 1's input but was in no plan, so the summary never listed it."""
    from kdpipe.plan import plan
    from kdpipe.workflow import bss_teacher

    config = load_config({"seeds": [0], "teacher_seed": 1, "bss": {"nets": ["resnet8w8"], "generations": 2}})
    dirs = {run.run_dir for run in plan(config)}
    gen0 = bss_teacher(config, "digits", "resnet8w8", 0, 1)
    assert gen0 == "results/digits/base/resnet8w8/seed1/model.pt" and str(Path(gen0).parent) in dirs


def test_outdated_manifests_read_the_files_record_beside_the_manifest(tmp_path, monkeypatch):
    """The parse-time check alone: the same bytes with older times refresh the record and say nothing; a damaged
    record counts as changed files (the manifest's time is set back, and the data node writes a new record); no
    record (a manifest of a kdpipe before it) is left to each run's own check."""
    from conftest import write_cifar
    from kdpipe.jobs import write_data_manifest
    from kdpipe.workflow import data_manifest_path, data_options, files_record_path, outdated_manifests

    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "data")
    config = load_config({"datasets": ["cifar10"], "base": {"nets": ["resnet8"]}, "data": {"val_size": 0}})
    manifest = Path(data_manifest_path("cifar10"))
    record = files_record_path(manifest)
    manifest.parent.mkdir(parents=True)
    write_data_manifest(data_options(config, "cifar10"), manifest)
    files = sorted((tmp_path / "data" / "cifar-10-batches-py").iterdir())
    for f in files:
        os.utime(f, ns=(10**18, 10**18))  # 2001: older than the manifest, the same bytes
    stamp = json.loads(record.read_text())["stamp"]
    assert outdated_manifests(config) == [] and json.loads(record.read_text())["stamp"] != stamp
    made = manifest.stat().st_mtime_ns
    record.write_text('{"stamp": "56eb')  # damaged
    assert outdated_manifests(config)[0].startswith("the data files of cifar10 changed since")
    assert 0 < manifest.stat().st_mtime_ns < min(f.stat().st_mtime_ns for f in files) < made
    record.unlink()
    os.utime(manifest, ns=(made, made))
    assert outdated_manifests(config) == []


def test_the_planned_form_is_the_one_a_run_records():
    """The workflow's ``form`` param and the run's settled ``form`` follow one rule (options.recorded_form): were
    they to differ, every revised mode's (or paraphraser's) finished run would be refused or trained again."""
    from kdpipe.losses import LOSSES
    from kdpipe.methods.common import settle_form
    from kdpipe.options import PARAPHRASER_REVISIONS, recorded_form
    from kdpipe.workflow import ft_paraphraser_options

    config = load_config({"datasets": ["digits"], "pairs": [{"teacher": "resnet14", "student": "resnet8"}]})
    for revisions in [PARAPHRASER_REVISIONS, *(cls.revisions for cls in LOSSES.values())]:
        opts = {"form": None}
        settle_form(opts, revisions, "x")
        assert opts["form"] == recorded_form(revisions)
    assert ft_paraphraser_options(config, "digits", "resnet14", 0)["form"] == recorded_form(PARAPHRASER_REVISIONS)
    assert all(cls.recorded_form() == recorded_form(cls.revisions) for cls in LOSSES.values())
