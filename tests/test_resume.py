"""A run killed with SIGKILL at arbitrary moments resumes and ends bit-identical to an uninterrupted one."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, cli, cli_in_process, tiny_cli_flags
from kdpipe.checkpoint import run_dir_lock

ARGS = [
    "base",
    "--data_name",
    "digits",
    "--net_name",
    "resnet8",
    "--epochs",
    "5",
    "--batch_size",
    "32",
    "--lr",
    "0.05",
    "--threads",
    "1",
    "--cuda",
    "0",
    "--seed",
    "7",
]


def start(save_root, note):
    return subprocess.Popen(
        [sys.executable, "-m", "kdpipe", *ARGS, "--save_root", str(save_root), "--note", note],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_epoch(run):
    path = run / "checkpoint.pt"
    if not path.exists():
        return 0
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:
        return 0


def kill_after(run, proc, epoch, delay):
    deadline = time.time() + 240
    while checkpoint_epoch(run) < epoch:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(delay)  # somewhere inside the next epoch (or its checkpoint write)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    reference = start(tmp_path, "straight")
    interrupted = start(tmp_path, "killed")
    run = tmp_path / "killed"
    kill_after(run, interrupted, 1, 0.15)
    assert not (run / "run.json").exists()
    second = start(tmp_path, "killed")
    kill_after(run, second, 3, 0.4)
    assert not (run / "run.json").exists()
    final = start(tmp_path, "killed")
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["task"]
    last_b = torch.load(run / "checkpoint.pt", weights_only=True)["task"]
    for k, v in last_a["roles"]["net"].items():
        assert torch.equal(v, last_b["roles"]["net"][k]), k
    mom_a = last_a["optimizers"]["net"]["state"]
    mom_b = last_b["optimizers"]["net"]["state"]
    assert all(torch.equal(mom_a[i]["momentum_buffer"], mom_b[i]["momentum_buffer"]) for i in mom_a)

    def accs(name):
        rows = csv.DictReader(open(tmp_path / name / "metrics.csv"))
        return [(r["epoch"], r["train_loss"], r["val_acc"], r["test_acc"]) for r in rows]

    assert accs("straight") == accs("killed")
    record = json.loads((run / "run.json").read_text())
    assert len(record["resumed_at_epochs"]) == 2 and record["resumed_at_epochs"][0] >= 1


def test_final_checkpoint_rewrites_every_output(tmp_path):
    """A job killed after its last epoch's checkpoint (Snakemake then deletes its outputs) finishes on rerun.
    (The CLI's entry in this process: the run directory, not the process, carries the state.)"""
    flags = ["base", *tiny_cli_flags(tmp_path, "done"), "--net_name", "resnet8", "--epochs", "2"]
    first = cli_in_process(*flags)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "done"
    before = {name: (run / name).read_bytes() for name in ("metrics.csv", "model.pt")}
    for name in ("model.pt", "metrics.csv", "run.json"):
        (run / name).unlink()
    again = cli_in_process(*flags)
    assert again.returncode == 0, again.stderr
    assert "is final; rewriting" in again.stderr
    assert (run / "metrics.csv").read_bytes() == before["metrics.csv"]
    a = torch.load(io.BytesIO(before["model.pt"]), weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((run / "run.json").read_text())
    assert record["resumed_at_epochs"] == [2] and set(record["outputs"]) == {"model.pt", "metrics.csv"}
    # one output deleted by hand: the finished run is completed again, not reported as done
    (run / "metrics.csv").unlink()
    third = cli_in_process(*flags)
    assert third.returncode == 0, third.stderr
    assert (run / "metrics.csv").read_bytes() == before["metrics.csv"]


@pytest.mark.parametrize("moved", [False, True])
def test_resume_elsewhere_is_logged_and_recorded(tmp_path, moved):
    """A checkpoint records where it was trained (device, threads, what auto resolved to, torch); a resume
    under other conditions goes on, says in one log line what changed and that the numbers are not bit for
    bit an uninterrupted run's, and run.json lists it (``resumed_elsewhere``); a resume in place lists nothing."""
    flags = ["base", *tiny_cli_flags(tmp_path, "moved"), "--net_name", "resnet8", "--epochs", "2", "--threads", "1"]
    assert cli_in_process(*flags).returncode == 0
    run = tmp_path / "moved"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    written = state["trained_on"]
    assert written["device"] == "cpu" and written["threads"] == 1 and written["cuda_graphs"] is None
    assert written["torch"] == torch.__version__ and written["amp_bf16"] is False
    assert json.loads((run / "run.json").read_text())["resumed_elsewhere"] == []
    for name in ("model.pt", "metrics.csv", "run.json"):  # as a job killed after its first epoch's checkpoint
        (run / name).unlink()
    state["epoch"], state["history"] = 1, [row for row in state["history"] if row["epoch"] == 1]
    if moved:
        state["trained_on"] = {**written, "threads": 3}
    torch.save(state, run / "checkpoint.pt")
    again = cli_in_process(*flags)
    assert again.returncode == 0, again.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["resumed_at_epochs"] == [1]
    lines = [ln for ln in again.stderr.splitlines() if "written elsewhere" in ln]
    if not moved:
        assert record["resumed_elsewhere"] == [] and lines == []
        return
    assert record["resumed_elsewhere"] == [{"epoch": 1, "checkpoint": {**written, "threads": 3}, "resume": written}]
    (line,) = lines
    assert "threads 3 -> 1" in line and "from epoch 1" in line and "not be bit for bit" in line
    # the next checkpoint records where it was written now, and keeps the list
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final["trained_on"] == written and final["resumed_elsewhere"] == record["resumed_elsewhere"]


@pytest.mark.parametrize("change", ["optimizer", "module"])
def test_checkpoint_that_does_not_fit_the_run_is_refused_in_one_line(tmp_path, change):
    """A checkpoint written by a form of the method with other parameters (an older kdpipe's init phase trained
    more of the student) is refused with its path and what does not fit; the checkpoint stays as it was."""
    flags = ["base", *tiny_cli_flags(tmp_path, "old"), "--net_name", "resnet8"]
    assert cli_in_process(*flags).returncode == 0
    run = tmp_path / "old"
    for name in ("model.pt", "metrics.csv", "run.json"):  # as a job killed after its checkpoint
        (run / name).unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    task = state["task"]
    if change == "optimizer":  # one parameter fewer in the optimizer's group
        (opt,) = task["optimizers"].values()
        opt["param_groups"][0]["params"].pop()
    else:  # a module with a parameter this run's model has not
        (role,) = task["roles"].values()
        role["extra.weight"] = torch.zeros(3)
    torch.save(state, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    again = cli_in_process(*flags)
    assert again.returncode != 0
    (line,) = [ln for ln in again.stderr.splitlines() if "does not fit" in ln]
    assert str(run / "checkpoint.pt") in line and "move it away to train the run from epoch 0" in line
    assert ("ValueError" if change == "optimizer" else "extra.weight") in line
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not (run / "model.pt").exists() and not (run / "run.json").exists()


def test_second_process_on_a_run_dir_is_refused(tmp_path):
    run = tmp_path / "busy"
    with run_dir_lock(run):
        out = cli("base", *tiny_cli_flags(tmp_path, "busy"), "--net_name", "resnet8")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, out.stderr
    assert f"{run} is in use by another kdpipe process (pid {os.getpid()} on " in lines[0]
    assert not (run / "checkpoint.pt").exists() and not (run / "train.log").exists()
    # released with the holder: the same command now trains (here, in this process, which held the lock)
    assert cli_in_process("base", *tiny_cli_flags(tmp_path, "busy"), "--net_name", "resnet8").returncode == 0
    assert (run / "run.json").exists()
