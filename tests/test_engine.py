import csv
import json
import shutil

import pytest
import torch

import kdpipe
from kdpipe.checkpoint import sha256_file
from kdpipe.engine import batch_bounds, default_milestones, lr_factor
from kdpipe.errors import KdpipeError
from kdpipe.models import build_model


def test_schedule_scales_spec():
    assert default_milestones(200) == [100, 150]
    assert default_milestones(12) == [6, 9]
    factors = [lr_factor(e, [100, 150]) for e in (0, 99, 100, 149, 150, 199)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(0, [5], warmup_epochs=2) == pytest.approx(0.1)
    assert lr_factor(2, [5], warmup_epochs=2) == pytest.approx(1.0)


def test_batch_bounds_never_leave_a_single_sample():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(3, 8) == [(0, 3)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    record = kdpipe.train_base(
        data_name="digits",
        net_name="resnet8",
        epochs=4,
        batch_size=32,
        lr=0.05,
        save_root=str(root),
        note="r8",
        cuda=0,
    )
    return root / "r8", record


def test_training_learns_digits(trained):
    run, record = trained
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == [
        "epoch",
        "role",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "epoch_time_s",
        "images_per_s",
    ]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] * 0.5
    assert float(rows[-1]["test_acc"]) > 60  # chance is 10%
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.005, 0.0005])


