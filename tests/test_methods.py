"""FT, CRD, DML and BSS entry points end to end on tiny digits data, API and CLI."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import kdpipe
from conftest import cli, cli_in_process, tiny_cli_flags
from kdpipe.errors import KdpipeError
from kdpipe.methods.dml import mutual_kl
from kdpipe.summary import _settings

TINY = dict(data_name="digits", epochs=2, batch_size=16, lr=0.05, train_subset=48, cuda=0, threads=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    kdpipe.train_base(net_name="resnet14", save_root=str(root), note="t", **{**TINY, "train_subset": 200})
    return root / "t" / "model.pt"


def metrics(run):
    return list(csv.DictReader(open(run / "metrics.csv")))


def finite_losses(run):
    return all(math.isfinite(float(r["train_loss"])) for r in metrics(run))


# ---------------------------------------------------------------- FT


def test_ft_paraphraser_then_student(tmp_path, teacher):
    para = kdpipe.train_ft_paraphraser(
        t_model=str(teacher), t_name="resnet14", k=0.5, save_root=str(tmp_path), note="para", **{**TINY, "lr": 0.01}
    )
    rows = metrics(tmp_path / "para")
    assert all(r["role"] == "paraphraser" and r["test_acc"] in ("", "nan") for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns to reconstruct
    assert para["info"]["factor_channels"] == 32
    assert para["info"]["ft_bn"] == "on" and para["info"]["para_decoder_out"] == "lrelu"
    state = torch.load(tmp_path / "para" / "paraphraser.pt", weights_only=True)
    assert any(k.startswith("encoder") for k in state)
    assert "decoder.7.running_mean" in state  # the decoder ends in BN (+ LeakyReLU), as KD-Zoo's
    # KD-Zoo's paraphraser optimizer: SGD momentum 0.9, weight decay, no Nesterov, a constant lr
    assert [float(r["lr"]) for r in rows] == [0.01, 0.01]
    group = torch.load(tmp_path / "para" / "checkpoint.pt", weights_only=True)["task"]["optimizers"]["paraphraser"]
    group = group["param_groups"][0]
    assert group["nesterov"] is False and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    record = kdpipe.train_ft(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        paraphraser=str(tmp_path / "para" / "paraphraser.pt"),
        save_root=str(tmp_path),
        note="ft",
        **TINY,
    )
    assert finite_losses(tmp_path / "ft")
    assert record["roles"]["student"]["method"] == "ft" and record["info"]["lambda_kd"] == 200.0
    assert "ft_bn=on; para_decoder_out=lrelu" in _settings(record)
    assert "paraphraser" in record["inputs"]
    ckpt = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    assert ckpt["task"]["extra"]["translator"]  # the translator is trained and saved with the student


def test_ft_trains_its_own_paraphraser_without_one(tmp_path, teacher):
    record = kdpipe.train_ft(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        para_epochs=2,
        ft_bn="off",
        para_decoder_out="linear",
        save_root=str(tmp_path),
        note="ft",
        **TINY,
    )
    assert (tmp_path / "ft" / "paraphraser" / "paraphraser.pt").is_file()
    assert record["inputs"]["paraphraser"]["path"].endswith("paraphraser/paraphraser.pt")
    para = json.loads((tmp_path / "ft" / "paraphraser" / "run.json").read_text())
    assert para["epochs"] == 2 and para["config"]["lr"] == pytest.approx(TINY["lr"] / 10)
    assert para["info"]["ft_bn"] == "off" and para["info"]["para_decoder_out"] == "linear"
    assert record["info"]["ft_bn"] == "off"
    ckpt = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    assert not any("running_mean" in k for k in ckpt["task"]["extra"]["translator"])  # no BN: translator too


def test_ft_paraphraser_defaults_from_the_cli(monkeypatch):
    """python -m kdpipe ft without --paraphraser trains one for KD-Zoo's 30 epochs at lr/10, constant."""
    from kdpipe import cli as kd_cli
    from kdpipe.methods import ft as ft_module
    from kdpipe.options import resolve

    calls = []
    monkeypatch.setattr(ft_module, "run_entry", lambda entry, kwargs, *a, **k: calls.append(resolve(entry, kwargs)))
    common = ["--data_name", "digits", "--t_model", "t.pt", "--t_name", "resnet14"]
    assert kd_cli.main(["ft", *common, "--s_name", "resnet8", "--save_root", "/nonexistent"]) == 0
    para, student = calls
    assert para["epochs"] == 30 and para["lr"] == pytest.approx(0.01) and para["milestones"] is None
    assert para["momentum"] == 0.9 and para["weight_decay"] == 1e-4
    assert (para["ft_bn"], para["para_decoder_out"]) == ("auto", "lrelu")
    assert student["para_epochs"] == 30 and student["epochs"] == 200
    calls.clear()
    assert kd_cli.main(["ft_paraphraser", *common]) == 0
    assert calls[0]["epochs"] == 30 and calls[0]["lr"] == 0.01 and calls[0]["milestones"] is None


