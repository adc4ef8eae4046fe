"""--memory_format: auto (channels_last on CUDA, NCHW on the CPU), channels_last on the CPU on request (refused
for the networks torch's CPU channels_last path breaks), deterministic in each layout, and a run resumes or counts
as finished only in its own layout."""

import json
import shutil

import pytest
import torch

import kdpipe
from kdpipe.checkpoint import sha256_file
from kdpipe.engine import Context, breaks_cpu_channels_last
from kdpipe.errors import KdpipeError
from kdpipe.methods.base import SupervisedTask
from kdpipe.models import build_model
from kdpipe.options import resolve
from kdpipe.runner import load_options_data

TINY = dict(data_name="digits", epochs=2, batch_size=32, train_subset=96, lr=0.05, cuda=0, threads=1)


def layout(model) -> str:
    """The memory format of a model's 3x3 convolution weights."""
    weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    if weight.is_contiguous():
        return "contiguous"
    return "channels_last" if weight.is_contiguous(memory_format=torch.channels_last) else "other"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    opts = resolve("base", {"data_name": "digits", "net_name": "resnet8", "cuda": 0, "train_subset": 32})
    data = load_options_data(opts)
    tmp = tmp_path_factory.mktemp("ctx")
    return lambda **over: Context(resolve("base", {**opts, **over}), data, torch.device("cpu"), tmp)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ResNet-8 runs: a and b in channels_last, c in the default layout, d in NCHW by name."""
    root = tmp_path_factory.mktemp("runs")
    layouts = {"a": "channels_last", "b": "channels_last", "c": "auto", "d": "contiguous"}
    return root, {
        n: kdpipe.train_base(net_name="resnet8", save_root=str(root), note=n, memory_format=f, **TINY)
        for n, f in layouts.items()
    }


def test_the_cpu_trains_in_nchw_by_default_and_in_channels_last_on_request(context):
    ctx = context()
    assert ctx.opts["memory_format"] == "auto" and not ctx.channels_last
    assert layout(SupervisedTask(ctx).roles["net"]) == "contiguous"
    nhwc = context(memory_format="channels_last")
    assert nhwc.channels_last and layout(SupervisedTask(nhwc).roles["net"]) == "channels_last"
    assert layout(SupervisedTask(context(memory_format="contiguous")).roles["net"]) == "contiguous"


def test_a_bad_memory_format_is_refused_in_one_line():
    with pytest.raises(KdpipeError) as err:
        resolve("base", {"data_name": "digits", "net_name": "resnet8", "memory_format": "nhwc"})
    assert str(err.value) == "memory_format: got 'nhwc'; allowed: one of auto, channels_last, contiguous"


def test_channels_last_on_the_cpu_refuses_a_net_it_would_corrupt(context, tmp_path):
    # torch's CPU channels_last weight gradient of a strided 1x1 conv with 2-7 input channels corrupts the heap
    assert [breaks_cpu_channels_last(build_model(n, 10)) for n in ("resnet8", "resnet8w4", "wrn_16_1")] == [
        False,
        True,
        False,
    ]
    assert layout(context().prepare(build_model("resnet8w4", 10))) == "contiguous"
    with pytest.raises(KdpipeError, match=r"^memory_format: got 'channels_last', but .*on the CPU: auto, contiguous$"):
        context(memory_format="channels_last").prepare(build_model("resnet8w4", 10))
    with pytest.raises(KdpipeError, match=r"^memory_format: got 'channels_last'"):
        kdpipe.train_base(
            net_name="resnet8w4", save_root=str(tmp_path), note="w4", memory_format="channels_last", **TINY
        )
    assert not (tmp_path / "w4").exists()  # refused before anything is written


def test_each_layout_is_deterministic_and_auto_is_nchw_on_the_cpu(runs):
    root, r = runs
    assert r["a"]["channels_last"] is r["b"]["channels_last"] is True and r["c"]["channels_last"] is False
    assert sha256_file(root / "a" / "model.pt") == sha256_file(root / "b" / "model.pt")
    assert sha256_file(root / "c" / "model.pt") == sha256_file(root / "d" / "model.pt")  # auto = NCHW here
    assert r["a"]["config"]["memory_format"] == r["a"]["fingerprint"]["memory_format"] == "channels_last"
    assert "device cpu (channels_last)" in (root / "a" / "train.log").read_text()
    assert "device cpu (contiguous)" in (root / "c" / "train.log").read_text()


def test_a_run_is_finished_and_resumed_only_in_its_own_layout(runs, tmp_path):
    root, r = runs
    run = tmp_path / "c"
    shutil.copytree(root / "c", run)
    again = dict(net_name="resnet8", save_root=str(tmp_path), note="c", **TINY)
    assert kdpipe.train_base(**again)["finished_at"] == r["c"]["finished_at"]
    with pytest.raises(KdpipeError, match=r"finished run with other settings \(memory_format\)"):
        kdpipe.train_base(**again, memory_format="channels_last")
    # a finished run of a kdpipe before the option (no memory_format in its fingerprint) stands for auto
    stored = json.loads((run / "run.json").read_text())
    del stored["fingerprint"]["memory_format"]
    (run / "run.json").write_text(json.dumps(stored))
    assert kdpipe.train_base(**again)["finished_at"] == r["c"]["finished_at"]
    with pytest.raises(KdpipeError, match=r"finished run with other settings \(memory_format\)"):
        kdpipe.train_base(**again, memory_format="channels_last")
    # its checkpoint resumes in its own layout only, also one written before the option
    (run / "run.json").unlink()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["fingerprint"]["memory_format"]
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(KdpipeError, match="checkpoint was made with memory_format='auto', this run has "):
        kdpipe.train_base(**again, memory_format="channels_last")
    assert kdpipe.train_base(**again)["roles"] == r["c"]["roles"]  # the final checkpoint rewrites the same outputs


def test_amp_off_keeps_cuda_runs_in_float32(tmp_path, monkeypatch):
    """--amp (config resources.amp): bf16 autocast on CUDA unless off; never on the CPU; a stored fingerprint
    without the key stands for auto; the workflow passes resources.amp to every job."""
    from types import SimpleNamespace

    import kdpipe.options
    from kdpipe.jobs import rule_run
    from kdpipe.options import fingerprint_value

    opts = {"data_name": "digits", "net_name": "resnet8"}

    def context(device: str, **over) -> Context:
        return Context(resolve("base", {**opts, **over}), None, torch.device(device), tmp_path)

    assert context("cuda").amp and not context("cpu").amp and not context("cpu", amp="auto").amp
    off = context("cuda", amp="off")
    assert not off.amp and type(off.autocast()).__name__ == "nullcontext"
    with pytest.raises(KdpipeError) as err:
        resolve("base", {**opts, "amp": "fp16"})
    assert str(err.value) == "amp: got 'fp16'; allowed: one of auto, off"
    assert fingerprint_value({}, "amp") == "auto"
    calls = []
    monkeypatch.setattr(kdpipe.options, "entry_function", lambda entry: lambda **kw: calls.append(kw))
    job = SimpleNamespace(config={"resources": {"amp": "off"}}, threads=1)
    call, _ = rule_run(job, "base", tmp_path / "r", opts, {})
    call()
    assert calls[0]["amp"] == "off" and calls[0]["net_name"] == "resnet8"
