"""A CPU training process keeps the memory its steps free (kdpipe.hostmem): far fewer page faults a
step, the same weights bit for bit, and the user's own malloc settings left alone."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

STEPS = r"""
import hashlib, json, resource, statistics, sys
from pathlib import Path
import torch
import torch.nn.functional as F
from kdpipe import hostmem
from kdpipe.engine import Context
from kdpipe.models import build_model
from kdpipe.models.inplace import out_of_place

torch.set_num_threads(1)
ctx = Context({"memory_format": "contiguous"}, None, torch.device("cpu"), Path("."))  # tunes, as fit's would
if sys.argv[1:] == ["--no-steps"]:  # the allocator setting alone
    sys.exit(print(json.dumps({"allocator": hostmem.keep_freed_memory()})))
torch.manual_seed(0)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
model = ctx.prepare(build_model("resnet20", 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x).logits, y).backward()
    opt.step()

# The forward's activations allocated anew (out_of_place): with the in-place ReLUs and sums glibc's adaptive
# mmap threshold sometimes settles by itself (0 faults a step in ~3 of 8 processes here), which no single
# process can tell apart from kept memory; with these allocations it faults in every step.
with out_of_place():
    for _ in range(2):
        step()
    faults = []  # per step: a kept heap still grows in an occasional early step
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = statistics.median(faults)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"allocator": hostmem.keep_freed_memory(), "faults": faults, "weights": digest}))
"""


def train(*args, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "KDPIPE_"))}
    out = subprocess.run(
        [sys.executable, "-c", STEPS, *args],
        env={**environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_training_keeps_freed_memory_and_its_results():
    kept, default = train(), train(KDPIPE_MALLOC_TUNING="0")
    assert kept["allocator"] == "kept"
    assert default["allocator"] == "glibc's defaults (KDPIPE_MALLOC_TUNING=0)"
    assert kept["weights"] == default["weights"]  # where buffers live changes nothing computed
    # glibc's defaults hand a step's large buffers back to the kernel and fault them in again (ResNet-20,
    # batch 128: ~20,000 page faults a step here); kept, a step reuses the memory of the one before (0 in
    # most steps)
    assert default["faults"] > 1000 and kept["faults"] < default["faults"] / 5, (kept, default)
    # the user's own malloc settings stand
    assert train("--no-steps", MALLOC_TRIM_THRESHOLD_="131072")["allocator"] == "as MALLOC_TRIM_THRESHOLD_ sets it"
    tunables = "glibc.malloc.trim_threshold=131072"
    assert train("--no-steps", GLIBC_TUNABLES=tunables)["allocator"] == "as GLIBC_TUNABLES sets it"
