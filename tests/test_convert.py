"""convert_teacher: RepDistiller's and mdistiller's CIFAR teacher files as kdpipe model.pt files.

The reference layouts are built here without the references' code: our net's state dict (random
values in every tensor, buffers included) renamed by explicit per-net tables written from reading
their models/*.py (HobbitLong/RepDistiller b84f547; mdistiller/models/cifar/ has the same names).
Each table's result is pinned to the reference: REFERENCE_DIGEST is the sha256 (first 16 hex digits)
of the sorted "name shape" lines of the reference net's own ``state_dict()`` at 100 classes, taken
by building RepDistiller's and mdistiller's definitions (both gave the same digest).  The converter
maps names by its own rules (kdpipe/convert.py); the logits of converted random-weight reference
nets were checked against the references' forward passes outside this suite.
"""

import hashlib
import json
import os
import pickle

import pytest
import torch

from kdpipe import KdpipeError, convert_teacher
from kdpipe.cli import main
from kdpipe.convert import convert_state_dict
from kdpipe.methods.common import load_network
from kdpipe.models import build_model
from kdpipe.options import ENTRIES, options_for

REFERENCE_DIGEST = {
    "resnet8x4": "b2ead61a142ef3af",  # models/resnet.py resnet8x4
    "wrn_16_1": "b4de1d786e12f08a",  # models/wrn.py wrn_16_1
    "vgg8": "7f85b8479109415f",  # models/vgg.py vgg8_bn
    "mobilenet_v2": "54501c9a7e317631",  # models/mobilenetv2.py mobile_half
    "shufflenet_v1": "1282e767b3e9c6cd",  # models/ShuffleNetv1.py ShuffleV1
    "shufflenet_v2": "9b7750ae03289b13",  # models/ShuffleNetv2.py ShuffleV2
    "resnet50": "d5367c1bcc2c22ea",  # models/resnetv2.py ResNet50
}


def _units(stage_prefix: str, counts, ref_prefix: str) -> dict:
    """stages.{s}.<stage_prefix>{u} -> <ref_prefix>{s+1}.{u}, for units per stage ``counts``."""
    return {f"stages.{s}.{stage_prefix}{u}": f"{ref_prefix}{s + 1}.{u}" for s, n in enumerate(counts) for u in range(n)}


