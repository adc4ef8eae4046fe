"""GPU throughput of kdpipe's training path on synthetic CIFAR-shaped data (run by bench/gpu.sh).

Prints images/s for ResNet-20 and ResNet-110 training steps (batched augmentation included):
fp32 eager, channels_last + bf16 autocast (kdpipe's CUDA default), and the same under
torch.compile where it compiles; then the st-KD step cost ResNet-110 -> ResNet-20 with the
exact teacher cache and with the live teacher, relative to plain student training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdpipe.cache import build_cache  # noqa: E402
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD, ImageData, augmentation_of  # noqa: E402
from kdpipe.engine import Context, seed_everything  # noqa: E402
from kdpipe.methods.base import SupervisedTask  # noqa: E402
from kdpipe.methods.common import frozen  # noqa: E402
from kdpipe.methods.kd import DistillTask  # noqa: E402
from kdpipe.models import build_model  # noqa: E402
from kdpipe.options import resolve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import time_task  # noqa: E402


def synthetic_cifar(n: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData(
        "synthetic-cifar10",
        10,
        x,
        y,
        x[:1000],
        y[:1000],
        x[:1000],
        y[:1000],
        CIFAR10_MEAN,
        CIFAR10_STD,
        augmentation_of("cifar10"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--no_compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, batch {args.batch_size}, synthetic CIFAR-10 ({args.images} images)")
    torch.backends.cudnn.benchmark = True
    data = synthetic_cifar(args.images)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-gpu-"))
    common = dict(data_name="cifar10", batch_size=args.batch_size, epochs=200)

    def context(entry, fast: bool, **opts):
        seed_everything(0)
        return Context(resolve(entry, {**common, **opts}), data, device, tmp, amp=fast, channels_last=fast)

    print("| net | fp32 eager img/s | channels_last + bf16 img/s | + torch.compile img/s |")
    print("|---|---:|---:|---:|")
    for net in ("resnet20", "resnet110"):
        row = []
        for fast, compiled in ((False, False), (True, False), (True, True)):
            if compiled and args.no_compile:
                row.append("skipped")
                continue
            ctx = context("base", fast, net_name=net)
            task = SupervisedTask(ctx)
            try:
                if compiled:
                    task.roles["net"] = torch.compile(task.roles["net"])
                seconds = time_task(task, ctx, args.steps, warmup=10 if compiled else 5)
                row.append(f"{args.batch_size / seconds:,.0f}")
            except Exception as exc:  # compile failures are reported, not fatal
                row.append(f"failed ({type(exc).__name__})")
        print(f"| {net} | " + " | ".join(row) + " |", flush=True)

    teacher_path = tmp / "teacher.pt"
    torch.save(build_model("resnet110", 10).state_dict(), teacher_path)
    teacher = frozen(build_model("resnet110", 10)).to(device)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    teacher = teacher.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    manifest = build_cache(teacher, teacher_path, data, tmp / "cache", device)
    build = time.perf_counter() - t0
    pair = dict(t_model=str(teacher_path), t_name="resnet110", s_name="resnet20", kd_mode="st")
    results = {}
    for _ in range(2):
        for label, entry, opts, cls in (
            ("plain", "base", dict(net_name="resnet20"), SupervisedTask),
            ("live", "kd", pair, DistillTask),
            ("cached", "kd", dict(pair, teacher_cache=str(tmp / "cache")), DistillTask),
        ):
            ctx = context(entry, True, **opts)
            results.setdefault(label, []).append(time_task(cls(ctx), ctx, args.steps))
    plain, live, cached = (min(results[k]) for k in ("plain", "live", "cached"))
    print()
    print("| ResNet-110 -> ResNet-20, channels_last + bf16 | value |")
    print("|---|---:|")
    print(f"| st-KD with cache / plain student step | {cached / plain:.2f} |")
    print(f"| st-KD with live teacher / plain student step | {live / plain:.2f} |")
    print(f"| cache build, {args.images} images x 162 views | {build:.1f} s ({manifest['bytes'] / 1e6:.0f} MB) |")


if __name__ == "__main__":
    main()