def test_ft_batchnorm_follows_kdzoo_per_dataset():
    """(paraphraser, translator): KD-Zoo's auto, on, off for both; RepDistiller's in the translator alone."""
    from kdpipe.methods.ft import use_batchnorm

    assert use_batchnorm("auto", "cifar10") == use_batchnorm("auto", "digits") == (True, True)
    assert use_batchnorm("auto", "cifar100") == (False, False)  # KD-Zoo: use_bn = data_name == 'cifar10'
    assert use_batchnorm("on", "cifar100") == (True, True) and use_batchnorm("off", "cifar10") == (False, False)
    assert use_batchnorm("translator", "cifar10") == use_batchnorm("translator", "cifar100") == (False, True)


def test_ft_init_torch_keeps_pytorchs_layer_defaults():
    """``ft_init kaiming`` (KD-Zoo): Kaiming-normal fan_out convolutions, zero biases; ``torch`` (RepDistiller,
    whose models/util.py initialises nothing): the draws of PyTorch's own layers, here re-made from the seed."""
    from torch import nn

    from kdpipe.objectives.ft import Paraphraser, Translator

    torch.manual_seed(3)
    got = Translator(16, 8, bn=False, init="torch")
    torch.manual_seed(3)
    plain = [nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)]
    convs = [m for m in got.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(convs, plain))
    kaiming = Translator(16, 8, bn=False, init="kaiming")
    first = next(m for m in kaiming.modules() if isinstance(m, nn.Conv2d))
    assert float(first.bias.detach().abs().max()) == 0.0
    assert float(first.weight.detach().std()) == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.05)  # fan_out 16 x 3 x 3
    assert (
        float(convs[0].weight.detach().abs().max()) <= 1 / (16 * 9) ** 0.5
    )  # PyTorch's kaiming_uniform(a=sqrt 5) bound
    with pytest.raises(KdpipeError, match="ft_init: got 'xavier'; allowed: kaiming, torch"):
        Paraphraser(16, 0.5, init="xavier")


def test_ft_repdistillers_shape_paraphraser_and_translator(tmp_path, teacher):
    """config/repdistiller.yaml's FT: no BN in the paraphraser, BN in the translator, PyTorch's init, the spatial
    factor; each recorded (settings list the later-added options only where not at KD-Zoo's defaults)."""
    forms = dict(ft_bn="translator", ft_init="torch")
    kdpipe.train_ft_paraphraser(
        t_model=str(teacher), t_name="resnet14", save_root=str(tmp_path), note="p", **forms, **TINY
    )
    state = torch.load(tmp_path / "p" / "paraphraser.pt", weights_only=True)
    assert not any("running_mean" in k for k in state)
    record = kdpipe.train_ft(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        paraphraser=str(tmp_path / "p" / "paraphraser.pt"),
        factor_form="spatial",
        save_root=str(tmp_path),
        note="ft",
        **forms,
        **TINY,
    )
    translator = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)["task"]["extra"]["translator"]
    assert sum("running_mean" in k for k in translator) == 3
    assert record["settings"] == {
        "lambda_kd": 200.0,
        "k": 0.5,
        "ft_bn": "translator",
        "para_decoder_out": "lrelu",
        "factor_form": "spatial",
        "ft_init": "torch",
    }
    assert (record["info"]["factor_form"], record["info"]["ft_init"]) == ("spatial", "torch")


