import numpy as np
import pytest
import torch

from conftest import write_cifar
from kdpipe.data import Augmentation, Normalizer, epoch_plan, load_data
from kdpipe.errors import KdpipeError

CIFAR_AUG = Augmentation(pad=4, pad_mode="reflect", flip=True)
DIGITS_AUG = Augmentation(pad=2, pad_mode="constant", flip=False)


def test_view_counts():
    assert CIFAR_AUG.num_views == 9 * 9 * 2 == 162
    assert DIGITS_AUG.num_views == 5 * 5 == 25


@pytest.mark.parametrize("aug", [CIFAR_AUG, DIGITS_AUG])
def test_view_id_roundtrip(aug):
    ids = torch.arange(aug.num_views)
    dx, dy, flip = aug.decode(ids)
    assert torch.equal(aug.encode(dx, dy, flip), ids)
    assert int(dx.max()) == int(dy.max()) == 2 * aug.pad
    assert set(flip.tolist()) == ({0, 1} if aug.flip else {0})
    # every (dx, dy, flip) combination appears exactly once
    assert len({(a, b, c) for a, b, c in zip(dx.tolist(), dy.tolist(), flip.tolist())}) == aug.num_views


@pytest.mark.parametrize("aug, size", [(CIFAR_AUG, 32), (DIGITS_AUG, 16), (Augmentation(3, "reflect", True), 12)])
def test_batched_augmentation_equals_per_sample_reference(aug, size):
    g = torch.Generator().manual_seed(0)
    n = aug.num_views
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    views = torch.randperm(n, generator=g)  # every view once, on different images
    batched = aug.apply(aug.pad_images(images), views)
    assert batched.dtype == torch.uint8 and batched.shape == images.shape
    for i in range(n):
        assert torch.equal(batched[i], aug.apply_reference(images[i], int(views[i]))), f"view {int(views[i])}"


def test_reference_semantics_by_hand():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    aug = Augmentation(pad=1, pad_mode="constant", flip=True)
    centre = aug.encode(torch.tensor(1), torch.tensor(1), torch.tensor(0))
    assert torch.equal(aug.apply(aug.pad_images(img), centre.view(1)), img)
    flipped = aug.encode(torch.tensor(1), torch.tensor(1), torch.tensor(1))
    assert torch.equal(aug.apply(aug.pad_images(img), flipped.view(1)), img.flip(-1))
    top_left = aug.encode(torch.tensor(0), torch.tensor(0), torch.tensor(0))
    out = aug.apply(aug.pad_images(img), top_left.view(1))[0, 0]
    assert out[0].tolist() == [0, 0, 0, 0] and out[:, 0].tolist() == [0, 0, 0, 0]
    assert out[1, 1:].tolist() == [0, 1, 2]


def test_epoch_plan_replays_and_varies():
    a = epoch_plan(3, 5, 100, CIFAR_AUG)
    b = epoch_plan(3, 5, 100, CIFAR_AUG)
    assert torch.equal(a.order, b.order) and torch.equal(a.view_ids, b.view_ids)
    assert sorted(a.order.tolist()) == list(range(100))
    assert int(a.view_ids.max()) < 162 and int(a.view_ids.min()) >= 0
    c = epoch_plan(3, 6, 100, CIFAR_AUG)
    d = epoch_plan(4, 5, 100, CIFAR_AUG)
    assert not torch.equal(a.view_ids, c.view_ids) and not torch.equal(a.view_ids, d.view_ids)
    assert not torch.equal(a.order, c.order)
    # global RNG state does not influence the plan
    torch.manual_seed(123)
    e = epoch_plan(3, 5, 100, CIFAR_AUG)
    assert torch.equal(a.view_ids, e.view_ids)


