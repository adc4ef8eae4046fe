"""FT, CRD, DML and BSS entry points end to end on tiny digits data, API and CLI."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import kdpipe
from conftest import cli, tiny_cli_flags
from kdpipe.errors import KdpipeError
from kdpipe.methods.dml import mutual_kl

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
    state = torch.load(tmp_path / "para" / "paraphraser.pt", weights_only=True)
    assert any(k.startswith("encoder") for k in state)
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
    assert "paraphraser" in record["inputs"]
    ckpt = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    assert ckpt["task"]["extra"]["translator"]  # the translator is trained and saved with the student


def test_ft_trains_its_own_paraphraser_without_one(tmp_path, teacher):
    record = kdpipe.train_ft(
        t_model=str(teacher), t_name="resnet14", s_name="resnet8", save_root=str(tmp_path), note="ft", **TINY
    )
    assert (tmp_path / "ft" / "paraphraser" / "paraphraser.pt").is_file()
    assert record["inputs"]["paraphraser"]["path"].endswith("paraphraser/paraphraser.pt")


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


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_trains_both_modes(tmp_path, teacher, mode):
    record = kdpipe.train_crd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        mode=mode,
        nce_n=64,
        feat_dim=16,
        save_root=str(tmp_path),
        note=mode,
        **TINY,
    )
    assert finite_losses(tmp_path / mode)
    assert record["info"]["lambda_kd"] == 0.2 and record["info"]["memory_rows"] == 48
    state = torch.load(tmp_path / mode / "checkpoint.pt", weights_only=True)["task"]["extra"]["crd"]
    assert state["memory.memory_s"].shape == (48, 16)
    if mode == "exact":
        assert float(state["memory.z_s"]) > 0  # the NCE normaliser was estimated and saved


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
    # 20 epochs -> warm-up round(10*20/200) = 1 epoch, so epoch 2 uses boundary samples
    record = kdpipe.train_bss(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        attack_size=8,
        save_root=str(tmp_path),
        note="b",
        **{**TINY, "epochs": 20, "milestones": [30]},
    )
    assert finite_losses(tmp_path / "b")
    assert record["roles"]["student"]["generation"] == 1 and record["info"]["attack_size"] == 8


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
        ("ft", ["--t_name", "resnet14", "--s_name", "resnet8", "--lambda_kd", "100", "--k", "0.5"]),
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
            ],
        ),
        ("bss", ["--t_name", "resnet14", "--s_name", "resnet8", "--lambda_kd", "2", "--T", "3", "--attack_size", "4"]),
    ],
)
def test_cli_entries(tmp_path, teacher, entry, args):
    out = cli(entry, *tiny_cli_flags(tmp_path), "--t_model", str(teacher), *args)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["entry"] == entry


def test_cli_dml_seed_flags(tmp_path):
    out = cli("dml", *tiny_cli_flags(tmp_path), "--net1_name", "resnet8", "--net2_name", "resnet8", "--lambda_kd", "1")
    assert out.returncode == 0, out.stderr
    help_text = cli("dml", "-h").stdout
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
    ],
)
def test_bad_flags(tmp_path, teacher, entry, kwargs, message):
    fn = getattr(kdpipe, f"train_{entry}")
    with pytest.raises(KdpipeError) as err:
        fn(t_model=str(teacher), t_name="resnet14", s_name="resnet8", save_root=str(tmp_path), **TINY, **kwargs)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []
