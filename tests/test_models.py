import pytest
import torch
import torch.nn.functional as F

from kdpipe.errors import KdpipeError
from kdpipe.models import MODELS, FeatureTaps, build_model, count_parameters


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
