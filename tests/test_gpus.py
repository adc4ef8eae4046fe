"""Several training jobs per GPU on a local run (kdpipe.gpus): the slots each job claims, the bound
Snakemake puts on the jobs in flight, and the one-line refusal of a bad KDPIPE_JOBS_PER_GPU."""

import logging
import multiprocessing
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from kdpipe import gpus
from kdpipe.errors import KdpipeError


def test_slots_go_to_the_least_loaded_gpu_until_all_are_held(tmp_path):
    held = [gpus.claim_slot(tmp_path, 2, 2) for _ in range(4)]  # each an open lock of its own
    assert [gpu for gpu, _ in held] == [0, 1, 0, 1]
    assert gpus.claim_slot(tmp_path, 2, 2) is None  # 2 GPUs x 2 slots are taken
    held[1][1].close()  # a job on GPU 1 ends: the next job goes there, not to the busier GPU 0
    gpu, handle = gpus.claim_slot(tmp_path, 2, 2)
    assert gpu == 1
    held[3][1].close()
    held[2][1].close()  # GPU 0 now holds one slot, GPU 1 one: the lower index wins a tie
    assert gpus.claim_slot(tmp_path, 2, 2)[0] == 0


def _claim_and_hold(locks, claimed, release):
    result = gpus.claim_slot(locks, 2, 2)
    claimed.put(None if result is None else result[0])
    release.wait(60)


def test_claimers_in_separate_processes(tmp_path):
    """The slots are flock()s of files in one directory: jobs in other processes see them."""
    context = multiprocessing.get_context("fork")
    claimed, release = context.Queue(), context.Event()
    jobs, got = [], []
    try:
        for _ in range(5):  # one after the other, each holding its slot until released
            jobs.append(context.Process(target=_claim_and_hold, args=(tmp_path, claimed, release)))
            jobs[-1].start()
            got.append(claimed.get(timeout=60))
    finally:
        release.set()
        for job in jobs:
            job.join(60)
    assert got == [0, 1, 0, 1, None]
    assert gpus.claim_slot(tmp_path, 2, 2)[0] == 0  # all released when their processes ended


def test_claim_gpu_takes_a_slot_once_and_shares_gpu0_when_all_are_held(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gpus, "_HELD", None)
    monkeypatch.setenv("KDPIPE_JOBS_PER_GPU", "2")
    others = [gpus.claim_slot(tmp_path, 2, 2) for _ in range(3)]  # GPUs 0, 1, 0
    assert gpus.claim_gpu(tmp_path) == 1  # the one free slot
    assert gpus.claim_gpu(tmp_path) == 1  # the process keeps it: no second slot
    assert gpus.claim_slot(tmp_path, 2, 2) is None
    monkeypatch.setattr(gpus, "_HELD", None)  # another process, nothing free
    with caplog.at_level(logging.WARNING, logger="kdpipe"):
        assert gpus.claim_gpu(tmp_path) == 0
    assert "all 2 GPUs x 2 slots are held" in caplog.text
    assert len(others) == 3


def test_one_visible_gpu_is_device_0_without_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpus, "_HELD", None)
    monkeypatch.setenv("KDPIPE_JOBS_PER_GPU", "4")
    assert [gpus.claim_gpu(tmp_path) for _ in range(6)] == [0] * 6
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value, expected", [(None, 1), ("", 1), ("1", 1), (" 4 ", 4)])
def test_jobs_per_gpu(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("KDPIPE_JOBS_PER_GPU", raising=False)
    else:
        monkeypatch.setenv("KDPIPE_JOBS_PER_GPU", value)
    assert gpus.jobs_per_gpu() == expected


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "four", "٣"])
def test_jobs_per_gpu_refuses_what_is_not_a_positive_integer(monkeypatch, tmp_path, value):
    monkeypatch.setenv("KDPIPE_JOBS_PER_GPU", value)
    message = f"KDPIPE_JOBS_PER_GPU={value!r}: training jobs per GPU must be a positive integer"
    with pytest.raises(KdpipeError, match=re.escape(message)):
        gpus.jobs_per_gpu()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # refused on a one-GPU machine too
    with pytest.raises(KdpipeError, match=re.escape(message)):
        gpus.claim_gpu(tmp_path)


def local_dry(workdir, *args, jobs_per_gpu):
    """``snakemake -n --profile profiles/local`` on one base run, as ``make dry-run`` with JOBS_PER_GPU."""
    config = workdir / "c.yaml"
    config.write_text("base: {nets: [resnet8]}\n")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
        + ["--profile", str(ROOT / "profiles" / "local"), "--cores", "1", "--configfile", str(config), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KDPIPE_JOBS_PER_GPU": jobs_per_gpu},
    )


def test_snakefile_counts_gpus_times_jobs_per_gpu(tmp_path):
    out = local_dry(tmp_path, "--resources", "gpu=2", jobs_per_gpu="4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kdpipe: 4 training jobs per GPU (KDPIPE_JOBS_PER_GPU): --resources gpu=2 runs up to 8 at once" in out.stderr


def test_snakefile_refuses_a_bad_jobs_per_gpu_in_one_line(tmp_path):
    out = local_dry(tmp_path, "--resources", "gpu=2", jobs_per_gpu="0")
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("kdpipe")]
    assert lines == [
        "kdpipe: KDPIPE_JOBS_PER_GPU='0': training jobs per GPU must be a positive integer (1 = one job per GPU)"
    ]


def test_snakemake_schedules_gpus_times_jobs_per_gpu(tmp_path):
    """The bound set while the Snakefile is parsed is the one Snakemake's scheduler uses."""
    (tmp_path / "Snakefile").write_text(
        "from kdpipe import gpus\n"
        "gpus.pack_local_gpus(workflow)\n"
        "rule all:\n    input: expand('{i}.txt', i=range(2))\n"
        "rule job:\n    output: '{i}.txt'\n    resources: gpu=1\n    shell: 'touch {output}'\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KDPIPE_JOBS_PER_GPU": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"Provided resources: .*gpu=\D*6\b", out.stdout + out.stderr), out.stderr[-3000:]
