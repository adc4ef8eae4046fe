import contextlib

import pytest
import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.models import MODELS, FeatureTaps, build_model, count_parameters, inplace
from kdpipe.models.inplace import out_of_place


@pytest.mark.parametrize(
    "name, published",
    [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)],
)
def test_parameter_counts_match_published(name, published):
    params = count_parameters(build_model(name, 10))
    assert abs(params - published) / published < 0.03, params


def test_exact_parameter_counts():
    # conv/bn/fc arithmetic for 6n+2 layers with 1x1-conv projection shortcuts
    def expected(n, classes=10):
        total = 3 * 16 * 9 + 2 * 16  # stem conv + bn
        cin = 16
        for width in (16, 32, 64):
            for b in range(n):
                total += cin * width * 9 + 2 * width + width * width * 9 + 2 * width
                if cin != width:
                    total += cin * width + 2 * width
                cin = width
        return total + 64 * classes + classes

    for depth in (8, 14, 20, 32, 44, 56, 110):
        assert count_parameters(build_model(f"resnet{depth}", 10)) == expected((depth - 2) // 6)
    assert count_parameters(build_model("resnet20", 100)) == expected(3, 100)


@pytest.mark.parametrize("size, maps", [(32, (32, 16, 8)), (16, (16, 8, 4)), (24, (24, 12, 6))])
def test_named_taps_shapes(size, maps):
    model = build_model("resnet8", 7).eval()
    taps = model(torch.randn(2, 3, size, size))
    assert isinstance(taps, FeatureTaps)
    assert taps.stem.shape == (2, 16, size, size)
    for i, (channels, side) in enumerate(zip((16, 32, 64), maps)):
        assert taps.stages[i].shape == (2, channels, side, side)
        assert taps.stages_pre[i].shape == taps.stages[i].shape
        assert torch.equal(taps.stages[i], F.relu(taps.stages_pre[i]))
        assert (taps.stages_pre[i] < 0).any()  # really before the ReLU
    assert taps.embedding.shape == (2, 64)
    assert torch.allclose(taps.embedding, taps.stages[2].mean(dim=(2, 3)), atol=1e-6)
    assert taps.logits.shape == (2, 7)
    assert torch.allclose(taps.logits, model.fc(taps.embedding))


def test_registry_covers_cifar_depths_and_rejects_unknown():
    assert {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)} <= set(MODELS)
    with pytest.raises(KdpipeError, match="resnet21.*resnet20"):
        build_model("resnet21", 10)


def test_head_is_what_repdistillers_get_feat_modules_leaves_out():
    """models/*.py get_feat_modules() in RepDistiller: the stem and the stages; the rest is the head
    (init_optimizer features leaves it alone in a two-stage init phase)."""
    from kdpipe.models import head_modules

    expected = {
        "resnet8": ["fc"],
        "resnet50": ["fc"],
        "wrn_16_1": ["bn1", "fc"],  # WRN: conv1, block1-3 only
        "vgg8": ["fc"],
        "mobilenet_v2": ["conv2", "bn2", "fc"],  # MobileNetV2: conv1 and blocks only
        "shufflenet_v1": ["fc"],
        "shufflenet_v2": ["conv2", "bn2", "fc"],  # ShuffleV2: conv1, bn1, layer1-3 only
    }
    for net, names in expected.items():
        model = build_model(net, 100)
        by_id = {id(m): name for name, m in model.named_children()}
        assert [by_id[id(m)] for m in head_modules(model)] == names, net


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet8x4", "resnet50", "wrn_16_2", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2", "vgg8"]
)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_in_place_relus_and_sums_train_as_the_out_of_place_ones_bit_for_bit(name, memory_format):
    """Each family's in-place ReLUs and residual sums (kdpipe.models.inplace) give the taps, logits, gradients,
    weights and batch-norm statistics of out-of-place ones over two SGD steps, bit for bit: a write into a tap or
    into a tensor a backward reads would change them (or autograd would raise)."""

    def train(in_place: bool):
        torch.manual_seed(0)
        model = build_model(name, 10).to(memory_format=memory_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(1)
        seen = []
        with contextlib.nullcontext() if in_place else out_of_place():
            for _ in range(2):
                x = torch.randn(8, 3, 32, 32, generator=gen).contiguous(memory_format=memory_format)
                taps = model(x)
                feats = [taps.stem, *taps.stages_pre, *taps.stages, taps.embedding]
                # every tap reaches the loss, as the distillation losses read them
                loss = F.cross_entropy(taps.logits, torch.arange(8) % 10) + sum(f.square().mean() for f in feats)
                opt.zero_grad()
                loss.backward()
                seen += [t.detach().clone() for t in (*feats, taps.logits)]
                seen += [p.grad.clone() for p in model.parameters()]
                opt.step()
        return seen + list(model.state_dict().values())

    assert inplace._in_place  # the default
    in_place, copied = train(True), train(False)
    assert len(in_place) == len(copied)
    assert all(a.equal(b) for a, b in zip(in_place, copied))