def test_digits_split_fixed_disjoint_and_upscaled():
    d1 = load_data("digits", val_size=0.1)
    d2 = load_data("digits", val_size=0.1)
    assert d1.train_x.dtype == torch.uint8 and d1.image_shape == (3, 16, 16)
    assert len(d1.train_y) + len(d1.val_y) + len(d1.test_y) == 1797
    assert len(d1.test_y) == 359 and len(d1.val_y) == round(0.1 * (1797 - 359))
    assert torch.equal(d1.train_x, d2.train_x) and torch.equal(d1.test_y, d2.test_y)
    assert d1.augmentation == DIGITS_AUG and d1.num_classes == 10
    # split is independent of the training seed but follows split_seed
    d3 = load_data("digits", val_size=0.1, split_seed=1)
    assert not torch.equal(d1.test_y, d3.test_y)
    assert set(d1.train_y.tolist()) == set(range(10))


def test_digits_are_scikit_learns_without_importing_it(monkeypatch):
    """bundled_digits reads load_digits' own file, value for value, and does not import scikit-learn (2-4 s per
    training process); where the file is not found it falls back to load_digits."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    import kdpipe.data as kd_data

    pixels, target = kd_data.bundled_digits()
    bunch = load_digits()
    assert pixels.dtype == bunch.images.dtype and np.array_equal(pixels, bunch.images)
    assert np.array_equal(target, bunch.target) and pixels.shape == (1797, 8, 8)
    code = "import sys; from kdpipe.data import load_data; load_data('digits'); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    spec = type("Spec", (), {"submodule_search_locations": ["/nonexistent"]})()
    monkeypatch.setattr(kd_data.importlib.util, "find_spec", lambda name: spec)
    fallback_pixels, fallback_target = kd_data.bundled_digits()
    assert np.array_equal(fallback_pixels, bunch.images) and np.array_equal(fallback_target, bunch.target)
    monkeypatch.setattr(kd_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KdpipeError, match="scikit-learn is not installed"):
        kd_data.bundled_digits()


def test_digits_split_indices_are_disjoint():
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = load_data("digits", val_size=0.1)
    # recover which original images landed in each split by matching the upscaled pixels
    import torch.nn.functional as F

    up = F.interpolate(torch.from_numpy(raw.images).float()[:, None] * (255 / 16), size=(16, 16), mode="bilinear")
    up = up.round().clamp(0, 255).to(torch.uint8)[:, 0].reshape(1797, -1)
    lookup = {}
    for i, row in enumerate(up):
        lookup.setdefault(bytes(row.numpy()), set()).add(i)

    def ids(x):
        out = set()
        for img in x[:, 0].reshape(len(x), -1):
            out |= lookup[bytes(img.numpy())]
        return out

    tr, va, te = ids(data.train_x), ids(data.val_x), ids(data.test_x)
    assert len(tr | va | te) == 1797
    # duplicate images exist in digits; apart from those, no index is shared
    dupes = {i for s in lookup.values() if len(s) > 1 for i in s}
    assert not ((tr & te) - dupes) and not ((tr & va) - dupes) and not ((va & te) - dupes)


def test_cifar_loader_reads_torchvision_format(tmp_path):
    arrays = write_cifar(tmp_path, "cifar10", n_train=40, n_test=20)
    data = load_data("cifar10", tmp_path, val_size=10)
    assert data.num_classes == 10 and data.image_shape == (3, 32, 32)
    assert len(data.train_y) == 30 and len(data.val_y) == 10 and len(data.test_y) == 20
    assert torch.equal(data.test_x, torch.from_numpy(arrays["test"]).view(20, 3, 32, 32))
    assert data.test_y.tolist() == arrays["test_y"]
    train_all = torch.from_numpy(arrays["train"]).view(40, 3, 32, 32)
    merged = torch.cat([data.train_x, data.val_x])
    assert sorted(bytes(x.numpy()) for x in merged) == sorted(bytes(x.numpy()) for x in train_all)
    assert data.mean == (0.4914, 0.4822, 0.4465)
    assert data.augmentation == CIFAR_AUG
    assert data.classes[3] == "c3"


def test_cifar100_loader(tmp_path):
    arrays = write_cifar(tmp_path, "cifar100", n_train=30, n_test=10)
    data = load_data("cifar100", tmp_path, val_size=0.2)
    assert data.num_classes == 100 and len(data.val_y) == 6 and len(data.train_y) == 24
    assert data.test_y.tolist() == arrays["test_y"]
    assert data.std == (0.2673, 0.2564, 0.2762)


def test_official_cifar_files_are_told_by_their_md5(tmp_path, monkeypatch):
    """Runs on files other than the CIFAR page's (edited, re-encoded, another release) record data.official
    false, and the summary then sets no published number beside them (test_report_tables)."""
    import hashlib

    from kdpipe import data as kd_data

    write_cifar(tmp_path, "cifar100", n_train=12, n_test=4)
    data = load_data("cifar100", tmp_path, val_size=0)
    assert data.official is False and data.describe()["official"] is False
    assert "official" not in load_data("digits").describe()  # only CIFAR has official files
    folder = tmp_path / "cifar-100-python"
    md5 = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in ("train", "test")}
    monkeypatch.setitem(kd_data.CIFAR_MD5, "cifar100", md5)  # as if these were the official files
    assert load_data("cifar100", tmp_path, val_size=0).official is True
    (folder / "test").write_bytes((folder / "test").read_bytes())  # the same bytes: still official
    assert load_data("cifar100", tmp_path, val_size=0).official is True
    write_cifar(tmp_path, "cifar100", n_train=12, n_test=4, seed=1)  # other images
    assert load_data("cifar100", tmp_path, val_size=0).official is False


def test_crop_padding_zeros_pads_with_black_as_torchvisions_random_crop(tmp_path):
    """RepDistiller's and mdistiller's RandomCrop(32, padding=4) pads the uint8 image with 0 before
    normalising; KD-Zoo's Pad(4, padding_mode="reflect") mirrors it (kdpipe's CIFAR default)."""
    write_cifar(tmp_path, "cifar100", n_train=12, n_test=4)
    reflect = load_data("cifar100", tmp_path, val_size=0)
    zeros = load_data("cifar100", tmp_path, val_size=0, crop_padding="zeros")
    assert (
        reflect.augmentation == CIFAR_AUG
        and load_data("cifar100", tmp_path, crop_padding="reflect").augmentation == CIFAR_AUG
    )
    assert zeros.augmentation.pad_mode == "constant" and zeros.augmentation.num_views == 162
    image = zeros.train_x[:1]
    padded = zeros.augmentation.pad_images(image)[0]
    assert padded.shape == (3, 40, 40) and torch.equal(padded[:, 4:36, 4:36], image[0])
    border = torch.ones(40, 40, dtype=torch.bool)
    border[4:36, 4:36] = False
    assert int(padded[:, border].max()) == 0
    mirrored = reflect.augmentation.pad_images(image)[0]
    assert torch.equal(mirrored[:, 4, 0:4], image[0, :, 0, 1:5].flip(-1))  # reflect: columns 4, 3, 2, 1
    with pytest.raises(KdpipeError, match="crop_padding: got 'black'; allowed: auto, reflect, zeros"):
        load_data("cifar100", tmp_path, crop_padding="black")


def test_missing_cifar_names_path_and_download(tmp_path):
    with pytest.raises(KdpipeError) as err:
        load_data("cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg and "--download" in msg and "nowhere" in msg


def test_corrupt_cifar_file(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(KdpipeError, match="unreadable"):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize("shape", [(8, 32, 32, 3), (8 * 3, 1024), (8 * 3072,)])
def test_cifar_data_of_another_shape_is_refused_not_reshaped(tmp_path, shape):
    """Images stored height x width x channels (or grey rows, or flat) hold as many bytes as CIFAR's rows of
    3072 values; reshaped to (N, 3, 32, 32) they were accepted as images of scrambled channels."""
    import pickle

    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": np.zeros(shape, np.uint8), "labels": [0] * 8}))
    with pytest.raises(KdpipeError) as err:
        load_data("cifar10", tmp_path, val_size=0)
    assert f"data_batch_1: 'data' is uint8 of shape {shape}" in str(err.value)
    assert "rows of 3072 byte values" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(KdpipeError, match="data_name.*mnist.*cifar10"):
        load_data("mnist")


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}", val_size=2)
    assert data.num_classes == 2 and data.classes == ["cat", "dog"]
    assert data.image_shape == (3, 32, 32)
    assert len(data.train_y) == 10 and len(data.val_y) == 2 and len(data.test_y) == 4
    assert data.augmentation.num_views == 162


def test_imagefolder_without_split_and_errors(tmp_path):
    from PIL import Image

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.jpg")
    data = load_data(f"imagefolder:{tmp_path}", val_size=0.1)
    assert data.num_classes == 3 and len(data.test_y) == 3
    with pytest.raises(KdpipeError, match="no such directory"):
        load_data(f"imagefolder:{tmp_path}/missing")


def test_imagefolder_image_claiming_too_many_pixels_is_one_line(tmp_path):
    """A PNG whose header claims 20000 x 20000 pixels: Pillow's DecompressionBombError (not an OSError) was a
    traceback."""
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    big = tmp_path / "a" / "big.png"
    big.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    with pytest.raises(KdpipeError) as err:
        load_data(f"imagefolder:{tmp_path}")
    message = str(err.value)
    assert f"cannot read image {big}: Image size (400000000 pixels) exceeds limit" in message and "\n" not in message


def test_imagefolder_test_class_that_train_lacks_is_refused(tmp_path):
    """test/bird/ beside train/{a,b}/: its images were silently left out of the test set."""
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("test", ("a", "b", "bird"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    with pytest.raises(KdpipeError) as err:
        load_data(f"imagefolder:{tmp_path}")
    assert str(err.value) == (
        f"data_name imagefolder:{tmp_path}: test/ has class folder(s) bird that train/ lacks; "
        "its classes must be train/'s (a, b)"
    )


def test_normalizer_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out = Normalizer(mean, std, torch.device("cpu"))(x)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_imagefolder_image_size_sets_views(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (80, 70), (i * 40, 10, 0)).save(tmp_path / cls / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}", val_size=0.1, image_size=64)
    assert data.image_shape == (3, 64, 64)
    assert data.augmentation.pad == 8 and data.augmentation.num_views == 17 * 17 * 2 == 578
    with pytest.raises(KdpipeError, match="image_size: applies to imagefolder datasets only"):
        load_data("digits", image_size=64)


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled by plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    import pickle

    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _RunsCode(marker), "labels": [0]}))
    with pytest.raises(KdpipeError) as err:
        load_data("cifar10", tmp_path, val_size=0)
    message = str(err.value)
    assert "data_batch_1" in message and "posix.system" in message and "\n" not in message
    assert not marker.exists()


def test_cifar_pickles_of_every_protocol_and_numpy1_names_load(tmp_path):
    """Real CIFAR files are Python 2 pickles that name numpy.core.multiarray._reconstruct."""
    import io
    import pickle

    from kdpipe.data import _read_pickle

    data = np.arange(24, dtype=np.uint8).reshape(2, 12)
    for protocol in (2, 4, 5):
        raw = pickle.dumps({"data": data, "labels": [3, 4], "filenames": [b"a.png"]}, protocol=protocol)
        if protocol == 2:
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray" in raw
        path = tmp_path / f"batch{protocol}"
        path.write_bytes(raw)
        entry = _read_pickle(path)
        assert np.array_equal(entry["data"], data) and entry["labels"] == [3, 4]
        assert pickle.load(io.BytesIO(raw))["labels"] == [3, 4]


def _crafted_batch(kind: str) -> bytes:
    """A CIFAR batch pickled as numpy pickles it, then altered as a crafted file may be."""
    import pickle

    raw = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2)
    swaps = {
        # the uint8 dtype's BUILD state two items short: numpy's own unpickling corrupts memory (a segfault)
        "dtype-state": (b"X\x01\x00\x00\x00|q\x11NNNJ", b"X\x01\x00\x00\x00|q\x11NJ"),
        "codec": (b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00nosuch"),  # bytes "encoded" by any codec
        "object-dtype": (b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00O8"),
        "struct-dtype": (b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00V1"),
    }
    old, new = swaps[kind]
    assert raw.count(old) == 1
    return raw.replace(old, new)


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("dtype-state", "is not a plain dtype's"),
        ("codec", "refused _codecs.encode to 'nosuch'"),
        ("object-dtype", "refused numpy dtype object"),
        ("struct-dtype", "refused numpy dtype |V1"),
    ],
)
def test_crafted_numpy_records_in_a_cifar_batch_are_one_line_not_a_crash(tmp_path, kind, problem):
    """numpy's dtype and array constructors trust the state a pickle hands them: a dtype state one item short
    crashed the process (exit 139) before any line; the batch's arrays are now made by np.frombuffer alone."""
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(_crafted_batch(kind))
    with pytest.raises(KdpipeError) as err:
        load_data("cifar10", tmp_path, val_size=0)
    message = str(err.value)
    assert "data_batch_2" in message and problem in message and "\n" not in message, message


