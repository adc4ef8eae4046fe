"""Recovery: kill -9 of the whole workflow, a diverging run under --keep-going, the directory lock."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import kdpipe
from conftest import ROOT
from kdpipe.errors import KdpipeError
from kdpipe.workflow import base_options, load_config

pytestmark = pytest.mark.slow


def snakemake_cmd(workdir, config, *args):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "results/summary.csv",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(config),
        *args,
    ]


def run(workdir, config, *args, timeout=600):
    return subprocess.run(snakemake_cmd(workdir, config, *args), capture_output=True, text=True, timeout=timeout)


def test_sigkill_of_snakemake_resumes_and_matches_uninterrupted(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "base: {nets: [resnet8]}\ndata: {train_subset: 160}\n"
        "train: {epochs: 6, batch_size: 16, lr: 0.05}\nresources: {threads: 1}\n"
    )
    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen(
        snakemake_cmd(killed, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    ckpt = killed / "results/digits/base/resnet8/seed0/checkpoint.pt"
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None and time.time() < deadline, "workflow ended before it could be killed"
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:
                pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the training job with it
    proc.wait()
    assert not (killed / "results/summary.csv").exists()
    # Snakemake leaves its lock behind after kill -9: unlock, then the same command again
    assert run(killed, config, "--unlock").returncode == 0
    again = run(killed, config)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (killed / "results/logs/digits/base/resnet8/seed0.log").read_text()
    assert "resuming" in log
    # the uninterrupted run: the job's options and threads, in this process (a second workflow cost as much
    # again for the same comparison)
    opts = base_options(load_config(yaml.safe_load(config.read_text())), "digits", "resnet8", "0")
    straight = kdpipe.train_base(**opts, threads=1, save_root=str(tmp_path / "straight"), note="seed0")
    resumed = json.loads((killed / "results/digits/base/resnet8/seed0/run.json").read_text())
    accuracy = ("best_epoch", "best_val_acc", "test_acc_at_best", "last_val_acc", "last_test_acc")
    assert [resumed["roles"]["net"][k] for k in accuracy] == [straight["roles"]["net"][k] for k in accuracy]
    (row,) = list(csv.DictReader(open(killed / "results" / "summary.csv")))
    assert (row["method"], row["seed"], row["status"]) == ("baseline", "0", "ok")
    assert float(row["test_acc_at_best"]) == pytest.approx(straight["roles"]["net"]["test_acc_at_best"], abs=0.01)

    def curve(metrics):
        return [(r["epoch"], r["train_loss"], r["val_acc"], r["test_acc"]) for r in csv.DictReader(open(metrics))]

    assert curve(killed / "results/digits/base/resnet8/seed0/metrics.csv") == curve(
        tmp_path / "straight/seed0/metrics.csv"
    )
    a = torch.load(tmp_path / "straight/seed0/model.pt", weights_only=True)
    b = torch.load(killed / "results/digits/base/resnet8/seed0/model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diverging_run_fails_only_its_branch(tmp_path):
    config = tmp_path / "c.yaml"
    body = (
        "pairs: [{teacher: resnet8, student: resnet8}]\ndata: {train_subset: 48}\n"
        "train: {epochs: 2, batch_size: 16}\n"
        "kd: {modes: [st, at], settings: {at: {lambda_kd: 1.0e+30}}}\n"
    )
    config.write_text(body)
    out = run(tmp_path, config, "--keep-going")
    assert out.returncode != 0
    results = tmp_path / "results" / "digits"
    assert (results / "kd-st/resnet8-resnet8/seed0/run.json").exists()  # the healthy branch finished
    assert not (results / "kd-at/resnet8-resnet8/seed0/run.json").exists()
    log = (tmp_path / "results/logs/digits/kd-at/resnet8-resnet8/seed0.log").read_text()
    assert "non-finite loss at epoch 1, batch" in log
    # the report of what exists lists the failure instead of dropping it
    config.write_text(body + "report: {partial: true}\n")
    partial = run(tmp_path, config)
    assert partial.returncode == 0, partial.stderr[-3000:]
    rows = {(r["method"], r["status"]): r for r in csv.DictReader(open(tmp_path / "results" / "summary.csv"))}
    assert ("st", "ok") in rows and ("at", "failed") in rows
    assert "non-finite loss" in rows[("at", "failed")]["note"]


def test_truncated_teacher_is_a_clear_error(tmp_path):
    kdpipe.train_base(
        data_name="digits",
        net_name="resnet8",
        epochs=1,
        train_subset=32,
        batch_size=16,
        save_root=str(tmp_path),
        note="t",
    )
    teacher = tmp_path / "t" / "model.pt"
    teacher.write_bytes(teacher.read_bytes()[:200])
    with pytest.raises(KdpipeError, match="t_model .*model.pt: unreadable, truncated or corrupted"):
        kdpipe.train_kd(
            data_name="digits",
            t_model=str(teacher),
            t_name="resnet8",
            s_name="resnet8",
            kd_mode="st",
            epochs=1,
            save_root=str(tmp_path),
            note="s",
        )


def test_second_invocation_is_refused_by_the_lock(tmp_path):
    # the first run trains long enough (about 30 s on 2 cores) to still hold the lock when the second, which
    # takes seconds to start and plan, asks for it: with 3 epochs it had finished, and the second found nothing to do
    config = tmp_path / "c.yaml"
    config.write_text("base: {nets: [resnet8]}\ndata: {train_subset: 160}\ntrain: {epochs: 60, batch_size: 16}\n")
    first = subprocess.Popen(
        snakemake_cmd(tmp_path, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    locks = tmp_path / ".snakemake" / "locks"
    deadline = time.time() + 120
    while not (locks.exists() and any(locks.iterdir())):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = run(tmp_path, config)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok"]