def test_run_record_and_best_on_val(trained):
    run, record = trained
    on_disk = json.loads((run / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    role = record["roles"]["net"]
    best_row = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"]), int(r["epoch"])))
    assert role["best_epoch"] == int(best_row["epoch"])
    assert role["test_acc_at_best"] == pytest.approx(float(best_row["test_acc"]), abs=1e-3)
    assert role["last_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-3)
    assert role["params"] == sum(p.numel() for p in build_model("resnet8", 10).parameters())
    for key in ("versions", "config", "train_time_s", "mean_epoch_s", "wall_time_s", "inputs", "data"):
        assert key in record
    assert record["config"]["milestones"] is None and record["data"]["augmentation"]["num_views"] == 25


def test_model_pt_is_best_state_and_loads_weights_only(trained):
    run, record = trained
    state = torch.load(run / "model.pt", weights_only=True)
    model = build_model("resnet8", 10)
    model.load_state_dict(state)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4
    best = ckpt["best"]["net"]["state"]
    assert all(torch.equal(best[k], state[k]) for k in state)


def test_finished_run_is_not_retrained_and_other_settings_refused(trained):
    run, record = trained
    before = sha256_file(run / "model.pt")
    again = kdpipe.train_base(
        data_name="digits",
        net_name="resnet8",
        epochs=4,
        batch_size=32,
        lr=0.05,
        save_root=str(run.parent),
        note="r8",
        cuda=0,
        print_freq=7,
    )
    assert again["finished_at"] == record["finished_at"] and sha256_file(run / "model.pt") == before
    with pytest.raises(KdpipeError, match="finished run with other settings"):
        kdpipe.train_base(data_name="digits", net_name="resnet8", epochs=5, save_root=str(run.parent), note="r8")


def test_other_settings_replace_moves_a_finished_run_of_other_settings_aside(trained, tmp_path):
    """--other_settings replace (the workflow's jobs): a directory holding a finished run of other settings
    gets its files moved into replaced/<time>/ and the run trains anew; a run of the same settings is
    still finished; the default refuses, touching nothing."""
    run, record = trained
    shutil.copytree(run, tmp_path / "r8")
    run = tmp_path / "r8"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"}
    kwargs = dict(data_name="digits", net_name="resnet8", epochs=4, batch_size=32, save_root=str(tmp_path), note="r8")
    again = kdpipe.train_base(lr=0.05, other_settings="replace", **kwargs)
    assert again["finished_at"] == record["finished_at"] and not (run / "replaced").exists()
    with pytest.raises(KdpipeError, match=r"holds a finished run with other settings \(lr\)"):
        kdpipe.train_base(lr=0.02, **kwargs)
    new = kdpipe.train_base(lr=0.02, other_settings="replace", **kwargs)
    assert new["fingerprint"]["lr"] == 0.02 and new["resumed_at_epochs"] == []
    (kept,) = (run / "replaced").iterdir()
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before  # the old run, whole
    assert "held a run with other settings (lr)" in (run / "train.log").read_text()
    with pytest.raises(KdpipeError, match=r"other_settings: got 'overwrite'; allowed: one of refuse, replace"):
        kdpipe.train_base(lr=0.02, other_settings="overwrite", **kwargs)
    # a run of other settings that left only its checkpoint (a killed job): refused before anything is written
    for name in ("run.json", "model.pt", "metrics.csv"):
        (run / name).unlink()
    log = (run / "train.log").read_bytes()
    with pytest.raises(KdpipeError, match=r"checkpoint.pt: checkpoint was made with lr=0.02, this run has lr=0.05"):
        kdpipe.train_base(lr=0.05, **kwargs)
    assert (run / "train.log").read_bytes() == log and not (run / "model.pt").exists()


def test_finished_run_of_an_older_kdpipe_without_a_later_unset_option_is_still_finished(trained, tmp_path):
    run, record = trained
    older = tmp_path / "r8"
    shutil.copytree(run, older)
    stored = json.loads((older / "run.json").read_text())
    unset = [k for k, v in stored["fingerprint"].items() if v is None]
    assert unset  # options left unset are stored as None
    del stored["fingerprint"][unset[0]]  # as written before that option existed
    (older / "run.json").write_text(json.dumps(stored))
    kwargs = dict(data_name="digits", net_name="resnet8", epochs=4, batch_size=32, lr=0.05, cuda=0)
    again = kdpipe.train_base(save_root=str(tmp_path), note="r8", **kwargs)
    assert again["finished_at"] == record["finished_at"]
    del stored["fingerprint"]["lr"]  # a set option missing is a difference
    (older / "run.json").write_text(json.dumps(stored))
    with pytest.raises(KdpipeError, match=r"finished run with other settings \(lr\)"):
        kdpipe.train_base(save_root=str(tmp_path), note="r8", **kwargs)


def test_corrupted_checkpoint_is_reported(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(KdpipeError, match="checkpoint .*checkpoint.pt: unreadable, truncated or corrupted"):
        kdpipe.train_base(data_name="digits", net_name="resnet8", epochs=1, save_root=str(tmp_path), note="bad")


def test_nonfinite_loss_stops_with_epoch_and_batch(tmp_path):
    with pytest.raises(KdpipeError, match=r"non-finite loss at epoch 1, batch \d+/\d+"):
        kdpipe.train_base(
            data_name="digits",
            net_name="resnet8",
            epochs=2,
            lr=1e6,
            momentum=0.0,
            batch_size=64,
            save_root=str(tmp_path),
            note="nan",
        )
    assert not (tmp_path / "nan" / "run.json").exists()
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_training_log_has_no_warnings(tmp_path):
    """The progress line and every other log line are free of library warnings (PyTorch's
    'Converting a tensor with requires_grad=True to a scalar' was in every training log)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning raised while training fails the run
        kdpipe.train_base(
            data_name="digits",
            net_name="resnet8",
            epochs=1,
            batch_size=16,
            train_subset=64,
            print_freq=1,  # the progress line on every step
            save_root=str(tmp_path),
            note="quiet",
            cuda=0,
            threads=1,
        )
    log = (tmp_path / "quiet" / "train.log").read_text()
    assert "step 1/4" in log and "Warning" not in log


def test_milestones_at_or_beyond_the_last_epoch_are_named_in_the_log(tmp_path):
    """A step schedule's milestone the run never reaches (150 of a 200-epoch recipe in a 2-epoch run) leaves the
    lr undropped: accepted, as PyTorch does, and said in the run's log."""
    common = dict(data_name="digits", net_name="resnet8", batch_size=16, train_subset=48, save_root=str(tmp_path))
    kdpipe.train_base(epochs=2, milestones=[1, 2, 150], note="late", **common)
    log = (tmp_path / "late" / "train.log").read_text()
    assert "warning: milestones 2, 150 are not below epochs 2: the lr is never multiplied by 0.1 there" in log
    kdpipe.train_base(epochs=2, milestones=[1], note="reached", **common)
    assert "warning" not in (tmp_path / "reached" / "train.log").read_text()