def test_cifar_arrays_of_every_order_byte_order_and_python2_strings_load(tmp_path):
    """What numpy's unpickling made, the checked records make: Fortran order, big-endian, bool, scalars, and
    a Python 2 pickle's array bytes as text (real CIFAR files)."""
    import pickle

    from kdpipe.data import _read_pickle

    arrays = [np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3))]
    value = {"a": arrays, "b": np.array([True, False]), "s": np.int64(5), "t": (arrays[0],)}
    for protocol in (2, 4, 5):
        (tmp_path / "p").write_bytes(pickle.dumps(value, protocol=protocol))
        got = _read_pickle(tmp_path / "p")
        for a, b in zip(got["a"] + [got["b"], got["t"][0]], arrays + [value["b"], arrays[0]]):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert got["s"] == 5 and got["s"].dtype == np.int64
    py2 = (  # what Python 2 wrote: the array's bytes a str (SHORT_BINSTRING), read back as latin-1 text
        b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tb\x89U\x06\x00\xc8\xff\x07\x80\ttbU\x06labels](K\x01K\x02eu."
    )
    (tmp_path / "py2").write_bytes(py2)
    got, ref = _read_pickle(tmp_path / "py2"), pickle.loads(py2, encoding="latin1")
    assert got["data"].dtype == ref["data"].dtype and np.array_equal(got["data"], ref["data"])
    assert got["data"].tolist() == [[0, 200, 255], [7, 128, 9]] and got["labels"] == [1, 2]


