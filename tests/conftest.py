import contextlib
import io
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
logging.getLogger("kdpipe").setLevel(logging.INFO)


def cli(*args, timeout=300):
    """``python -m kdpipe <args>`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kdpipe", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def cli_in_process(*args) -> subprocess.CompletedProcess:
    """``kdpipe.cli.main(args)`` in this process, answered as :func:`cli` answers: the exit status, stdout,
    and stderr with the log lines the CLI prints there.  The same parser, entry and error path without a
    new interpreter (importing torch and scikit-learn's digits costs a process about 10 s of CPU); the
    tests that need the process itself (``python -m kdpipe``, a lock, a signal) call :func:`cli`."""
    from kdpipe.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # what the CLI's logging.basicConfig would write to stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse: -h (0) and flag errors (2)
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["kdpipe", *map(str, args)], code, out.getvalue(), err.getvalue())


def tiny_cli_flags(save_root, note: str = "cli") -> list[str]:
    """Flags of a CLI run that trains one epoch on 48 digits images on the CPU."""
    return [
        "--data_name",
        "digits",
        "--epochs",
        "1",
        "--batch_size",
        "16",
        "--train_subset",
        "48",
        "--save_root",
        str(save_root),
        "--note",
        note,
        "--cuda",
        "0",
    ]


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    """Tiny files in torchvision's CIFAR python layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    train = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    train_y = rng.integers(0, k, n_train).tolist()
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = rng.integers(0, k, n_test).tolist()
    if name == "cifar10":
        per = n_train // 5
        for i in range(5):
            sl = slice(i * per, (i + 1) * per if i < 4 else n_train)
            with open(folder / f"data_batch_{i + 1}", "wb") as fh:
                pickle.dump({"data": train[sl], label_key: train_y[sl]}, fh)
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({"data": test, label_key: test_y}, fh)
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    else:
        with open(folder / "train", "wb") as fh:
            pickle.dump({"data": train, label_key: train_y}, fh)
        with open(folder / "test", "wb") as fh:
            pickle.dump({"data": test, label_key: test_y}, fh)
    return {"train": train, "train_y": train_y, "test": test, "test_y": test_y}


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar(tmp_path)
    return tmp_path
