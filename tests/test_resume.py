"""A run killed with SIGKILL at arbitrary moments resumes and ends bit-identical to an uninterrupted one."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

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
