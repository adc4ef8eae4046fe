"""Repeatability and resume on a GPU, as kdpipe trains by default there (CUDA graphs, bf16, channels_last,
cuDNN's defaults): for plain training, st-KD and CRD (whose steps draw negatives), or DML and BSS
(``--methods``), three CLI processes from the same seed on the same synthetic CIFAR-10 files -- two run
straight through, the third is killed with SIGKILL once a checkpoint is written and started again until it
finishes. The table gives how far the final
weights (and batch-norm statistics) of the second straight run and of the resumed run are from the first's,
in units of the first run's largest value, and the epochs the resumed run restarted at.

On the CPU the same comparison is a test (tests/test_resume.py: bit-identical); this is its GPU side.
    python3 bench/gpu_resume.py [--out DIR]      # one GPU, about 2 minutes on an H200
    python3 bench/gpu_resume.py --cuda 0 --images 640 --epochs 3   # the script itself, on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu import Report, _floats, write_cifar10  # noqa: E402

from kdpipe.models import build_model  # noqa: E402


def start(flags: list[str], save_root: Path, note: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdpipe", *flags, "--save_root", str(save_root), "--note", note],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_epoch(run: Path) -> int:
    try:
        return torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["epoch"]
    except Exception:  # absent, or being replaced
        return 0


def kill_at_first_checkpoint(run: Path, proc: subprocess.Popen, deadline: float) -> None:
    while checkpoint_epoch(run) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def distance(a: Path, b: Path) -> float:
    """Max |difference| over every model file of run ``a`` (``model.pt`` and a DML cohort's other peers'
    ``model-<role>.pt``) and the same file of run ``b``, over the largest |value| of ``a``'s."""
    names = sorted(p.name for p in a.glob("model*.pt"))

    def weights(run: Path) -> dict:
        return {
            f"{name}{key}": value
            for name in names
            for key, value in _floats(torch.load(run / name, weights_only=True, map_location="cpu")).items()
        }

    wa, wb = weights(a), weights(b)
    top = max(float(v.abs().max()) for v in wa.values())
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa) / top


def finish(proc: subprocess.Popen, deadline: float) -> int | str:
    """The process's exit status, or 'timed out' (then killed) if it runs past ``deadline``: a row says so and
    the table is still written."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timed out"


def resumed_text(record: dict) -> str:
    """The epochs the killed run restarted at; none: it finished before it was killed."""
    return str(record.get("resumed_at_epochs") or "not killed in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write gpu.md and gpu.json here")
    parser.add_argument("--images", type=int, default=20480, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--methods", default="base,st,crd", help="a comma list of: base, st, crd, dml, bss")
    parser.add_argument("--cuda", type=int, default=1, help="0: the same on the CPU (a smoke test of this script)")
    args = parser.parse_args()
    if args.cuda and not torch.cuda.is_available():
        sys.exit("bench/gpu_resume.py: torch sees no GPU")
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-resume-"))
    write_cifar10(tmp / "cifar", args.images, 1000)
    torch.manual_seed(0)
    teacher = tmp / "teacher32.pt"
    torch.save(build_model("resnet32", 10).state_dict(), teacher)
    common = ["--data_name", "cifar10", "--img_root", str(tmp / "cifar"), "--epochs", str(args.epochs)]
    common += ["--seed", "3", "--cuda", str(args.cuda)]
    pair = ["--t_model", str(teacher), "--t_name", "resnet32", "--s_name", "resnet20"]
    cases = {
        "base": ("base resnet20", ["base", "--net_name", "resnet20"]),
        "st": ("st-KD resnet32 -> resnet20", ["kd", *pair, "--kd_mode", "st"]),
        "crd": ("CRD resnet32 -> resnet20", ["crd", *pair]),
        "dml": ("DML resnet20 + resnet20", ["dml", "--peers", "resnet20,resnet20"]),
        "bss": ("BSS resnet32 -> resnet20", ["bss", *pair]),
    }
    cases = [cases[name] for name in args.methods.split(",")]
    report = Report(Path(args.out) if args.out else None)
    report.text(f"# {torch.cuda.get_device_name() if args.cuda else 'cpu'}, torch {torch.__version__}")
    rows = []
    for label, entry in cases:
        save = tmp / label.split()[0]
        flags = [*entry, *common]
        t0 = time.perf_counter()
        procs = {note: start(flags, save, note) for note in ("straight", "again", "killed")}
        kill_at_first_checkpoint(save / "killed", procs["killed"], time.time() + 240)
        resumed = start(flags, save, "killed")
        deadline = time.time() + 400
        codes = [finish(p, deadline) for p in (procs["straight"], procs["again"], resumed)]
        if any(codes):
            errors = [p.stderr.read().strip().splitlines()[-1:] for p in (procs["straight"], procs["again"], resumed)]
            rows.append([label, f"failed: {codes} {errors}", "", "", "", ""])
        else:
            record = json.loads((save / "killed" / "run.json").read_text())
            step = json.loads((save / "straight" / "run.json").read_text()).get("step", "?")
            rows.append(
                [
                    label,
                    step,
                    f"{distance(save / 'straight', save / 'again'):.1e}",
                    f"{distance(save / 'straight', save / 'killed'):.1e}",
                    resumed_text(record),
                    f"{time.perf_counter() - t0:.0f}",
                ]
            )
        print(rows[-1], flush=True)
    report.table(
        "resume",
        ["run", "steps", "second straight run", "killed and resumed", "resumed at epochs", "s"],
        rows,
        f"{args.images} synthetic CIFAR-10 images, {args.epochs} epochs, seed 3, kdpipe's CUDA defaults; "
        "max |dw| / max |w| against the first straight run",
    )
    report.flush()


if __name__ == "__main__":
    main()
