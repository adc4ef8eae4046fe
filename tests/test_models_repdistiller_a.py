"""RepDistiller's CIFAR nets: resnet8x4/resnet32x4, resnet50 (bottleneck) and wrn_{16,40}_{1,2}.

Parameter counts are the reference's, read off by building RepDistiller's model definitions
(HobbitLong/RepDistiller, commit b84f547) with ``num_classes`` 100 and 10; mdistiller's copies
(megvii-research/mdistiller, mdistiller/models/cifar/) give the same counts.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.models import MODELS, build_model, count_parameters

# name: (parameters at 100 classes, at 10 classes), RepDistiller's definition
REFERENCE_PARAMETERS = {
    "resnet8x4": (1_233_540, 1_210_410),  # models/resnet.py resnet8x4
    "resnet32x4": (7_433_860, 7_410_730),  # models/resnet.py resnet32x4
    "resnet50": (23_705_252, 23_520_842),  # models/resnetv2.py ResNet50
    "wrn_16_1": (180_916, 175_066),  # models/wrn.py wrn_16_1
    "wrn_16_2": (703_284, 691_674),  # models/wrn.py wrn_16_2
    "wrn_40_1": (569_780, 563_930),  # models/wrn.py wrn_40_1
    "wrn_40_2": (2_255_156, 2_243_546),  # models/wrn.py wrn_40_2
    # models/resnet.py resnet{depth}, num_filters [16, 16, 32, 64]: our He et al. nets, unchanged
    "resnet20": (278_324, 272_474),
    "resnet32": (472_756, 466_906),
    "resnet56": (861_620, 855_770),
    "resnet110": (1_736_564, 1_730_714),
}

# name: (stem (C, side), per stage (C, side)) for a 32x32 input
TAPS_32 = {
    "resnet8x4": ((32, 32), ((64, 32), (128, 16), (256, 8))),
    "resnet32x4": ((32, 32), ((64, 32), (128, 16), (256, 8))),
    "resnet50": ((64, 32), ((256, 32), (512, 16), (1024, 8), (2048, 4))),
    "wrn_16_1": ((16, 32), ((16, 32), (32, 16), (64, 8))),
    "wrn_16_2": ((16, 32), ((32, 32), (64, 16), (128, 8))),
    "wrn_40_1": ((16, 32), ((16, 32), (32, 16), (64, 8))),
    "wrn_40_2": ((16, 32), ((32, 32), (64, 16), (128, 8))),
}
NEW_NETS = tuple(TAPS_32)
WIDE = {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}  # blocks end with the residual sum, no ReLU


@functools.cache
def eval_taps(name: str):
    """The net at 100 classes in eval mode, its taps for two 32x32 images, and the pre-ReLU batch
    norms' outputs (each call's) during that forward pass."""
    torch.manual_seed(0)
    model = build_model(name, 100).eval()
    bn_outputs = {i: [] for i in range(len(model.pre_relu_bns()))}
    hooks = [
        bn.register_forward_hook(lambda _m, _inp, out, i=i: bn_outputs[i].append(out))
        for i, bn in enumerate(model.pre_relu_bns())
    ]
    with torch.no_grad():
        taps = model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return model, taps, bn_outputs


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    eval_taps.cache_clear()  # resnet50 alone holds ~100 MB


def test_registry_names():
    assert set(NEW_NETS) <= set(MODELS)


@pytest.mark.parametrize("name", list(REFERENCE_PARAMETERS))
def test_parameter_counts_match_reference(name):
    at_100, at_10 = REFERENCE_PARAMETERS[name]
    if name in TAPS_32:  # the tap tests' 100-class net; test_trains counts the 10-class one it builds
        assert count_parameters(eval_taps(name)[0]) == at_100
    else:
        assert count_parameters(build_model(name, 100)) == at_100
        assert count_parameters(build_model(name, 10)) == at_10


@pytest.mark.parametrize("name", NEW_NETS)
def test_taps_at_32x32(name):
    model, taps, _ = eval_taps(name)
    (stem_c, stem_side), stages = TAPS_32[name]
    assert taps.stem.shape == (2, stem_c, stem_side, stem_side)
    assert model.stage_channels == tuple(c for c, _ in stages)
    assert len(taps.stages) == len(taps.stages_pre) == len(stages)
    for i, (channels, side) in enumerate(stages):
        assert taps.stages[i].shape == taps.stages_pre[i].shape == (2, channels, side, side)
        assert (taps.stages_pre[i] < 0).any()  # really before a ReLU
        if name in WIDE:
            # stages: the raw residual sum; stages_pre: the next batch norm's output
            assert torch.equal(taps.stages_pre[i], model.pre_relu_bns()[i](taps.stages[i]))
        else:
            assert torch.equal(taps.stages[i], F.relu(taps.stages_pre[i]))
    pooled = F.relu(taps.stages_pre[-1]) if name in WIDE else taps.stages[-1]
    assert model.embedding_dim == stages[-1][0]
    assert taps.embedding.shape == (2, model.embedding_dim)
    assert torch.allclose(taps.embedding, pooled.mean(dim=(2, 3)), atol=1e-6)
    assert taps.logits.shape == (2, 100)
    assert torch.allclose(taps.logits, model.fc(taps.embedding))


@pytest.mark.parametrize("name", NEW_NETS)
def test_pre_relu_bns_one_per_stage(name):
    model, taps, bn_outputs = eval_taps(name)
    bns = model.pre_relu_bns()
    assert len(bns) == len(model.stage_channels)
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert [bn.num_features for bn in bns] == list(model.stage_channels)
    for i, outputs in bn_outputs.items():
        assert len(outputs) == 1  # applied once per forward pass
        assert outputs[0].shape == taps.stages_pre[i].shape
        if name in WIDE:
            assert outputs[0] is taps.stages_pre[i]


@pytest.mark.parametrize("name", NEW_NETS)
def test_trains(name):
    """Two plain SGD steps (lr 1e-3) on four 16x16 images lower the loss; every parameter gets a
    finite, non-zero gradient.  16x16 since the pooling is adaptive and 32x32 costs four times as
    much; the update is written out, as torch.optim's first step imports torch._dynamo (~2 s)."""
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    assert count_parameters(model) == REFERENCE_PARAMETERS[name][1]
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    losses = []
    for step in range(3):
        model.zero_grad()
        loss = F.cross_entropy(model(x).logits, y)
        losses.append(loss.item())
        if step == 2:
            break
        loss.backward()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                assert p.grad is not None, pname
                assert torch.isfinite(p.grad).all(), pname
                assert p.grad.abs().sum() > 0, pname
                p -= 1e-3 * p.grad
    assert losses[2] < losses[1] < losses[0], losses
