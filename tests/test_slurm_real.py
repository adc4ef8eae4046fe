"""The cluster path on a real SLURM: a tiny digits grid through --profile profiles/slurm.

Runs the README's "Cluster use" steps (``python -m kdpipe.cluster``, then ``snakemake --profile
profiles/slurm`` with the status command it prints) on whatever SLURM ``sinfo`` reaches; CI starts
a one-node one with ``.ci/slurm-up.sh`` and sets KDPIPE_REQUIRE_SLURM=1, so there a missing SLURM
fails instead of skipping.  Asserts that training jobs ran side by side, that a job cancelled
with ``scancel`` in the middle of training was resubmitted and resumed from its epoch checkpoint
to the result of an uninterrupted run, and that results/summary.csv is complete.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

import kdpipe
from conftest import ROOT
from kdpipe.workflow import base_options, load_config

pytestmark = pytest.mark.slow

CONFIG = {
    "datasets": ["digits"],
    "seeds": [0, 1],
    "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.05},
    "kd": {"modes": ["st"]},
    "teacher_cache": False,
    "resources": {"threads": 1},
}
CANCELLED = "results/digits/base/resnet8/seed0"


def _sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def slurm_unavailable() -> str | None:
    """Why this machine cannot submit to SLURM, or None."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed"
    missing = [c for c in ("sbatch", "sinfo", "squeue", "scancel", "scontrol") if shutil.which(c) is None]
    if missing:
        return f"no SLURM client commands ({', '.join(missing)}); CI starts one with .ci/slurm-up.sh"
    out = _sh("sinfo", "-h", "-o", "%P %T")
    if out.returncode != 0 or not out.stdout.strip():
        return f"no SLURM controller answers sinfo ({(out.stderr or 'no partitions').strip()})"
    return None


REASON = slurm_unavailable()
if REASON and os.environ.get("KDPIPE_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"KDPIPE_REQUIRE_SLURM=1 but {REASON}")


def cluster_env() -> dict:
    """The README's exports: partition and account (and GPUs per job, 0 on a partition without GPUs)."""
    env = dict(os.environ)
    partitions = _sh("sinfo", "-h", "-o", "%P").stdout.split()
    default = next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0].rstrip("*"))
    env.setdefault("KDPIPE_SLURM_PARTITION", default)
    env.setdefault("KDPIPE_SLURM_ACCOUNT", "kdpipe-ci")
    gres = _sh("sinfo", "-h", "-p", env["KDPIPE_SLURM_PARTITION"], "-o", "%G").stdout
    env.setdefault("KDPIPE_SLURM_GPUS", "1" if "gpu" in gres else "0")
    return env


class QueueWatcher(threading.Thread):
    """Polls squeue for this run's jobs (name kdpipe_<uuid>): the most training jobs RUNNING at once."""

    def __init__(self, run_id):
        super().__init__(daemon=True)
        self.run_id, self.stop, self.max_running, self.seen = run_id, threading.Event(), 0, {}

    def poll(self):
        out = _sh("squeue", "-h", "--name", self.run_id(), "-o", "%i|%T|%k|%C")
        running = 0
        for line in out.stdout.splitlines():
            jobid, state, comment, cpus = line.split("|")
            tres = self.seen[jobid][3] if jobid in self.seen else self.tres_per_job(jobid)
            self.seen[jobid] = (state, comment, cpus, tres)
            running += state == "RUNNING" and comment.startswith("rule_train_")
        self.max_running = max(self.max_running, running)

    @staticmethod
    def tres_per_job(jobid):
        m = re.search(r"TresPerJob=(\S+)", _sh("scontrol", "show", "job", "-o", jobid).stdout)
        return m.group(1) if m else ""

    def run(self):
        while not self.stop.is_set():
            if self.run_id():
                self.poll()
            time.sleep(0.5)