def test_ft_paraphraser_kept_is_the_last_epochs(tmp_path, teacher):
    """KD-Zoo and RepDistiller use the paraphraser as its last epoch left it, whatever its validation loss; the
    run records the revision that does so (form 2), and an earlier one is refused."""
    para = kdpipe.train_ft_paraphraser(
        t_model=str(teacher), t_name="resnet14", save_root=str(tmp_path), note="p", **{**TINY, "epochs": 3}
    )
    assert para["config"]["form"] == 2 and para["roles"]["paraphraser"]["best_epoch"] == 3
    kept = torch.load(tmp_path / "p" / "paraphraser.pt", weights_only=True)
    last = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)["task"]["roles"]["paraphraser"]
    assert kept.keys() == last.keys() and all(torch.equal(kept[k], last[k]) for k in kept)
    with pytest.raises(KdpipeError, match=r"form: got 1; the FT paraphraser computes revision 2 \(2026-11-28: "):
        kdpipe.train_ft_paraphraser(
            t_model=str(teacher), t_name="resnet14", save_root=str(tmp_path), note="old", form=1, **TINY
        )


def test_ft_refuses_paraphraser_of_other_k(tmp_path, teacher):
    kdpipe.train_ft_paraphraser(
        t_model=str(teacher), t_name="resnet14", k=0.25, save_root=str(tmp_path), note="para", **{**TINY, "epochs": 1}
    )
    with pytest.raises(KdpipeError, match="paraphraser .*does not fit k=0.5"):
        kdpipe.train_ft(
            t_model=str(teacher),
            t_name="resnet14",
            s_name="resnet8",
            k=0.5,
            paraphraser=str(tmp_path / "para" / "paraphraser.pt"),
            save_root=str(tmp_path),
            **TINY,
        )


# ---------------------------------------------------------------- CRD


@pytest.mark.parametrize(
    "settings",
    [{}, {"mode": "relax"}, {"sampler": "uniform", "objective": "infonce"}],
    ids=["default", "relax", "uniform-infonce"],
)
def test_crd_trains_each_setting(tmp_path, teacher, settings):
    record = kdpipe.train_crd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        nce_n=16,  # 48 digits images: every class's pool of other-class images is larger
        feat_dim=16,
        save_root=str(tmp_path),
        note="c",
        **settings,
        **TINY,
    )
    assert finite_losses(tmp_path / "c")
    info = record["info"]
    assert info["lambda_kd"] == 0.2 and info["memory_rows"] == 48
    chosen = {"mode": "exact", "sampler": "other_class", "objective": "nce", **settings}
    assert {k: info[k] for k in chosen} == chosen and {k: record["config"][k] for k in chosen} == chosen
    assert "mode={mode}; sampler={sampler}; objective={objective}".format(**chosen) in _settings(record)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["task"]["extra"]["crd"]
    assert state["memory.memory_s"].shape == (48, 16)
    if chosen["objective"] == "nce":
        assert float(state["memory.z_s"]) > 0  # the NCE normaliser was estimated and saved


