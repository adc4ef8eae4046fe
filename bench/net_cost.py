"""Training step cost of every registered network, relative to ResNet-20, on CIFAR-shaped batches.

One process, the same random 3x32x32 batches for every net: forward, cross-entropy, backward and an
SGD step (kdpipe's optimizer), as kdpipe's plain training runs them.  Ratios are what matters;
absolute times depend on the machine.

    .venv/bin/python bench/net_cost.py                          # every net, CPU, batch 64
    .venv/bin/python bench/net_cost.py --only resnet8x4,wrn_16_2 --steps 20 --cuda 1
    .venv/bin/python bench/net_cost.py --memory_format contiguous   # NCHW (kdpipe's CPU layout before)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdpipe.engine import Context, make_optimizer
from kdpipe.models import MODELS, build_model, count_parameters
from kdpipe.options import find_option
from kdpipe.runner import select_device

BASELINE = "resnet20"


def step_seconds(name: str, x, y, steps: int, warmup: int, device, memory_format: str) -> float:
    torch.manual_seed(0)
    ctx = Context({"memory_format": memory_format}, None, device, Path())  # places the model as training does
    model = ctx.prepare(build_model(name, int(y.max()) + 1))
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).logits, y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated nets (default: all registered)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--cuda", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    layout = find_option("base", "memory_format")
    parser.add_argument("--memory_format", default=layout.default, choices=layout.choices, help=layout.help)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.cuda)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=g).to(device)
    y[0] = args.classes - 1  # every net gets the full classifier
    times = {n: step_seconds(n, x, y, args.steps, args.warmup, device, args.memory_format) for n in names}
    base = times[BASELINE]
    print(
        f"device {device}, memory_format {args.memory_format}, batch {args.batch_size}, {args.classes} classes, "
        f"{args.steps} timed steps"
    )
    print(f"{'net':<16}{'params':>12}{'ms/step':>10}{'img/s':>10}{'x resnet20':>12}")
    for name in names:
        params = count_parameters(build_model(name, args.classes))
        seconds = times[name]
        print(f"{name:<16}{params:>12,}{seconds * 1e3:>10.1f}{args.batch_size / seconds:>10.0f}{seconds / base:>12.2f}")


if __name__ == "__main__":
    main()
