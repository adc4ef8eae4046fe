"""Damaged or hostile files a run reads: one KdpipeError line naming the file, nothing run, nothing lost."""

import io
import os
import pickle
import json
import re
import shutil
import warnings

import pytest
import torch

import kdpipe
from conftest import cli_in_process
from kdpipe.checkpoint import safe_load
from kdpipe.engine import Training
from kdpipe.errors import KdpipeError
from kdpipe.models import build_model
from kdpipe.plan import RunId
from kdpipe.summary import summary_rows

TINY = dict(data_name="digits", epochs=1, batch_size=16, train_subset=48, cuda=0, threads=1)
BAD_JSON = r"Expecting property name enclosed in double quotes: line 1 column 2 \(char 1\)"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished base run (resnet8, one epoch): its directory, whose model.pt is the teacher."""
    root = tmp_path_factory.mktemp("teacher")
    kdpipe.train_base(net_name="resnet8", save_root=str(root), note="t8", **TINY)
    return root / "t8"


@pytest.fixture(scope="module")
def cache(teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return build_cache(teacher, root)


def build_cache(teacher, root):
    """The teacher's float16 cache in root/c (what the tests damage)."""
    kdpipe.build_teacher_cache(
        t_model=str(teacher / "model.pt"),
        t_name="resnet8",
        save_root=str(root),
        note="c",
        cache_dtype="float16",
        **{key: TINY[key] for key in ("data_name", "train_subset", "cuda", "threads")},
    )
    return root / "c"


def train_kd(tmp_path, t_model, **flags):
    kwargs = dict(t_name="resnet8", s_name="resnet8", kd_mode="st", save_root=str(tmp_path), note="s", **TINY)
    return kdpipe.train_kd(t_model=str(t_model), **{**kwargs, **flags})


def exact(text: str) -> str:
    """A pytest.raises pattern matching exactly ``text``, the whole message."""
    return "^" + re.escape(text) + "$"