def interrupt_and_resume(monkeypatch, task_cls, train, at_epoch, **kwargs):
    """Stop a run at the start of ``at_epoch`` (its checkpoint of the epoch before is written), then resume it."""
    original = task_cls.on_epoch_start

    def stop(self, epoch):
        if epoch == at_epoch:
            raise RuntimeError("interrupted")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(task_cls, "on_epoch_start", stop)
        with pytest.raises(RuntimeError, match="interrupted"):
            train(**kwargs)
    return train(**kwargs)


def assert_same_run(a, b, extra):
    wa, wb = (torch.load(r / "model.pt", weights_only=True) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = (torch.load(r / "checkpoint.pt", weights_only=True)["task"] for r in (a, b))
    assert all(torch.equal(v, cb["extra"][extra][k]) for k, v in ca["extra"][extra].items())
    timeless = [
        [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")} for r in metrics(run)]
        for run in (a, b)
    ]
    assert timeless[0] == timeless[1]


def test_crd_resume_replays_the_sampler(tmp_path, teacher, monkeypatch):
    from kdpipe.methods.crd import ContrastiveTask

    args = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", nce_n=16, feat_dim=16, mode="relax")
    kdpipe.train_crd(save_root=str(tmp_path), note="straight", **args, **{**TINY, "epochs": 3})
    record = interrupt_and_resume(
        monkeypatch,
        ContrastiveTask,
        kdpipe.train_crd,
        2,
        save_root=str(tmp_path),
        note="resumed",
        **args,
        **{**TINY, "epochs": 3},
    )
    assert record["resumed_at_epochs"] == [2]
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", "crd")  # memory banks included


def test_crd_plus_st(tmp_path, teacher):
    record = kdpipe.train_crd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        nce_n=32,
        st_weight=0.1,
        save_root=str(tmp_path),
        note="c",
        **TINY,
    )
    assert record["roles"]["student"]["variant"] == "+st"


# ---------------------------------------------------------------- DML


def test_mutual_kl_matches_definition():
    torch.manual_seed(0)
    z = [torch.randn(4, 5) for _ in range(3)]
    expected = 0.0
    for j in (1, 2):
        p_j = F.softmax(z[j], 1)
        expected += (p_j * (p_j.log() - F.log_softmax(z[0], 1))).sum(1).mean() / 2
    assert torch.allclose(mutual_kl(z, 0), expected, atol=1e-6)
    z0 = z[0].clone().requires_grad_(True)
    z1 = z[1].clone().requires_grad_(True)
    mutual_kl([z0, z1], 0).backward()
    assert z0.grad is not None and z1.grad is None  # the other peer is a constant


def test_dml_two_peers_each_own_optimizer(tmp_path):
    record = kdpipe.train_dml(net1_name="resnet14", net2_name="resnet8", save_root=str(tmp_path), note="d", **TINY)
    assert set(record["roles"]) == {"net1", "net2"}
    assert record["roles"]["net1"]["params"] > record["roles"]["net2"]["params"]
    rows = metrics(tmp_path / "d")
    assert sorted({r["role"] for r in rows}) == ["net1", "net2"] and len(rows) == 4
    assert (tmp_path / "d" / "model.pt").is_file() and (tmp_path / "d" / "model-net2.pt").is_file()
    opts = torch.load(tmp_path / "d" / "checkpoint.pt", weights_only=True)["task"]["optimizers"]
    assert set(opts) == {"net1", "net2"}


def test_dml_cohort_of_three(tmp_path):
    record = kdpipe.train_dml(
        peers=["resnet8", "resnet8", "resnet8"], save_root=str(tmp_path), note="d3", **{**TINY, "epochs": 1}
    )
    assert set(record["roles"]) == {"net1", "net2", "net3"}


def test_dml_requires_two_peers(tmp_path):
    with pytest.raises(KdpipeError, match="net1_name/net2_name"):
        kdpipe.train_dml(net1_name="resnet8", save_root=str(tmp_path), **TINY)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- BSS


def test_bss_attacks_after_warmup(tmp_path, teacher):
    # 12 epochs -> warm-up round(10*12/200) = 1 epoch, so epoch 2 uses boundary samples
    record = kdpipe.train_bss(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        attack_size=8,
        save_root=str(tmp_path),
        note="b",
        **{**TINY, "epochs": 12, "milestones": [30]},
    )
    assert finite_losses(tmp_path / "b")
    assert record["roles"]["student"]["generation"] == 1 and record["info"]["attack_size"] == 8
    assert record["info"]["attack_class"] == "sampled" and record["info"]["attack_clamp"] == "normalized"
    assert "attack_size=8; attack_class=sampled; attack_clamp=normalized" in _settings(record)


def test_born_again_generation_uses_fresh_init(tmp_path, teacher):
    kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="gen0", **TINY)
    gen0 = tmp_path / "gen0" / "model.pt"
    record = kdpipe.train_bss(
        t_model=str(gen0),
        t_name="resnet8",
        s_name="resnet8",
        attack_size=0,
        generation=2,
        save_root=str(tmp_path),
        note="gen2",
        **TINY,
    )
    assert record["roles"]["student"]["variant"] == "born-again"
    assert record["roles"]["student"]["generation"] == 2


