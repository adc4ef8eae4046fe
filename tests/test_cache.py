"""The exact teacher cache: contents, refusal of mismatches, and equality with the live teacher."""

import json

import pytest
import torch

import kdpipe
from kdpipe.cache import compute_table
from kdpipe.data import Normalizer, load_data
from kdpipe.errors import KdpipeError
from kdpipe.models import build_model

TINY = dict(data_name="digits", batch_size=16, lr=0.05, train_subset=40, cuda=0, threads=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    kdpipe.train_base(net_name="resnet14", save_root=str(root), note="t", epochs=2, **{**TINY, "train_subset": 200})
    return root / "t" / "model.pt"


@pytest.fixture(scope="module")
def cache32(teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    kdpipe.build_teacher_cache(
        t_model=str(teacher),
        t_name="resnet14",
        save_root=str(root),
        note="c",
        cache_dtype="float32",
        **{k: TINY[k] for k in ("data_name", "train_subset", "cuda")},
    )
    return root / "c"


def test_table_holds_teacher_output_of_every_view(teacher, cache32):
    table = torch.load(cache32 / "cache.pt", weights_only=True)
    assert sorted(table) == ["logits"]  # the embeddings in a file of their own
    table.update(torch.load(cache32 / "embedding.pt", weights_only=True))
    manifest = json.loads((cache32 / "manifest.json").read_text())
    assert table["logits"].shape == (40, 25, 10) and table["embedding"].shape == (40, 25, 64)
    assert manifest["teacher"]["sha256"] and manifest["data"]["views"]["num_views"] == 25
    # independent check: per-sample teacher forward on the reference augmentation of a few (image, view) pairs
    data = load_data("digits")
    model = build_model("resnet14", 10)
    model.load_state_dict(torch.load(teacher, weights_only=True))
    model.eval()
    normalize = Normalizer(data.mean, data.std, torch.device("cpu"))
    for image, view in [(0, 0), (3, 12), (39, 24), (17, 7)]:
        x = normalize(data.augmentation.apply_reference(data.train_x[image], view)[None])
        with torch.no_grad():
            taps = model(x)
        assert torch.allclose(table["logits"][image, view], taps.logits[0], atol=1e-4)
        assert torch.allclose(table["embedding"][image, view], taps.embedding[0], atol=1e-4)


def test_fp16_cache_and_no_embeddings(teacher, tmp_path):
    manifest = kdpipe.build_teacher_cache(
        t_model=str(teacher),
        t_name="resnet14",
        save_root=str(tmp_path),
        note="c",
        embeddings=False,
        data_name="digits",
        train_subset=40,
    )
    table = torch.load(tmp_path / "c" / "cache.pt", weights_only=True)
    assert table["logits"].dtype == torch.float16 and "embedding" not in table
    assert manifest["entries"] == ["logits"]
    # a student reading embeddings refuses it
    with pytest.raises(KdpipeError, match="holds no embeddings"):
        kdpipe.train_kd(
            t_model=str(teacher),
            t_name="resnet14",
            s_name="resnet8",
            kd_mode="rkd",
            epochs=1,
            teacher_cache=str(tmp_path / "c"),
            save_root=str(tmp_path),
            note="s",
            **TINY,
        )


def _weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("mode", ["st", "rkd"])
def test_cached_training_equals_live_teacher(tmp_path, teacher, cache32, mode):
    args = dict(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode=mode,
        epochs=2,
        save_root=str(tmp_path),
        **TINY,
    )
    live = kdpipe.train_kd(note="live", **args)
    cached = kdpipe.train_kd(note="cached", teacher_cache=str(cache32), **args)
    assert live["info"]["teacher_source"] == "live" and cached["info"]["teacher_source"] == "cache"
    a, b = _weights(tmp_path / "live" / "model.pt"), _weights(tmp_path / "cached" / "model.pt")
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4), key
    assert cached["roles"]["student"]["last_test_acc"] == pytest.approx(
        live["roles"]["student"]["last_test_acc"], abs=0.5
    )


def test_cached_crd_runs(tmp_path, teacher, cache32):
    record = kdpipe.train_crd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        nce_n=16,
        epochs=1,
        teacher_cache=str(cache32),
        save_root=str(tmp_path),
        note="crd",
        **TINY,
    )
    assert record["info"]["teacher_source"] == "cache" and "teacher_cache" in record["inputs"]