class Payload:
    """Unpickling this runs ``os.system`` (it creates the marker file), if anything lets it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# 1. a damaged teacher, student init or run checkpoint


def test_junk_teacher_is_one_line_naming_the_flag(tmp_path):
    junk = tmp_path / "x.pt"
    junk.write_text("hello\n")  # the legacy unpickler reads 'h', 'e' ... and torch raised KeyError: 101
    with pytest.raises(KdpipeError, match=exact(f"t_model {junk}: unreadable, truncated or corrupted (KeyError: 101)")):
        train_kd(tmp_path, junk)
    with pytest.raises(KdpipeError, match=exact(f"s_init {junk}: unreadable, truncated or corrupted (KeyError: 101)")):
        train_kd(tmp_path, junk, s_init=str(junk))  # s_init is loaded first
    assert not (tmp_path / "s").exists()


def test_every_prefix_of_a_checkpoint_is_one_error_line(tmp_path):
    """Byte prefixes of a real (legacy-format and zip) checkpoint: torch raised KeyError, IndexError, struct.error."""
    state = build_model("resnet8", 10).state_dict()
    causes = set()
    for legacy in (True, False):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
        data = buffer.getvalue()
        path = tmp_path / "prefix.pt"
        for cut in [*range(0, 1200, 5), *range(1200, len(data), 997)]:
            path.write_bytes(data[:cut])
            with pytest.raises(KdpipeError) as err:
                safe_load(path, "t_model")
            message = str(err.value)
            assert "\n" not in message and message.startswith(f"t_model {path}: "), message
            assert "weights_only" not in message
            causes.add(type(err.value.__cause__).__name__)
    assert {"KeyError", "IndexError", "error"} & causes  # the errors torch let through before (struct.error)


def test_damaged_run_checkpoint_is_refused_with_what_to_do(tmp_path):
    run = tmp_path / "b"
    run.mkdir()
    ckpt = run / "checkpoint.pt"
    ckpt.write_text("hello\n")
    tail = "; move it away to train the run from epoch 0"
    for flags in ({}, {"other_settings": "replace"}):
        with pytest.raises(
            KdpipeError, match=exact(f"checkpoint {ckpt}: unreadable, truncated or corrupted (KeyError: 101){tail}")
        ):
            kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="b", **TINY, **flags)
    torch.save([1, 2], ckpt)
    with pytest.raises(
        KdpipeError, match=exact(f"checkpoint {ckpt}: not a kdpipe training checkpoint (a list, not a dict){tail}")
    ):
        kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="b", **TINY)
    assert ckpt.is_file() and not (run / "model.pt").exists()


# 2. a pickle that would run code


@pytest.mark.filterwarnings("error")  # the load shows no torch warning either
def test_code_running_pickle_is_refused_without_torch_advice(tmp_path):
    marker = tmp_path / "ran"
    name = f"{os.system.__module__}.system"  # posix.system
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, evil)  # torch's pickle protocol 2
    evil4 = tmp_path / "evil4.pkl"  # pickle's protocol 4: torch's unpickler stops at its first opcode, after a warning
    evil4.write_bytes(pickle.dumps({"posix": "posix", "x": [Payload(marker)]}, protocol=4))
    refused = f"t_model {evil}: refused: it names {name}, which a weights-only load does not allow (only "
    refused += "tensors and plain containers); kdpipe never runs code from a file"
    with pytest.raises(KdpipeError, match=exact(refused)):
        train_kd(tmp_path, evil)
    # torch stops at a newer protocol's first opcode, before the global: refused without naming it
    refused = f"t_model {evil4}: unreadable, truncated or corrupted, or holding what a weights-only load does not "
    refused += "allow (Unsupported operand 149); kdpipe never runs code from a file"
    with pytest.raises(KdpipeError, match=exact(refused)):
        train_kd(tmp_path, evil4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = ["--t_model", evil4, "--t_name", "resnet8", "--s_name", "resnet8", "--kd_mode", "st"]
        out = cli_in_process("kd", *flags, "--data_name", "digits", "--save_root", tmp_path, "--cuda", "0")
    assert out.returncode == 2 and not caught
    assert out.stderr.strip().splitlines()[-1] == f"kdpipe kd: error: {refused}"
    assert "weights_only" not in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()
    plain4 = tmp_path / "plain4.pkl"  # nothing named, yet torch refuses protocol 4
    plain4.write_bytes(pickle.dumps({"x": [1, 2]}, protocol=4))
    refused = f"paraphraser {plain4}: unreadable, truncated or corrupted, or holding what a weights-only load "
    refused += "does not allow (Unsupported operand 149); kdpipe never runs code from a file"
    with pytest.raises(KdpipeError, match=exact(refused)):
        safe_load(plain4, "paraphraser")


# 3. a damaged run.json


def test_damaged_run_json_is_refused_and_nothing_deleted(teacher, tmp_path):
    run = tmp_path / "t8"
    shutil.copytree(teacher, run)
    model = (run / "model.pt").read_bytes()
    record = run / "run.json"
    todo = (
        f"; kdpipe cannot tell whether the run finished: delete it to rewrite the run's outputs from its "
        f"checkpoint.pt, or delete {run} to train it anew"
    )
    again = dict(net_name="resnet8", save_root=str(tmp_path), note="t8", **TINY)
    record.write_text("{bad\n")
    with pytest.raises(KdpipeError, match=f"^{re.escape(str(record))}: unreadable \\({BAD_JSON}\\){re.escape(todo)}$"):
        kdpipe.train_base(**again)
    record.write_text("[]\n")
    for flags in ({}, {"other_settings": "replace"}):
        with pytest.raises(KdpipeError, match=exact(f"{record}: not a run record (an array, not a JSON object){todo}")):
            kdpipe.train_base(**again, **flags)
    assert (run / "model.pt").read_bytes() == model and record.read_text() == "[]\n"
    record.unlink()  # what the message says to do: the run's outputs are rewritten from its final checkpoint
    assert kdpipe.train_base(**again)["resumed_at_epochs"] == [1]
    assert (run / "model.pt").read_bytes() == model


def test_summary_lists_a_run_with_damaged_run_json_as_failed(teacher, tmp_path):
    damaged = tmp_path / "t8"
    shutil.copytree(teacher, damaged)
    (damaged / "run.json").write_text("{bad\n")
    runs = [
        RunId("train_base", "digits", "baseline", "", "", "resnet8", seed, str(d))
        for seed, d in enumerate((teacher, damaged))
    ]
    ok, failed = summary_rows(runs)
    assert ok["status"] == "ok" and ok["best_val_acc"] != ""
    assert failed["status"] == "failed" and failed["run_dir"] == str(damaged) and failed["best_val_acc"] == ""
    assert re.fullmatch(rf"run.json unreadable \({BAD_JSON}\)", failed["note"])
    (damaged / "run.json").write_text('{"roles": {"net": {"params": "many"}}}')
    assert summary_rows(runs[1:])[0]["note"] == "run.json not a run record (no epochs)"


def test_a_cifar_run_json_without_its_entry_is_a_failed_row_not_a_crash(tmp_path):
    """The summary reads a CIFAR run's ``entry`` to tell which recipe it followed: a run.json that lost it
    (edited by hand) is a damaged record like any other, a failed row, and the summary still gets written."""
    record = {"entry": "base", "method": "baseline", "epochs": 1, "train_time_s": 1.0, "mean_epoch_s": 1.0}
    record["roles"] = {"net": {"params": 1, "best_val_acc": 9.0, "test_acc_at_best": 9.0, "last_test_acc": 9.0}}
    record["settings"], record["config"] = {}, {"epochs": 1}
    run_dir = tmp_path / "results" / "cifar10" / "base" / "resnet20" / "seed0"
    run_dir.mkdir(parents=True)
    run = RunId("train_base", "cifar10", "baseline", "", "", "resnet20", 0, str(run_dir))
    (run_dir / "run.json").write_text(json.dumps(record))
    assert summary_rows([run])[0]["status"] == "ok"
    del record["entry"]
    (run_dir / "run.json").write_text(json.dumps(record))
    row = summary_rows([run])[0]
    assert (row["status"], row["note"]) == ("failed", "run.json not a run record (no entry)")


# 4. a damaged teacher cache


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("manifest {x", re.escape("manifest.json is unreadable (") + BAD_JSON + re.escape(")")),
        ("manifest []", re.escape("manifest.json is not a JSON object (it holds a list)")),
        ("cache.pt list", re.escape("cache.pt holds a list, not a table of teacher logits")),
        (
            "cache.pt short",
            re.escape(
                "cache.pt's logits is a torch.float16 table of shape (47, 25, 10), not (48 training images, 25 views, "
                "dim) in float16 or float32"
            ),
        ),
    ],
    ids=["manifest-not-json", "manifest-array", "table-list", "table-short"],
)
def test_damaged_teacher_cache_is_refused_when_opened(teacher, cache, tmp_path, damage, problem):
    damaged = tmp_path / "c"
    shutil.copytree(cache, damaged)
    if damage.startswith("manifest"):
        (damaged / "manifest.json").write_text(damage.split(" ", 1)[1])
    elif damage == "cache.pt list":
        torch.save([1, 2], damaged / "cache.pt")
    else:  # tensors shorter than the manifest says: was an IndexError deep in training
        table = torch.load(damaged / "cache.pt", weights_only=True)
        torch.save({key: value[:-1] for key, value in table.items()}, damaged / "cache.pt")
    fix = "; delete it and build it again (python -m kdpipe teacher_cache)"
    pattern = "^" + re.escape(f"teacher_cache {damaged}: damaged: ") + problem + re.escape(fix) + "$"
    with pytest.raises(KdpipeError, match=pattern):
        train_kd(tmp_path, teacher / "model.pt", teacher_cache=str(damaged))
    assert not (tmp_path / "s").exists()


def test_building_a_cache_over_a_damaged_one_builds_it_again(teacher, cache, tmp_path):
    damaged = tmp_path / "c"
    shutil.copytree(cache, damaged)
    (damaged / "manifest.json").write_text("{x")
    build_cache(teacher, tmp_path)
    rebuilt, built = (json.loads((c / "manifest.json").read_text()) for c in (damaged, cache))
    assert rebuilt["teacher"] == built["teacher"] and rebuilt["shapes"] == built["shapes"]
    new, old = (torch.load(c / "cache.pt", weights_only=True) for c in (damaged, cache))
    assert all(torch.equal(new[key], old[key]) for key in old)


# 5. a non-finite loss: what the message says is kept


def test_nonfinite_loss_before_any_checkpoint_says_none_was_written(teacher, tmp_path):
    state = torch.load(teacher / "model.pt", weights_only=True)
    nan_teacher = tmp_path / "nan.pt"
    torch.save(
        {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, nan_teacher
    )
    stopped = "; stopped before any checkpoint was written (one is written after each finished epoch)"
    with pytest.raises(KdpipeError, match=r"^non-finite loss at epoch 1, batch 1/3" + re.escape(stopped) + "$"):
        train_kd(tmp_path, nan_teacher)
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_nonfinite_loss_after_a_checkpoint_names_it(tmp_path, monkeypatch):
    begin = Training.begin_epoch

    def begin_then_diverge_in_epoch_2(self):
        begin(self)
        if self.epoch == 1:
            self.bad_step = torch.zeros((), dtype=torch.long)  # as a non-finite loss at the first batch does

    monkeypatch.setattr(Training, "begin_epoch", begin_then_diverge_in_epoch_2)
    ckpt = tmp_path / "b" / "checkpoint.pt"
    kept = f"; stopped, the last good checkpoint (epoch 1) is kept in {ckpt}"
    with pytest.raises(KdpipeError, match=r"^non-finite loss at epoch 2, batch 1/3" + re.escape(kept) + "$"):
        kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="b", **{**TINY, "epochs": 2})
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_a_weights_file_must_be_a_state_dict_of_tensors(tmp_path):
    # a dict of plain values loads weights-only, then failed on .shape (AttributeError)
    odd = tmp_path / "odd.pt"
    torch.save({"conv1.weight": 5}, odd)
    with pytest.raises(
        KdpipeError,
        match=exact(
            f"t_model {odd}: not a state dict of tensors (a dict with non-tensor values); expected a kdpipe model.pt"
        ),
    ):
        train_kd(tmp_path, odd)
    torch.save([torch.zeros(1)], odd)
    expected = "a paraphraser.pt of python -m kdpipe ft_paraphraser"
    from kdpipe.methods.ft import load_paraphraser

    with pytest.raises(
        KdpipeError, match=exact(f"paraphraser {odd}: not a state dict of tensors (a list); expected {expected}")
    ):
        load_paraphraser(odd, 64, 0.5)


def test_atomic_save_streams_and_a_full_disk_is_the_oserror(tmp_path, monkeypatch):
    """atomic_save streams torch.save into its temporary file (the bytes a save into a buffer gives); a write the
    disk refuses half-way -- which torch's zip writer reports as a RuntimeError ("unexpected pos") -- is the
    OSError (errno 28, one line at the CLI), and neither the temporary file nor the target is left."""
    from kdpipe import checkpoint

    table = {"logits": torch.arange(6000, dtype=torch.float16).view(20, 30, 10)}
    buffer = io.BytesIO()
    torch.save(table, buffer)
    checkpoint.atomic_save(table, tmp_path / "cache.pt")
    assert (tmp_path / "cache.pt").read_bytes() == buffer.getvalue()

    class Full(io.RawIOBase):  # a disk that takes 4 kB
        def __init__(self, name):
            self.name, self.size = name, 0
            open(name, "wb").close()

        def writable(self):
            return True

        def write(self, data):
            self.size += len(data)
            if self.size > 4096:
                raise OSError(28, "No space left on device", str(self.name))
            return len(data)

        def fileno(self):
            raise OSError("no descriptor")

    monkeypatch.setattr(checkpoint, "open", lambda name, mode: Full(name), raising=False)
    with pytest.raises(OSError) as raised:
        checkpoint.atomic_save(table, tmp_path / "full" / "cache.pt")
    assert raised.value.errno == 28 and not isinstance(raised.value, RuntimeError)
    assert list((tmp_path / "full").iterdir()) == []