# ---------------------------------------------------------------- CLI and errors


@pytest.mark.parametrize(
    "entry, args",
    [
        (
            "ft",
            ["--t_name", "resnet14", "--s_name", "resnet8", "--lambda_kd", "100", "--k", "0.5", "--para_epochs", "1"]
            + ["--ft_bn", "off", "--para_decoder_out", "linear"],
        ),
        (
            "crd",
            [
                "--t_name",
                "resnet14",
                "--s_name",
                "resnet8",
                "--feat_dim",
                "16",
                "--nce_n",
                "32",
                "--nce_t",
                "0.1",
                "--nce_mom",
                "0.5",
                "--mode",
                "relax",
                "--sampler",
                "uniform",
                "--objective",
                "infonce",
            ],
        ),
        (
            "bss",
            ["--t_name", "resnet14", "--s_name", "resnet8", "--lambda_kd", "2", "--T", "3", "--attack_size", "4"]
            + ["--attack_class", "runner_up", "--attack_clamp", "image"],
        ),
    ],
)
def test_cli_entries(tmp_path, teacher, entry, args):
    # the parser and the entry in this process (``python -m kdpipe`` itself: test_cli.py, test_kd.py)
    out = cli_in_process(entry, *tiny_cli_flags(tmp_path), "--t_model", str(teacher), *args)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["entry"] == entry


def test_cli_dml_seed_flags(tmp_path):
    out = cli_in_process(
        "dml", *tiny_cli_flags(tmp_path), "--net1_name", "resnet8", "--net2_name", "resnet8", "--lambda_kd", "1"
    )
    assert out.returncode == 0, out.stderr
    help_text = cli_in_process("dml", "-h").stdout
    for flag in ("--net1_init", "--net2_init", "--net1_name", "--net2_name", "--lambda_kd"):
        assert flag in help_text