def test_cache_refused_for_other_teacher(tmp_path, teacher, cache32):
    other = tmp_path / "other.pt"
    state = torch.load(teacher, weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, other)
    with pytest.raises(KdpipeError, match="built for another teacher checkpoint"):
        kdpipe.train_kd(
            t_model=str(other),
            t_name="resnet14",
            s_name="resnet8",
            kd_mode="st",
            epochs=1,
            teacher_cache=str(cache32),
            save_root=str(tmp_path),
            note="s",
            **TINY,
        )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "change, what",
    [
        (dict(train_subset=30), "num_train"),
        (dict(split_seed=1), "training images"),
    ],
)
def test_cache_refused_for_other_data(tmp_path, teacher, cache32, change, what):
    args = dict(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="st",
        epochs=1,
        teacher_cache=str(cache32),
        save_root=str(tmp_path),
        note="s",
        **TINY,
    )
    args.update(change)
    with pytest.raises(KdpipeError, match=f"built for another {what}"):
        kdpipe.train_kd(**args)


def test_cache_refused_for_other_views_or_normalisation(tmp_path, teacher, cache32):
    manifest = json.loads((cache32 / "manifest.json").read_text())
    for key, value, what in [
        ("views", {"pad": 4, "pad_mode": "reflect", "flip": True, "num_views": 162}, "view definition"),
        ("mean", [0.5, 0.5, 0.5], "normalisation"),
    ]:
        bad = tmp_path / f"bad-{key}"
        bad.mkdir()
        (bad / "cache.pt").write_bytes((cache32 / "cache.pt").read_bytes())
        (bad / "manifest.json").write_text(json.dumps({**manifest, "data": {**manifest["data"], key: value}}))
        with pytest.raises(KdpipeError, match=f"built for another {what}"):
            kdpipe.train_kd(
                t_model=str(teacher),
                t_name="resnet14",
                s_name="resnet8",
                kd_mode="st",
                epochs=1,
                teacher_cache=str(bad),
                save_root=str(tmp_path),
                note="s",
                **TINY,
            )


def test_feature_modes_refuse_a_cache(tmp_path, teacher, cache32):
    with pytest.raises(KdpipeError, match="kd_mode at reads the teacher's stages; a cache serves only the modes"):
        kdpipe.train_kd(
            t_model=str(teacher),
            t_name="resnet14",
            s_name="resnet8",
            kd_mode="at",
            epochs=1,
            teacher_cache=str(cache32),
            save_root=str(tmp_path),
            note="s",
            **TINY,
        )


def test_compute_table_batching_is_irrelevant(teacher):
    data = load_data("digits")
    data.train_x, data.train_y = data.train_x[:10], data.train_y[:10]
    model = build_model("resnet14", 10)
    model.load_state_dict(torch.load(teacher, weights_only=True))
    a = compute_table(model, data, torch.device("cpu"), True, torch.float32, batch_size=3)
    b = compute_table(model, data, torch.device("cpu"), True, torch.float32, batch_size=1024)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)


def test_rebuild_killed_between_files_leaves_no_stale_manifest(teacher, tmp_path, monkeypatch):
    import kdpipe.cache as cache_module

    args = dict(
        t_model=str(teacher),
        t_name="resnet14",
        save_root=str(tmp_path),
        note="c",
        **{k: TINY[k] for k in ("data_name", "train_subset", "cuda")},
    )
    kdpipe.build_teacher_cache(cache_dtype="float16", **args)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        kdpipe.build_teacher_cache(cache_dtype="float32", **args)  # killed after cache.pt, before manifest.json
    data = load_data("digits", train_subset=40)
    with pytest.raises(KdpipeError, match="no manifest.json"):
        cache_module.load_cache(tmp_path / "c", teacher, data, torch.device("cpu"), need_embedding=False)