# Per net: (outer, inner).  outer renames a module path's longest listed prefix; inner then renames the
# rest of the path (what is not listed keeps its name).
SHUFFLE_V1_UNIT = {"conv1.0": "conv1", "conv1.1": "bn1", "conv2.0": "conv2", "conv2.1": "bn2"}
SHUFFLE_V1_UNIT |= {"conv3.0": "conv3", "conv3.1": "bn3"}
SHUFFLE_V2_UNIT = {
    # the down-sampling unit (DownBlock): left = conv1/bn1, conv2/bn2; right = conv3/bn3, conv4/bn4, conv5/bn5
    "left.0.0": "conv1",
    "left.0.1": "bn1",
    "left.1.0": "conv2",
    "left.1.1": "bn2",
    "right.0.0": "conv3",
    "right.0.1": "bn3",
    "right.2.0": "conv4",
    "right.2.1": "bn4",
    "right.3.0": "conv5",
    "right.3.1": "bn5",
    # the basic unit (BasicBlock)
    "branch.0.0": "conv1",
    "branch.0.1": "bn1",
    "branch.2.0": "conv2",
    "branch.2.1": "bn2",
    "branch.3.0": "conv3",
    "branch.3.1": "bn3",
}
TO_REFERENCE = {
    "resnet8x4": (
        {
            "stages.0.blocks.0": "layer1.0",
            "stages.1.blocks.0": "layer2.0",
            "stages.2.blocks.0": "layer3.0",
            "stages.0.blocks.0.shortcut": "layer1.0.downsample",  # 32 -> 64 channels at stride 1
            "stages.1.blocks.0.shortcut": "layer2.0.downsample",
            "stages.2.blocks.0.shortcut": "layer3.0.downsample",
        },
        {},
    ),
    "wrn_16_1": (
        {
            "stages.0.blocks.0": "block1.layer.0",
            "stages.0.blocks.1": "block1.layer.1",
            "stages.1.blocks.0": "block2.layer.0",
            "stages.1.blocks.1": "block2.layer.1",
            "stages.2.blocks.0": "block3.layer.0",
            "stages.2.blocks.1": "block3.layer.1",
        },
        {"shortcut": "convShortcut"},
    ),
    "vgg8": (
        {"stem": "block0", "stages.0": "block1", "stages.1": "block2", "stages.2": "block3", "stages.3": "block4"}
        | {"fc": "classifier"},
        {},
    ),
    "mobilenet_v2": (
        {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1", "fc": "classifier.0"}
        | {
            "stages.0.0": "blocks.0.0",
            "stages.0.1": "blocks.1.0",
            "stages.0.2": "blocks.1.1",
            "stages.1.0": "blocks.2.0",
            "stages.1.1": "blocks.2.1",
            "stages.1.2": "blocks.2.2",
            "stages.2.0": "blocks.3.0",
            "stages.2.1": "blocks.3.1",
            "stages.2.2": "blocks.3.2",
            "stages.2.3": "blocks.3.3",
            "stages.2.4": "blocks.4.0",
            "stages.2.5": "blocks.4.1",
            "stages.2.6": "blocks.4.2",
            "stages.3.0": "blocks.5.0",
            "stages.3.1": "blocks.5.1",
            "stages.3.2": "blocks.5.2",
            "stages.3.3": "blocks.6.0",
        },
        {},
    ),
    "shufflenet_v1": ({"fc": "linear"} | _units("units.", (4, 8, 4), "layer"), SHUFFLE_V1_UNIT),
    "shufflenet_v2": ({"fc": "linear"} | _units("units.", (4, 8, 4), "layer"), SHUFFLE_V2_UNIT),
    "resnet50": ({"fc": "linear"} | _units("blocks.", (3, 4, 6, 3), "layer"), {}),
}


def to_reference(net: str, key: str) -> str:
    outer, inner = TO_REFERENCE[net]
    module, _, leaf = key.rpartition(".")
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        head, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        if head in outer:
            module = outer[head] + ("." + inner.get(rest, rest) if rest else "")
            break
    return f"{module}.{leaf}"


def digest(state: dict) -> str:
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def random_state(net: str, num_class: int = 100, seed: int = 0) -> dict:
    """Our net's state dict with random values in every tensor, so that any two swapped tensors differ."""
    gen = torch.Generator().manual_seed(seed)
    state = build_model(net, num_class).state_dict()
    return {
        k: torch.randint(0, 10**6, (), generator=gen) if v.dtype == torch.int64 else torch.randn(v.shape, generator=gen)
        for k, v in state.items()
    }


def reference_file(path, net: str, num_class: int = 100, **extra) -> tuple[dict, dict]:
    """Our random state and its reference-layout twin, saved as RepDistiller's train_teacher.py does."""
    ours = random_state(net, num_class)
    ref = {to_reference(net, k): v for k, v in ours.items()}
    torch.save({"epoch": 240, "model": ref, "best_acc": torch.tensor(75.61), "optimizer": {"state": {}}, **extra}, path)
    return ours, ref


def assert_nothing_written(out):
    assert not out.exists() and not out.with_name(out.name + ".json").exists()


@pytest.mark.parametrize("net", list(TO_REFERENCE))
def test_every_reference_tensor_lands_on_its_key(net):
    """In memory: each of our keys receives the very tensor the test's table names, and the table's
    layout is the reference's (its digest)."""
    ours = build_model(net, 100).state_dict()
    ref = {to_reference(net, k): v for k, v in ours.items()}
    assert len(ref) == len(ours) and digest(ref) == REFERENCE_DIGEST[net], "the test's table is not the reference's"
    converted, summary = convert_state_dict(ref, net, where="src x")
    assert list(converted) == list(ours)
    assert all(converted[k] is ref[to_reference(net, k)] for k in ours)
    assert summary["layout"] == "reference" and summary["num_class"] == 100 and summary["keys"] == len(ours)


@pytest.mark.parametrize("net", [net for net in TO_REFERENCE if net != "resnet50"])  # resnet50: 95 MB a file
def test_reference_file_round_trips_exactly(tmp_path, net):
    ours, ref = reference_file(tmp_path / "ckpt_epoch_240.pth", net)
    out = tmp_path / "teacher" / "model.pt"
    record = convert_teacher(src=str(tmp_path / "ckpt_epoch_240.pth"), net=net, out=str(out))
    converted = torch.load(out, weights_only=True)
    assert list(converted) == list(ours)  # the net's own key order
    assert all(torch.equal(converted[k], ours[k]) and converted[k].dtype == ours[k].dtype for k in ours)
    assert load_network(out, net, 100, "t_model") is not None  # what --t_model does with it
    assert record["source"] == "repdistiller" and record["num_class"] == 100 and record["epoch"] == 240
    assert record["best_acc"] == pytest.approx(75.61)
    assert record["mapping"]["keys"] == len(ours) and record["mapping"]["filled_num_batches_tracked"] == 0


def test_sidecar_records_source_and_mapping(tmp_path):
    src, out = tmp_path / "ckpt.pth", tmp_path / "model.pt"
    reference_file(src, "resnet8x4")
    convert_teacher(src=str(src), net="resnet8x4", out=str(out), source="mdistiller")
    side = json.loads((tmp_path / "model.pt.json").read_text())
    assert side["src"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert side["out_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (side["source"], side["source_requested"], side["net"]) == ("mdistiller", "mdistiller", "resnet8x4")
    assert side["src"]["state_dict"] == "model"
    mapping = side["mapping"]
    assert mapping["family"] == "resnet" and mapping["keys"] == 62 and mapping["renamed"] == 54  # all but conv1/bn1/fc
    assert any("downsample" in rule for rule in mapping["rules"])


def test_mdistiller_student_file_bare_and_state_dict_containers(tmp_path):
    ours = random_state("wrn_16_1")
    ref = {to_reference("wrn_16_1", k): v for k, v in ours.items()}
    for name, obj, source in (
        ("student_best", {"model": ref}, "mdistiller"),  # mdistiller's trainer
        ("bare.pth", ref, "repdistiller"),
        ("sd.pth", {"state_dict": ref, "epoch": 3}, "repdistiller"),
        ("dp.pth", {"model": {"module." + k: v for k, v in ref.items()}, "epoch": 3}, "repdistiller"),
    ):
        torch.save(obj, tmp_path / name)
        record = convert_teacher(src=str(tmp_path / name), net="wrn_16_1", out=str(tmp_path / "m.pt"))
        converted = torch.load(tmp_path / "m.pt", weights_only=True)
        assert all(torch.equal(converted[k], ours[k]) for k in ours), name
        assert record["source"] == source, name
    assert record["mapping"]["stripped_prefix"] == "module."


def test_kdpipe_layout_is_checked_and_resaved(tmp_path):
    ours = random_state("vgg8", 10)
    torch.save(ours, tmp_path / "model.pt")
    record = convert_teacher(src=str(tmp_path / "model.pt"), net="vgg8", out=str(tmp_path / "again.pt"))
    assert record["source"] == "kdpipe" and record["num_class"] == 10 and record["mapping"]["renamed"] == 0
    converted = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def test_old_pytorch_file_without_counters_and_half_precision(tmp_path):
    ours = random_state("resnet8x4")
    ref = {to_reference("resnet8x4", k): v for k, v in ours.items() if not k.endswith("num_batches_tracked")}
    ref = {k: v.half() for k, v in ref.items()}
    torch.save({"model": ref, "epoch": 240}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    record = convert_teacher(src=str(tmp_path / "old.pth"), net="resnet8x4", out=str(tmp_path / "m.pt"))
    mapping = record["mapping"]
    assert mapping["filled_num_batches_tracked"] == 10 and mapping["cast"] == {"float16->float32": len(ref)}
    converted = torch.load(tmp_path / "m.pt", weights_only=True)
    assert converted["stages.0.blocks.0.bn1.num_batches_tracked"].item() == 0
    assert converted["fc.weight"].dtype == torch.float32
    assert torch.equal(converted["fc.weight"], ours["fc.weight"].half().float())


def convert_error(tmp_path, src, net="resnet8x4", **kwargs) -> str:
    out = tmp_path / "out" / "model.pt"
    with pytest.raises(KdpipeError) as info:
        convert_teacher(src=str(src), net=net, out=str(out), **kwargs)
    assert_nothing_written(out)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_shape_names_file_key_and_expectation(tmp_path):
    src = tmp_path / "ckpt.pth"
    _, ref = reference_file(src, "resnet8x4")
    ref["layer1.0.conv1.weight"] = torch.zeros(32, 16, 3, 3)
    torch.save({"model": ref}, src)
    assert convert_error(tmp_path, src) == (
        f"src {src}: key layer1.0.conv1.weight has shape (32,16,3,3), resnet8x4 expects (64,32,3,3) "
        "at stages.0.blocks.0.conv1.weight; is --net right?"
    )


def test_wrong_net_and_wrong_class_count(tmp_path):
    src = tmp_path / "wrn.pth"
    reference_file(src, "wrn_16_1")
    message = convert_error(tmp_path, src, net="resnet8x4")
    assert message.startswith(f"src {src}: key ") and message.endswith("is --net right?")
    assert "resnet8x4" in message
    message = convert_error(tmp_path, src, net="wrn_16_1", num_class=10)
    assert message == (
        f"src {src}: key fc.weight has shape (100,64), wrn_16_1 with 10 classes expects (10,64) at fc.weight; "
        "is --num_class right?"
    )


def test_unexpected_and_missing_keys(tmp_path):
    src = tmp_path / "ckpt.pth"
    _, ref = reference_file(src, "shufflenet_v2")
    torch.save({"model": {**ref, "layer4.0.conv1.weight": torch.zeros(1)}}, src)
    message = convert_error(tmp_path, src, net="shufflenet_v2")
    assert message == (
        f"src {src}: key layer4.0.conv1.weight is not a parameter or buffer of RepDistiller's/mdistiller's "
        "ShuffleV2 (338 keys); is --net right?"
    )
    del ref["layer2.0.bn5.running_var"]
    torch.save({"model": ref}, src)
    message = convert_error(tmp_path, src, net="shufflenet_v2")
    assert message.startswith(
        f"src {src}: no key layer2.0.bn5.running_var (for stages.1.units.0.right.3.1.running_var)"
    )


def test_not_a_checkpoint_and_distiller_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    message = convert_error(tmp_path, tmp_path / "junk.pth")
    assert message.startswith(f"src {tmp_path / 'junk.pth'}: unreadable, truncated or corrupted")
    assert convert_error(tmp_path, tmp_path / "absent.pth") == f"src {tmp_path / 'absent.pth'}: no such file"
    torch.save({"epoch": 1, "acc": 3.0}, tmp_path / "meta.pth")
    assert "no state dict found" in convert_error(tmp_path, tmp_path / "meta.pth")
    _, ref = reference_file(tmp_path / "r.pth", "resnet8x4")
    both = {f"module.student.{k}": v for k, v in ref.items()} | {f"module.teacher.{k}": v for k, v in ref.items()}
    torch.save({"model": both}, tmp_path / "latest")
    assert "distiller checkpoint" in convert_error(tmp_path, tmp_path / "latest")


class Payload:
    """Unpickling this runs ``os.system`` (it creates the marker file), if anything lets it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_executing_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "epoch": Payload(marker)}, tmp_path / "evil.pth")
    message = convert_error(tmp_path, tmp_path / "evil.pth")
    assert message.startswith(f"src {tmp_path / 'evil.pth'}: refused: it names posix.system, which a weights-only")
    assert "kdpipe never runs code from a file" in message and "weights_only" not in message
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))  # not torch.save's
    assert "refused: it names posix.system" in convert_error(tmp_path, tmp_path / "evil.pkl")
    (tmp_path / "evil4.pkl").write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))
    # the weights-only unpickler stops sooner, at the protocol's first opcode, before the global
    assert "or holding what a weights-only load does not allow" in convert_error(tmp_path, tmp_path / "evil4.pkl")
    assert not marker.exists()


def test_existing_output_survives_an_error(tmp_path):
    src = tmp_path / "ckpt.pth"
    reference_file(src, "vgg8")
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous")
    with pytest.raises(KdpipeError):
        convert_teacher(src=str(src), net="wrn_16_1", out=str(out))
    assert out.read_bytes() == b"previous" and not (tmp_path / "model.pt.json").exists()


def test_declared_entry_and_options():
    assert ENTRIES["convert_teacher"].function == "convert_teacher" and ENTRIES["convert_teacher"].module == ".convert"
    assert [o.name for o in options_for("convert_teacher")] == ["src", "net", "out", "source", "num_class"]
    with pytest.raises(KdpipeError, match="convert_teacher: unknown option 'epochs'"):
        convert_teacher(src="a", net="vgg8", out="b", epochs=3)
    with pytest.raises(KdpipeError, match="net: got 'resnet8w4'; allowed: one of resnet8, "):
        convert_teacher(src="a", net="resnet8w4", out="b")


def test_cli_converts_and_fails_with_one_line(tmp_path, capsys):
    """``python -m kdpipe convert_teacher`` (its main, in this process: a subprocess costs seconds)."""
    src = tmp_path / "ckpt.pth"
    reference_file(src, "wrn_16_1")
    out = tmp_path / "t" / "model.pt"
    assert main(["convert_teacher", "--src", str(src), "--net", "wrn_16_1", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "t" / "model.pt.json").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad" / "model.pt"
    assert main(["convert_teacher", "--src", str(src), "--net", "vgg8", "--out", str(bad)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kdpipe convert_teacher: error: src {src}: key ")
    assert lines[0].endswith("is --net right?")
    assert_nothing_written(bad)


def test_file_of_another_family_names_neither_layout(tmp_path):
    # a RepDistiller resnet8x4 file shares only fc.* with kdpipe's vgg8 names: not taken as a kdpipe file
    src = tmp_path / "resnet8x4.pth"
    reference_file(src, "resnet8x4")
    message = convert_error(tmp_path, src, net="vgg8")
    assert message == (
        f"src {src}: key conv1.weight is not a parameter or buffer of vgg8 in kdpipe's or "
        "RepDistiller's/mdistiller's names (37 keys); is --net right?"
    )