@pytest.mark.parametrize(
    "entry, kwargs, message",
    [
        ("crd", dict(mode="approx"), "mode: got 'approx'; allowed: one of exact, relax"),
        ("crd", dict(nce_n=0), "nce_n: got 0; must be an integer >= 1"),
        ("crd", dict(nce_mom=1.0), "nce_mom: got 1.0"),
        ("ft", dict(k=0), "k: got 0.0; must be a number > 0"),
        ("bss", dict(attack_size=-1), "attack_size: got -1"),
        ("bss", dict(T=0), "T: got 0.0"),
        ("bss", dict(attack_class="random"), "attack_class: got 'random'"),
        ("crd", dict(sampler="same_class"), "sampler: got 'same_class'; allowed: one of other_class, uniform"),
        ("crd", dict(objective="softmax"), "objective: got 'softmax'; allowed: one of nce, infonce"),
        ("bss", dict(attack_clamp="pixels"), "attack_clamp: got 'pixels'; allowed: one of normalized, image"),
        ("ft", dict(ft_bn="yes"), "ft_bn: got 'yes'; allowed: one of auto, on, off"),
        ("ft", dict(para_decoder_out="relu"), "para_decoder_out: got 'relu'; allowed: one of lrelu, linear"),
        ("ft", dict(para_epochs=0), "para_epochs: got 0; must be an integer >= 1"),
    ],
)
def test_bad_flags(tmp_path, teacher, entry, kwargs, message):
    fn = getattr(kdpipe, f"train_{entry}")
    with pytest.raises(KdpipeError) as err:
        fn(t_model=str(teacher), t_name="resnet14", s_name="resnet8", save_root=str(tmp_path), **TINY, **kwargs)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "entry, flags, message",
    [
        ("crd", ["--s_name", "resnet8", "--sampler", "same_class"], "sampler: got 'same_class'; allowed: one of"),
        ("bss", ["--s_name", "resnet8", "--attack_clamp", "pixels"], "attack_clamp: got 'pixels'; allowed: one of"),
        ("ft_paraphraser", ["--para_decoder_out", "relu"], "para_decoder_out: got 'relu'; allowed: one of"),
    ],
)
def test_cli_bad_setting_one_line(tmp_path, entry, flags, message):
    # crd through ``python -m kdpipe``; the others through the same parser and error path in this process
    out = (cli if entry == "crd" else cli_in_process)(
        entry, *tiny_cli_flags(tmp_path), "--t_model", "t.pt", "--t_name", "resnet14", *flags
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_ft_in_run_paraphraser_takes_every_data_option(tmp_path):
    """`kdpipe ft` without --paraphraser trains one first; it sees the student's data exactly
    (--image_size included), because its options derive from the options' data group."""
    from PIL import Image

    from kdpipe.options import COMMON_GROUPS, common_options
    from kdpipe.workflow import data_options, load_config

    folder = tmp_path / "imgs"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 40), (i * 40, 80 if cls == "a" else 10, 0)).save(folder / cls / f"{i}.png")
    data = {"data_name": f"imagefolder:{folder}", "image_size": 16, "val_size": 2, "cuda": 0, "batch_size": 4}
    data["crop_padding"] = "zeros"  # an image folder's own is reflect
    kdpipe.train_base(net_name="resnet8", epochs=1, save_root=str(tmp_path), note="t", **data)
    record = kdpipe.train_ft(
        t_model=str(tmp_path / "t" / "model.pt"), t_name="resnet8", s_name="resnet8", epochs=1, para_epochs=1,
        save_root=str(tmp_path), note="ft", **data,
    )  # fmt: skip
    para = json.loads((tmp_path / "ft" / "paraphraser" / "run.json").read_text())
    assert para["data"]["image_shape"] == record["data"]["image_shape"] == [3, 16, 16]
    assert para["data"]["sha256"] == record["data"]["sha256"]
    assert para["data"]["augmentation"]["pad_mode"] == record["data"]["augmentation"]["pad_mode"] == "constant"
    # the workflow's data node passes exactly the data group (num_class follows from the data; crop_padding
    # only where it is not auto, so that runs planned before it keep their params; data_manifest is what the
    # node writes, which the training jobs check their data against)
    config = load_config({"datasets": ["digits"], "base": {"nets": ["resnet8"]}, "data": {"crop_padding": "zeros"}})
    assert set(data_options(config, "digits")) == set(common_options("data")) - {"num_class", "data_manifest"}
    config = load_config({"datasets": ["digits"], "base": {"nets": ["resnet8"]}})
    left = {"num_class", "crop_padding", "data_manifest"}
    assert set(data_options(config, "digits")) == set(common_options("data")) - left
    assert "image_size" in COMMON_GROUPS["data"]