def checkpoint_epoch(run_dir):
    try:
        return torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"]
    except Exception:
        return 0


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_tiny_grid_through_the_slurm_profile(tmp_path):
    env = cluster_env()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    # step 1 of the README: the check, which prints the command to submit with
    check = subprocess.run(
        [sys.executable, "-m", "kdpipe.cluster"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert check.returncode == 0, check.stderr
    command = check.stdout.strip().splitlines()[-1].split()
    assert command[:3] == ["snakemake", "--profile", "profiles/slurm"], check.stdout
    status_flags = command[3 : command.index("--configfile")]
    # step 2: the run, from a working directory of its own
    log = tmp_path / "snakemake.log"
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snakemake",
                "results/summary.csv",
                "--snakefile",
                str(ROOT / "Snakefile"),
                "--directory",
                str(tmp_path),
                "--profile",
                str(ROOT / "profiles" / "slurm"),
                *status_flags,
                # poll the queue every 5 s instead of the plugin's 40 s wait and 10 s rounds: the
                # same jobs and states, a CI run minutes shorter (the cadence is not under test)
                "--slurm-init-seconds-before-status-checks",
                "5",
                "--seconds-between-status-checks",
                "5",
                "--configfile",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def run_id():
        m = re.search(r"SLURM run ID: (\S+)", log.read_text())
        return m.group(1) if m else None

    watcher = QueueWatcher(run_id)
    watcher.start()
    cancelled = None
    try:
        run = tmp_path / CANCELLED
        deadline = time.time() + 600
        while cancelled is None:  # scancel base seed 0 once it has checkpointed an epoch, mid-training
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            if 1 <= checkpoint_epoch(run) < CONFIG["train"]["epochs"]:
                watcher.poll()
                base0 = "rule_train_base_wildcards_digits_resnet8_0"
                jobs = [j for j, (_, comment, *_) in watcher.seen.items() if comment == base0]
                assert len(jobs) == 1, watcher.seen
                cancelled = (jobs[0], checkpoint_epoch(run))
                assert _sh("scancel", jobs[0]).returncode == 0
                # an uninterrupted run of the same settings, while Snakemake waits for its next status check
                opts = base_options(load_config(dict(CONFIG)), "digits", "resnet8", "0")
                kdpipe.train_base(**opts, threads=1, save_root=str(tmp_path / "reference"), note="seed0")
            time.sleep(0.1)
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        watcher.stop.set()
        if proc.poll() is None:
            proc.kill()
        if run_id():
            _sh("scancel", "--name", run_id())
    wall = time.time() - t0
    text = log.read_text()

    # at least two training jobs were RUNNING at the same moment, each with the CPUs it asked
    assert watcher.max_running >= 2, watcher.seen
    assert all(cpus == "1" for _, c, cpus, _ in watcher.seen.values() if c.startswith("rule_train_")), watcher.seen
    if env["KDPIPE_SLURM_GPUS"] == "1":
        assert all(tres == "gres:gpu:1" for _, c, _, tres in watcher.seen.values() if c.startswith("rule_train_"))
    # the cancelled job was resubmitted and resumed from its checkpoint ...
    assert re.search(rf"SLURM-job '{cancelled[0]}' failed, SLURM status is: 'CANCELLED'", text), text[-3000:]
    record = json.loads((tmp_path / CANCELLED / "run.json").read_text())
    assert record["resumed_at_epochs"] and record["resumed_at_epochs"][0] >= cancelled[1]
    assert "resuming" in (tmp_path / "results/logs/digits/base/resnet8/seed0.log").read_text()
    # ... to the result of an uninterrupted run of the same settings

    def curve(run_dir):
        return [(r["epoch"], r["train_loss"], r["val_acc"], r["test_acc"]) for r in csv.DictReader(open(run_dir))]

    assert curve(tmp_path / CANCELLED / "metrics.csv") == curve(tmp_path / "reference/seed0/metrics.csv")
    # the summary is complete: two teachers (base resnet8, seeds 0 and 1) and two st students
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert sorted((r["method"], r["seed"], r["status"]) for r in rows) == [
        ("baseline", "0", "ok"),
        ("baseline", "1", "ok"),
        ("st", "0", "ok"),
        ("st", "1", "ok"),
    ], rows
    print(
        f"tiny grid through SLURM: {wall:.0f} s, at most {watcher.max_running} training jobs running at once, "
        f"job {cancelled[0]} cancelled at epoch {cancelled[1]} and resumed"
    )
