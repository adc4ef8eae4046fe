"""bench/gpu_resume.py's own arithmetic (the runs themselves need a GPU, or minutes with --cuda 0)."""

import sys

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import gpu_resume  # noqa: E402


def _run(path, net1, net2=None):
    path.mkdir()
    torch.save({"w": torch.tensor(net1)}, path / "model.pt")
    if net2 is not None:
        torch.save({"w": torch.tensor(net2)}, path / "model-net2.pt")
    return path


def test_distance_compares_every_peer_of_a_dml_cohort(tmp_path):
    """A DML run writes model.pt and model-net2.pt: a second peer that parted is a distance, not 0."""
    a = _run(tmp_path / "a", [1.0, -2.0], [4.0, 0.0])
    assert gpu_resume.distance(a, _run(tmp_path / "same", [1.0, -2.0], [4.0, 0.0])) == 0
    assert gpu_resume.distance(a, _run(tmp_path / "b", [1.0, -2.0], [4.0, 1.0])) == 0.25  # of a's largest, 4
    assert gpu_resume.distance(_run(tmp_path / "c", [1.0, -2.0]), _run(tmp_path / "d", [1.0, -1.0])) == 0.5


def test_a_run_that_finished_before_the_kill_says_so():
    assert gpu_resume.resumed_text({"resumed_at_epochs": []}) == "not killed in time"
    assert gpu_resume.resumed_text({"resumed_at_epochs": [1]}) == "[1]"


def test_a_process_past_its_deadline_is_killed_and_reported():
    """finish(): the exit status of a process done in time; 'timed out' (and killed) for one past the deadline
    (a wall-clock time, time.time()'s)."""
    import subprocess
    import time

    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    assert gpu_resume.finish(quick, time.time() + 60) == 0
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.time()
    assert gpu_resume.finish(slow, time.time() + 0.5) == "timed out"
    assert slow.returncode is not None and time.time() - t0 < 30