def test_cli_refuses_a_crafted_dataset_file_in_one_line(tmp_path):
    import pickle

    from conftest import cli, tiny_cli_flags

    write_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({"data": _RunsCode(marker), "labels": [0]})
    )
    flags = tiny_cli_flags(tmp_path / "runs")
    flags[flags.index("digits")] = "cifar10"
    out = cli("base", "--net_name", "resnet8", *flags, "--img_root", str(tmp_path / "data"), "--val_size", "0")
    assert out.returncode != 0 and not marker.exists()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "test_batch" in lines[0] and "refused" in lines[0]
    assert not (tmp_path / "runs" / "cli").exists()


@pytest.mark.parametrize("note", ["../outside", "/tmp/abs", "a/../../b", "~/x", "."])
def test_note_cannot_leave_save_root(tmp_path, note):
    from conftest import cli, cli_in_process, tiny_cli_flags

    flags = tiny_cli_flags(tmp_path / "runs", note=note)
    # one note through ``python -m kdpipe``, the others through the same parser and check in this process
    out = (cli if note == "../outside" else cli_in_process)("base", "--net_name", "resnet8", *flags)
    assert out.returncode != 0
    assert "note: got" in out.stderr and "inside --save_root" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outside").exists() and not (tmp_path / "runs").exists()
