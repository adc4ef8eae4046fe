"""A pair's teacher from a file (``teacher_checkpoint``): the import_teacher entry and its workflow node."""

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml

import kdpipe
from conftest import ROOT
from kdpipe.convert import reference_name
from kdpipe.errors import KdpipeError
from kdpipe.plan import plan
from kdpipe.workflow import load_config

TINY = dict(data_name="digits", train_subset=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet8 trained for one epoch (best-on-val = last), and the same weights in RepDistiller's layout."""
    root = tmp_path_factory.mktemp("teacher")
    record = kdpipe.train_base(net_name="resnet8", epochs=1, save_root=str(root), note="base", **TINY)
    state = torch.load(root / "base" / "model.pt", weights_only=True)
    reference = {"epoch": 240, "best_acc": 71.5, "model": {reference_name("resnet8", k): v for k, v in state.items()}}
    torch.save(reference, root / "ckpt_epoch_240.pth")
    return root, record, state


@pytest.mark.parametrize("src", ["base/model.pt", "ckpt_epoch_240.pth"])
def test_import_evaluates_the_file_on_the_runs_data(trained, src, tmp_path):
    root, base, state = trained
    record = kdpipe.import_teacher(src=str(root / src), net_name="resnet8", save_root=str(tmp_path), note="t", **TINY)
    net = record["roles"]["net"]
    # the same weights on the same split: the accuracies the training run measured at its (only) epoch
    for key in ("best_val_acc", "test_acc_at_best", "last_test_acc"):
        assert net[key] == pytest.approx(base["roles"]["net"][key], abs=1e-9)
    saved = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    assert list(saved) == list(state) and all(torch.equal(saved[k], state[k]) for k in state)
    assert record["epochs"] == 0 and net["variant"] == "imported"
    # a finished run like any other: run.json has a trained run's fields, in its order (runner.write_run_record)
    assert list(record) == list(base) and list(net) == list(base["roles"]["net"])
    assert record["kdpipe"] == kdpipe.__version__ and record["step"] is None and record["resumed_at_epochs"] == []
    assert record["inputs"]["src"]["sha256"] == kdpipe.checkpoint.sha256_file(root / src)
    with open(tmp_path / "t" / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["test_acc"]) == pytest.approx(net["test_acc_at_best"])
    if src.endswith(".pth"):
        conversion = record["info"]["conversion"]
        assert (conversion["source"], conversion["epoch"], conversion["best_acc"]) == ("repdistiller", 240, 71.5)
    # done is done: the same import again returns the finished record
    again = kdpipe.import_teacher(src=str(root / src), net_name="resnet8", save_root=str(tmp_path), note="t", **TINY)
    assert again["finished_at"] == record["finished_at"]


def test_import_that_does_not_fit_is_one_line_and_writes_nothing(trained, tmp_path):
    root, _, _ = trained
    with pytest.raises(KdpipeError, match=r"^teacher_checkpoint .*ckpt_epoch_240.pth: no key layer1.1.conv1.weight"):
        kdpipe.import_teacher(
            src=str(root / "ckpt_epoch_240.pth"), net_name="resnet14", save_root=str(tmp_path), note="t", **TINY
        )
    with pytest.raises(KdpipeError, match=r"^teacher_checkpoint .*model.pt: does not fit resnet8w4"):
        kdpipe.import_teacher(
            src=str(root / "base" / "model.pt"), net_name="resnet8w4", save_root=str(tmp_path), note="t", **TINY
        )
    assert not (tmp_path / "t").exists()


def _config(checkpoint, **extra) -> dict:
    return {
        "pairs": [{"teacher": "resnet8", "student": "resnet8w4", "teacher_checkpoint": str(checkpoint)}],
        "kd": {"modes": ["st"]},
        **extra,
    }


def test_plan_imports_the_teacher_and_trains_it_nowhere(trained, tmp_path):
    root, _, _ = trained
    config = load_config({**_config(root / "ckpt_epoch_240.pth"), "seeds": [0, 1], "teacher_seed": 0})
    runs = {(r.rule, r.student, r.seed) for r in plan(config) if r.method == "baseline"}
    assert runs == {("import_teacher", "resnet8", 0), ("train_base", "resnet8w4", 0), ("train_base", "resnet8w4", 1)}
    # with resources.seeds_together the student's baselines train in one job; the teacher is still imported
    from test_workflow import job_counts, snakemake

    together = {**_config(root / "ckpt_epoch_240.pth"), "seeds": [0, 1], "teacher_seed": 0}
    together["resources"] = {"seeds_together": True}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(together))
    out = snakemake("results/summary.csv", "-n", "--cores", "1", "--configfile", "c.yaml", workdir=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert counts["import_teacher"] == 1 and counts["train_base_seeds"] == 1 and "train_base" not in counts, counts


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["pairs"][0].update(teacher_checkpoint="nowhere.pth"),
            "config pairs.0.teacher_checkpoint: nowhere.pth: no such file",
        ),
        (
            lambda c: c["pairs"].append({"teacher": "resnet8", "student": "resnet8"}),
            "config pairs.1.teacher_checkpoint: none, but pairs.0 takes resnet8 from ",
        ),
        (
            lambda c: c.update(base={"nets": ["resnet8"]}),
            "config base.nets: resnet8 is also trained here, but pairs.0.teacher_checkpoint imports it; ",
        ),
        (
            lambda c: c["pairs"].append({"teacher": "resnet20", "student": "resnet8"}),
            "config pairs.1.student: resnet8 is also trained here, but pairs.0.teacher_checkpoint imports it; ",
        ),
    ],
)
def test_config_refuses_an_ambiguous_teacher_source(trained, change, message):
    root, _, _ = trained
    config = _config(root / "ckpt_epoch_240.pth")
    change(config)
    with pytest.raises(KdpipeError) as err:
        load_config(config, check_pairs=False)
    assert str(err.value).startswith(message)


def test_workflow_distils_from_the_imported_teacher(trained, tmp_path):
    """One seed through Snakemake: import_teacher, no train_base of the teacher, the student reads the
    imported model.pt, and the table's teacher row is the imported file's measured test accuracy."""
    root, base, _ = trained
    config = _config(
        root / "ckpt_epoch_240.pth",
        seeds=[0],
        data={"train_subset": 64},
        train={"epochs": 1},
        report={"races": False},
        teacher_cache="off",
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    cmd += ["--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "results/tables/digits.csv"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rule import_teacher:" in out.stderr and "wildcards: dataset=digits, net=resnet8, seed=0" in out.stderr
    assert out.stderr.count("rule train_base:") == 1  # the student's baseline only
    teacher_dir = tmp_path / "results/digits/base/resnet8/seed0"
    record = json.loads((teacher_dir / "run.json").read_text())
    assert record["entry"] == "import_teacher" and record["run"]["rule"] == "import_teacher"
    student = json.loads((tmp_path / "results/digits/kd-st/resnet8-resnet8w4/seed0/run.json").read_text())
    assert student["inputs"]["t_model"]["sha256"] == kdpipe.checkpoint.sha256_file(teacher_dir / "model.pt")
    with open(tmp_path / "results/tables/digits.csv") as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    assert float(rows["teacher"]["best_mean"]) == pytest.approx(base["roles"]["net"]["test_acc_at_best"], abs=0.01)
