"""RepDistiller's VGGs (batch-norm variants), MobileNetV2 (mobile_half) and ShuffleNet v1/v2 for CIFAR."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.losses.ofd import teacher_pre_relu_bns
from kdpipe.models import FeatureTaps, build_model, count_parameters

# Parameter counts of the reference definitions, read off by building them (RepDistiller b84f547 models/;
# mdistiller's mdistiller/models/cifar/ copies give the same): at 100 and at 10 classes.
REFERENCE_PARAMS = {
    "vgg8": (3965028, 3918858),  # models/vgg.py vgg8_bn
    "vgg11": (9277284, 9231114),  # models/vgg.py vgg11_bn
    "vgg13": (9462180, 9416010),  # models/vgg.py vgg13_bn
    "vgg16": (14774436, 14728266),  # models/vgg.py vgg16_bn
    "vgg19": (20086692, 20040522),  # models/vgg.py vgg19_bn
    "mobilenet_v2": (812836, 697546),  # models/mobilenetv2.py mobile_half
    "shufflenet_v1": (949258, 862768),  # models/ShuffleNetv1.py ShuffleV1
    "shufflenet_v2": (1355528, 1263278),  # models/ShuffleNetv2.py ShuffleV2
}
NETS = tuple(REFERENCE_PARAMS)

VGG_TAPS = ((64, 32), ((128, 16), (256, 8), (512, 4), (512, 4)), 512)
# name: (stem (channels, side), stages ((channels, side), ...), embedding size) on 32x32 inputs
TAPS = {
    **{f"vgg{depth}": VGG_TAPS for depth in (8, 11, 13, 16, 19)},
    "mobilenet_v2": ((16, 16), ((12, 16), (16, 8), (48, 4), (160, 2)), 1280),
    "shufflenet_v1": ((24, 32), ((240, 16), (480, 8), (960, 4)), 960),
    "shufflenet_v2": ((24, 32), ((116, 16), (232, 8), (464, 4)), 1024),
}
NO_FINAL_RELU = {"mobilenet_v2"}  # linear bottlenecks: the stage output is the pre-ReLU one
POOLED_LAST_STAGE = {f"vgg{depth}" for depth in (8, 11, 13, 16, 19)} | {"shufflenet_v1"}  # no head layer


@pytest.fixture(autouse=True)
def one_thread():
    # small maps: intra-op threads only add overhead, and on a busy machine (two xdist workers on two cores)
    # two threads each made these tests ten times slower
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@functools.cache
def model_at_100(name):
    torch.manual_seed(0)
    return build_model(name, 100).eval()


@functools.cache
def taps_at_32(name):
    torch.manual_seed(1)
    with torch.no_grad():
        return model_at_100(name)(torch.randn(2, 3, 32, 32))


def test_registry_names_import_no_torch():
    code = (
        "import sys, kdpipe.models as m; "
        f"assert set({list(NETS)!r}) <= set(m.MODELS); assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", NETS)
def test_parameter_count_matches_reference_at_100_classes(name):
    assert count_parameters(model_at_100(name)) == REFERENCE_PARAMS[name][0]


@pytest.mark.parametrize("name", NETS)
def test_tap_shapes_at_32x32(name):
    model, taps = model_at_100(name), taps_at_32(name)
    (stem_c, stem_side), stages, embedding_dim = TAPS[name]
    assert isinstance(taps, FeatureTaps)
    assert taps.stem.shape == (2, stem_c, stem_side, stem_side)
    assert model.stage_channels == tuple(c for c, _ in stages)
    assert len(taps.stages) == len(taps.stages_pre) == len(stages)
    for i, (channels, side) in enumerate(stages):
        assert taps.stages[i].shape == taps.stages_pre[i].shape == (2, channels, side, side)
        assert (taps.stages_pre[i] < 0).any()
        if name in NO_FINAL_RELU:
            assert taps.stages_pre[i] is taps.stages[i]
        else:
            assert torch.equal(taps.stages[i], F.relu(taps.stages_pre[i]))
    assert model.embedding_dim == embedding_dim
    assert taps.embedding.shape == (2, embedding_dim)
    if name in POOLED_LAST_STAGE:
        assert torch.allclose(taps.embedding, taps.stages[-1].mean(dim=(2, 3)), atol=1e-6)
    assert taps.logits.shape == (2, 100)
    assert torch.allclose(taps.logits, model.fc(taps.embedding))


def test_vgg_max_pools_before_its_last_stage_on_64x64_only():
    # RepDistiller's vgg.py: pool3 runs when the input's height is 64 (Tiny-ImageNet), not on CIFAR
    with torch.no_grad():
        taps = model_at_100("vgg8")(torch.randn(1, 3, 64, 64))
    assert [t.shape[-1] for t in taps.stages] == [32, 16, 8, 4]


@pytest.mark.parametrize("name", NETS)
def test_trains(name):
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    assert count_parameters(model) == REFERENCE_PARAMS[name][1]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).logits, y)
        loss.backward()
        losses.append(loss.item())
        for pname, p in model.named_parameters():
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
            if p.ndim > 1:  # conv and linear weights (a conv bias before a batch norm gets ~0)
                assert p.grad.abs().sum() > 0, pname
        opt.step()
    with torch.no_grad():
        losses.append(F.cross_entropy(model(x).logits, y).item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[2] < losses[0], losses


@pytest.mark.parametrize("name", [n for n in NETS if n != "shufflenet_v2"])
def test_pre_relu_bns_one_per_stage(name):
    model = model_at_100(name)
    bns = model.pre_relu_bns()
    assert len(bns) == len(model.stage_channels)
    modules = {id(m) for m in model.modules()}
    outputs = []
    # a copy: the network writes its ReLU or residual sum into a norm's output (kdpipe.models.inplace)
    hooks = [bn.register_forward_hook(lambda m, i, o: outputs.append(o.clone())) for bn in bns]
    try:
        with torch.no_grad():
            taps = model(torch.randn(2, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(outputs) == len(bns)
    for i, (bn, channels, out) in enumerate(zip(bns, model.stage_channels, outputs)):
        assert isinstance(bn, nn.BatchNorm2d) and id(bn) in modules
        assert bn.num_features == channels
        assert out.shape == taps.stages_pre[i].shape
        if name.startswith("vgg") or (name == "mobilenet_v2" and i == 3):  # no shortcut added after the norm
            assert torch.equal(out, taps.stages_pre[i])
        elif name == "shufflenet_v1":  # the identity shortcut adds the previous unit's (post-ReLU) output
            assert (taps.stages_pre[i] - out >= 0).all()
    assert teacher_pre_relu_bns(model, len(bns)) == bns


def test_shufflenet_v2_has_no_pre_relu_bns():
    # RepDistiller's ShuffleNetv2.py get_bn_before_relu raises: half of a stage's output bypasses its last unit
    model = model_at_100("shufflenet_v2")
    with pytest.raises(KdpipeError, match="margin: batch"):
        model.pre_relu_bns()
    with pytest.raises(KdpipeError, match="shufflenet_v2"):
        teacher_pre_relu_bns(model, 3)