def test_logits_reader_keeps_no_embeddings(cache32, teacher):
    from kdpipe.cache import load_cache

    data = load_data("digits", train_subset=40)
    cpu = torch.device("cpu")
    assert sorted(load_cache(cache32, teacher, data, cpu, need_embedding=False).tables) == ["logits"]
    assert sorted(load_cache(cache32, teacher, data, cpu, need_embedding=True).tables) == ["embedding", "logits"]


def test_embeddings_added_or_removed_leave_logits_readers_standing(teacher, tmp_path):
    """A student of the logits alone is tied to the cache by the logits' manifest: a mode that reads embeddings
    joining the grid rebuilds the cache with them (embedding.pt, and logits.json: the logits-only manifest, the
    same bytes) and the st student's finished run still stands (it would train again, or be refused, were its
    input another); rkd is tied to manifest.json."""
    import hashlib

    from kdpipe.checkpoint import sha256_file

    cache = tmp_path / "c"
    common = dict(t_model=str(teacher), t_name="resnet14", save_root=str(tmp_path), note="c", cache_dtype="float32")
    common.update({k: TINY[k] for k in ("data_name", "train_subset", "cuda")})
    kdpipe.build_teacher_cache(embeddings=False, **common)
    logits_only = (cache / "manifest.json").read_bytes()
    assert not (cache / "logits.json").exists() and not (cache / "embedding.pt").exists()
    student = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", epochs=1, teacher_cache=str(cache))
    student.update({**TINY, "save_root": str(tmp_path)})
    st = kdpipe.train_kd(kd_mode="st", note="st", **student)
    assert st["inputs"]["teacher_cache"]["sha256"] == hashlib.sha256(logits_only).hexdigest()
    kdpipe.build_teacher_cache(embeddings=True, **common)  # rkd joins: rebuilt with embeddings
    assert (cache / "logits.json").read_bytes() == logits_only
    assert sorted(torch.load(cache / "cache.pt", weights_only=True)) == ["logits"]
    again = kdpipe.train_kd(kd_mode="st", note="st", **student)  # other_settings refuse: a changed input raises
    assert again["finished_at"] == st["finished_at"]
    rkd = kdpipe.train_kd(kd_mode="rkd", note="rkd", **student)
    assert rkd["inputs"]["teacher_cache"] == {
        "path": str(cache / "manifest.json"),
        "sha256": sha256_file(cache / "manifest.json"),
    }
    # embeddings dropped again (a logits-only rebuild): the st run stands on the manifest it was made with
    for name in ("manifest.json", "logits.json", "embedding.pt"):
        (cache / name).unlink()
    kdpipe.build_teacher_cache(embeddings=False, **common)
    assert (cache / "manifest.json").read_bytes() == logits_only
    assert kdpipe.train_kd(kd_mode="st", note="st", **student)["finished_at"] == st["finished_at"]


def test_cache_of_the_earlier_layout_is_read(teacher, cache32, tmp_path):
    """A cache built before 2026-11-28 holds its embeddings in cache.pt: both readers take it as it is."""
    from kdpipe.cache import load_cache

    old = tmp_path / "old"
    old.mkdir()
    table = torch.load(cache32 / "cache.pt", weights_only=True)
    table.update(torch.load(cache32 / "embedding.pt", weights_only=True))
    torch.save(table, old / "cache.pt")
    (old / "manifest.json").write_text((cache32 / "manifest.json").read_text())
    data = load_data("digits", train_subset=40)
    cpu = torch.device("cpu")
    both = load_cache(old, teacher, data, cpu, need_embedding=True).tables
    assert sorted(both) == ["embedding", "logits"] and torch.equal(both["embedding"], table["embedding"])
    assert sorted(load_cache(old, teacher, data, cpu, need_embedding=False).tables) == ["logits"]
