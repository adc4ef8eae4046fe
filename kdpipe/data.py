"""Datasets held in memory as uint8 tensors, with batched, replayable augmentation.

Every dataset is split into train / val / test once, with a fixed split seed, so that
all runs (every method and seed) see the same images in the same roles.  The training
augmentation is a crop of a padded image plus an optional horizontal flip; each
augmented sample is named by a *view id* that encodes (crop offset x, crop offset y,
flip).  View ids for an epoch come from a generator seeded by (seed, epoch), so any
epoch's exact inputs can be replayed later (the teacher cache keys on them).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import KdpipeError
from .options import CROP_PADDINGS, val_size_rule

log = logging.getLogger(__name__)

DATASET_NAMES = ("cifar10", "cifar100", "digits", "imagefolder:<path>")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
DIGITS_SIZE = 16
IMAGEFOLDER_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Augmentation:
    """Pad by ``pad`` pixels (``pad_mode``), crop back to the input size, maybe flip.

    View id layout: ``((dy * positions) + dx) * flips + flip`` with
    ``positions = 2 * pad + 1`` and ``flips = 2 if flip else 1``.
    """

    pad: int
    pad_mode: str  # "reflect" or "constant" (zeros)
    flip: bool

    @property
    def positions(self) -> int:
        return 2 * self.pad + 1

    @property
    def flips(self) -> int:
        return 2 if self.flip else 1

    @property
    def num_views(self) -> int:
        return self.positions**2 * self.flips

    def describe(self) -> dict:
        return {"pad": self.pad, "pad_mode": self.pad_mode, "flip": self.flip, "num_views": self.num_views}

    def decode(self, view_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """View ids -> (dx, dy, flip) crop offsets into the padded image."""
        flip = view_ids % self.flips
        position = view_ids // self.flips
        return position % self.positions, position // self.positions, flip

    def encode(self, dx: Tensor, dy: Tensor, flip: Tensor) -> Tensor:
        return (dy * self.positions + dx) * self.flips + flip

    def pad_images(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, H + 2 pad, W + 2 pad), done once per run."""
        if self.pad == 0:
            return images
        padded = []
        for chunk in images.split(4096):  # bounded float memory
            padded.append(F.pad(chunk.float(), [self.pad] * 4, mode=self.pad_mode).to(torch.uint8))
        return torch.cat(padded)

    def apply(self, padded: Tensor, view_ids: Tensor) -> Tensor:
        """Crop (and flip) a batch of padded uint8 images by view id, as one gather.

        ``padded``: (B, C, H + 2p, W + 2p); returns (B, C, H, W) on the same device.
        """
        b, c, hp, wp = padded.shape
        h, w = hp - 2 * self.pad, wp - 2 * self.pad
        device = padded.device
        view_ids = view_ids.to(device)
        dx, dy, flip = self.decode(view_ids)
        col = torch.arange(w, device=device)
        cols = torch.where(flip[:, None].bool(), dx[:, None] + (w - 1 - col), dx[:, None] + col)
        rows = dy[:, None] + torch.arange(h, device=device)
        batch = torch.arange(b, device=device)[:, None, None, None]
        chan = torch.arange(c, device=device)[None, :, None, None]
        return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def apply_reference(self, image: Tensor, view_id: int) -> Tensor:
        """One image, the obvious way: pad, slice, flip.  Used to test :meth:`apply`."""
        dx, dy, flip = (int(v) for v in self.decode(torch.tensor(view_id)))
        h, w = image.shape[-2:]
        padded = image.float()
        if self.pad:
            padded = F.pad(padded[None], [self.pad] * 4, mode=self.pad_mode)[0]
        crop = padded[:, dy : dy + h, dx : dx + w]
        if flip:
            crop = torch.flip(crop, dims=[-1])
        return crop.to(torch.uint8)


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and platforms."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


@dataclass
class EpochPlan:
    """The order images are visited in one epoch, and the view each image is shown in.

    ``view_ids[i]`` is the view of training image ``i`` (indexed by image, not by step).
    """

    order: Tensor
    view_ids: Tensor


def epoch_plan(seed: int, epoch: int, num_train: int, augmentation: Augmentation) -> EpochPlan:
    order = torch.randperm(num_train, generator=generator("order", seed, epoch))
    views = torch.randint(augmentation.num_views, (num_train,), generator=generator("views", seed, epoch))
    return EpochPlan(order, views)


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 images (N, C, H, W) and int64 labels per split."""

    name: str
    num_classes: int
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation
    classes: list[str] = field(default_factory=list)
    official: bool | None = None  # CIFAR: the official files (CIFAR_MD5); None for other datasets

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @functools.cached_property
    def split_sha256(self) -> dict[str, str]:
        """Content hash of each split: its images and labels, in order."""
        splits = {
            "train": (self.train_x, self.train_y),
            "val": (self.val_x, self.val_y),
            "test": (self.test_x, self.test_y),
        }
        return {name: tensor_sha256(x, y) for name, (x, y) in splits.items()}

    @property
    def sha256(self) -> str:
        """The dataset's identity as runs see it: every split's content and the class names."""
        digest = hashlib.sha256(json.dumps([self.split_sha256, list(self.classes)], sort_keys=True).encode())
        return digest.hexdigest()

    def describe(self) -> dict:
        """The data manifest: what ``run.json`` records and the workflow's data node writes."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "split_sha256": dict(self.split_sha256),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "sizes": {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)},
            "mean": list(self.mean),
            "std": list(self.std),
            "augmentation": self.augmentation.describe(),
            **({} if self.official is None else {"official": self.official}),
        }


def tensor_sha256(*tensors: Tensor) -> str:
    """sha256 over the dtype, shape and bytes of each tensor."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


class Normalizer:
    """uint8 images -> normalised float, on the training device."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t
        self.channels_last = channels_last

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float() * self.scale - self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# ---------------------------------------------------------------- loading


def split_train_val(x: Tensor, y: Tensor, val_size: float, split_seed: int):
    """Carve a validation set from the training set: a fraction (< 1) or a count (>= 1)."""
    reason = val_size_rule(val_size)  # the option's own rule, for callers of load_data itself
    if reason:
        raise KdpipeError(f"val_size: got {val_size!r}; {reason}")
    n = len(y)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if n_val >= n:
        raise KdpipeError(f"val_size: {val_size} leaves no training images out of {n}; use a fraction below 1")
    perm = torch.randperm(n, generator=generator("val-split", split_seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# What a CIFAR batch may contain: plain containers, strings, bytes, numbers (built in by the
# pickle opcodes themselves) and numpy arrays of numbers.  These are the only callables a pickle may
# name, and none of them is numpy's own: numpy's dtype and array constructors take a state (the pickle's
# BUILD) that numpy trusts, and a crafted one corrupts memory (a dtype state one item short crashes the
# process).  Here each builds a record of its arguments and state, and :func:`_arrays` makes the arrays
# from that record with ``np.frombuffer`` alone, after checking it.  ``numpy.core`` is numpy 1's name.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
}


class _Refused(pickle.UnpicklingError):
    pass


class _Pickled:
    """A numpy call a pickle asked for: its name and arguments, and the state a BUILD gave it."""

    def __init__(self, name: str, args: tuple):
        self.name, self.args, self.state = name, args, None

    def __setstate__(self, state) -> None:
        self.state = state


def _pickled(name: str):
    def call(*args):
        if name == "ndarray":  # only ever an argument of _reconstruct, never called
            raise _Refused("refused to call numpy.ndarray: a CIFAR batch's arrays are rebuilt by _reconstruct")
        return _Pickled(name, args)

    return call


def _latin1(text, encoding="utf-8", errors="strict") -> bytes:
    """``_codecs.encode`` as pickles use it: text that stands for bytes, in latin-1."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise _Refused(f"refused _codecs.encode to {encoding!r}: a pickle spells bytes in latin1")
    return text.encode("latin1", errors)


def _raw(data) -> bytes:
    """An array's bytes: bytes, a bytearray or a memory view; text in a Python 2 pickle (latin-1)."""
    if isinstance(data, str):
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        return bytes(data)
    raise ValueError(f"array data is a {type(data).__name__}, not bytes")


def _dtype(record) -> np.dtype:
    """A plain numeric dtype (bool, integers, floats) from a pickled ``numpy.dtype`` record."""
    if not isinstance(record, _Pickled) or record.name != "dtype" or not record.args:
        raise ValueError(f"{_describe(record)} is not a pickled numpy dtype")
    spec, state = record.args[0], record.state
    endian = "|"
    if state is not None:
        # numpy's dtype state: (3, byte order, subarray, names, fields, elsize, alignment, flags), and a version 4
        # with the metadata (None here) after them
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or any(v is not None for v in state[2:5] + state[8:])
        ):
            raise ValueError(f"numpy dtype {spec!r}: state {_describe(state)} is not a plain dtype's")
        endian = state[1]
    if not isinstance(spec, str) or endian not in ("<", ">", "|", "="):
        raise ValueError(f"numpy dtype {_describe(spec)} of byte order {_describe(endian)}")
    dtype = np.dtype(spec if endian == "|" else endian + spec)
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"refused numpy dtype {dtype}: a dataset may hold only arrays of numbers")
    return dtype


def _shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"array shape {_describe(shape)} is not a tuple of sizes")
    return shape


def _build(record: _Pickled):
    """The numpy value a pickled record stands for, made by ``np.frombuffer`` from checked parts."""
    if record.name == "_reconstruct":  # protocols 0-4: _reconstruct(ndarray, (0,), b"b") + BUILD state
        state = record.state
        if not isinstance(state, tuple) or len(state) != 5:
            raise ValueError(
                f"array state {_describe(state)}; a pickled array has (version, shape, dtype, order, data)"
            )
        _, shape, dtype, fortran, data = state
        return np.frombuffer(_raw(data), _dtype(dtype)).reshape(_shape(shape), order="F" if fortran else "C")
    if record.name == "_frombuffer":  # protocol 5: _frombuffer(buffer, dtype, shape, order)
        if len(record.args) != 4 or record.args[3] not in ("C", "F"):
            raise ValueError(f"numpy _frombuffer{_describe(record.args)}")
        data, dtype, shape, order = record.args
        return np.frombuffer(_raw(data), _dtype(dtype)).reshape(_shape(shape), order=order)
    if record.name == "scalar":  # numpy scalars: scalar(dtype, bytes)
        if len(record.args) != 2:
            raise ValueError(f"numpy scalar{_describe(record.args)}")
        dtype, data = _dtype(record.args[0]), _raw(record.args[1])
        if len(data) != dtype.itemsize:
            raise ValueError(f"numpy scalar of {dtype} from {len(data)} bytes")
        return np.frombuffer(data, dtype)[0]
    raise ValueError(f"a bare numpy {record.name} where a value belongs")


def _arrays(value, done: dict):
    """``value`` with every pickled numpy record in it made the array or scalar it stands for."""
    key = id(value)
    if key in done:
        return done[key]
    if isinstance(value, _Pickled):
        done[key] = made = _build(value)
    elif isinstance(value, list):
        done[key] = value  # a list may hold itself
        value[:] = [_arrays(v, done) for v in value]
        made = value
    elif isinstance(value, dict):
        done[key] = value
        for k in list(value):
            value[k] = _arrays(value[k], done)
        made = value
    elif isinstance(value, tuple):
        done[key] = made = tuple(_arrays(v, done) for v in value)
    else:
        made = value
    return made


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that cannot run code: it resolves only the names in ``_PICKLE_ALLOWED``, to records."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _PICKLE_ALLOWED:
            raise _Refused(f"refused to load {module}.{name}: a dataset may hold only plain data and numpy arrays")
        return _latin1 if module == "_codecs" else _pickled(name)


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle, read so that a crafted file cannot execute code (one line names the file)."""
    try:
        with open(path, "rb") as fh:
            entry = _arrays(_DataUnpickler(fh, encoding="latin1").load(), {})
    except _Refused as exc:
        raise KdpipeError(f"dataset file {path}: {exc}") from None
    except MemoryError as exc:  # an array header asking for more than this machine has
        what = " ".join(str(exc).split()) or "out of memory"
        raise KdpipeError(f"dataset file {path}: unreadable CIFAR pickle ({type(exc).__name__}: {what})") from None
    except OSError:
        raise  # the file itself cannot be read: the caller's one line for a read the system refuses
    except Exception as exc:  # any other failure of a crafted or damaged file, e.g. a bad opcode or length
        what = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise KdpipeError(f"dataset file {path}: unreadable CIFAR pickle ({what})") from None
    if not isinstance(entry, dict):
        raise KdpipeError(f"dataset file {path}: expected a dict of arrays, got {type(entry).__name__}")
    return entry


def _cifar_arrays(batches: list[Path], label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """Every batch's images and labels, each file checked before anything trains on it: its keys, whole
    32x32 RGB images of bytes, one integer label per image, each a class of the dataset."""
    xs, ys = [], []
    for path in batches:
        entry = _read_pickle(path)
        missing = [key for key in ("data", label_key) if key not in entry]
        if missing:
            raise KdpipeError(
                f"dataset file {path}: no {missing[0]!r} key; a CIFAR batch holds 'data' and {label_key!r}"
            )
        try:
            data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise KdpipeError(f"dataset file {path}: unreadable CIFAR batch ({exc})") from None
        pixels = data.dtype == np.uint8 or (
            data.dtype.kind in "iu" and (data.size == 0 or 0 <= data.min() <= data.max() <= 255)
        )
        if not pixels or data.ndim != 2 or data.shape[1] != 3072:  # (N, 32, 32, 3) would pass as scrambled
            raise KdpipeError(
                f"dataset file {path}: 'data' is {data.dtype} of shape {data.shape}; "
                "a CIFAR batch holds rows of 3072 byte values 0..255 (32x32 RGB images)"
            )
        images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise KdpipeError(
                f"dataset file {path}: {label_key!r} is {labels.dtype} of shape {labels.shape}; "
                "a CIFAR batch holds a list of integer labels"
            )
        if len(labels) != len(images):
            raise KdpipeError(
                f"dataset file {path}: {len(labels)} labels ({label_key!r}) for {len(images)} images ('data'); "
                "a CIFAR batch has one label per image"
            )
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise KdpipeError(
                f"dataset file {path}: label {int(outside[0])} in {label_key!r} is outside 0..{num_classes - 1} "
                f"(the dataset's {num_classes} classes)"
            )
        xs.append(images)
        ys.append(labels.astype(np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _class_names(path: Path, key: str, num_classes: int) -> list[str]:
    """The class names of a CIFAR meta file (the indices as names where it has no ``key``)."""
    names = _read_pickle(path).get(key)
    if names is None:
        return [str(i) for i in range(num_classes)]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise KdpipeError(
            f"dataset file {path}: {key!r} is {_describe(names)}; it must be a list of {num_classes} class names "
            "(strings)"
        )
    if len(names) != num_classes:
        raise KdpipeError(
            f"dataset file {path}: {key!r} lists {len(names)} class names; the dataset has {num_classes} classes"
        )
    return list(names)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# torchvision's python-pickle CIFAR layout: folder, training files, test files, label key,
# meta file, its class-name key, class count.
# md5 of the CIFAR page's python-version files (torchvision checks its downloads against the same): files that
# differ (edited, re-encoded, another release) are not the data the published numbers were measured on.
CIFAR_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
}


def official_cifar(name: str, base: Path, files: list[str]) -> bool:
    """Whether ``files`` under ``base`` are the official CIFAR ``name`` files, by their md5."""
    for file in files:
        digest = hashlib.md5(usedforsecurity=False)
        with open(base / file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != CIFAR_MD5[name].get(file):
            return False
    return True


CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names", 100),
}


def cifar_files(name: str) -> list[str]:
    """Paths under ``img_root`` of every file a CIFAR dataset is read from."""
    folder, train_files, test_files, _, meta_file, _, _ = CIFAR_LAYOUT[name]
    return [f"{folder}/{f}" for f in train_files + test_files + [meta_file]]


def load_cifar(name: str, img_root: str | Path, download: bool = False):
    """torchvision's python-pickle CIFAR layout under ``img_root``."""
    root = Path(img_root)
    folder, train_files, test_files, label_key, meta_file, meta_key, num_classes = CIFAR_LAYOUT[name]
    base = root / folder
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        log.info("downloading %s to %s", name, root)
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:  # network errors, disk full, ...
            raise KdpipeError(f"data_name {name}: download to {root} failed: {exc}") from exc
        missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise KdpipeError(
            f"data_name {name}: missing {', '.join(missing)} under {base}; pass --download "
            f"(config data.download: true) or extract the 'python version' archive from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into --img_root {root}"
        )
    train_x, train_y = _cifar_arrays([base / f for f in train_files], label_key, num_classes)
    test_x, test_y = _cifar_arrays([base / f for f in test_files], label_key, num_classes)
    classes = [str(i) for i in range(num_classes)]
    if (base / meta_file).is_file():
        classes = _class_names(base / meta_file, meta_key, num_classes)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    official = official_cifar(name, base, train_files + test_files)
    return train_x, train_y, test_x, test_y, num_classes, classes, mean, std, official


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``load_digits`` returns them: (1797, 8, 8) float64 pixel values 0-16
    and the labels, read from its ``datasets/data/digits.csv.gz`` the way it reads it (``np.loadtxt``), but
    without importing scikit-learn, which costs each training process 2-4 s; ``load_digits`` itself if the
    file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise KdpipeError("data_name digits: scikit-learn is not installed (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def load_digits_arrays(split_seed: int):
    """scikit-learn's 1,797 bundled 8x8 digits, upscaled to 16x16 RGB uint8; 20% test split."""
    pixels, target = bundled_digits()
    images = torch.from_numpy(pixels).float()[:, None] * (255.0 / 16.0)  # (N,1,8,8)
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(target).long()
    perm = torch.randperm(len(labels), generator=generator("digits-test-split", split_seed))
    n_test = len(labels) // 5
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    classes = [str(i) for i in range(10)]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], 10, classes


def _read_folder(root: Path, classes: list[str] | None, size: int):
    from PIL import Image

    discovered = classes is None
    if discovered:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if discovered and not files:  # a class without training images: never learnt, never validated
            raise KdpipeError(
                f"data_name imagefolder:{root}: class folder {folder} holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                    xs.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
            except (OSError, Image.DecompressionBombError) as exc:  # not an image, damaged, or a decompression bomb
                raise KdpipeError(f"data_name imagefolder:{root}: cannot read image {path}: {exc}") from exc
            ys.append(label)
    return xs, ys, classes


def load_imagefolder(path: str, split_seed: int, image_size: int = IMAGEFOLDER_SIZE):
    """Class-per-folder images; ``train/`` and ``test/`` subfolders if present, else a 20% test split."""
    root = Path(path)
    if not root.is_dir():
        raise KdpipeError(f"data_name imagefolder:{path}: no such directory")
    if (root / "train").is_dir():
        train_xs, train_ys, classes = _read_folder(root / "train", None, image_size)
        test_root = root / "test" if (root / "test").is_dir() else root / "val"
        if not test_root.is_dir():
            raise KdpipeError(f"data_name imagefolder:{path}: has train/ but no test/ (or val/) folder")
        unknown = sorted(p.name for p in test_root.iterdir() if p.is_dir() and p.name not in classes)
        if unknown:  # its images would be left out of the test set without a word
            raise KdpipeError(
                f"data_name imagefolder:{path}: {test_root.name}/ has class folder(s) {', '.join(unknown)} "
                f"that train/ lacks; its classes must be train/'s ({', '.join(classes)})"
            )
        test_xs, test_ys, _ = _read_folder(test_root, classes, image_size)
        train_x, train_y = torch.stack(train_xs), torch.tensor(train_ys)
        test_x, test_y = (torch.stack(test_xs), torch.tensor(test_ys)) if test_xs else (None, None)
    else:
        xs, ys, classes = _read_folder(root, None, image_size)
        if not xs:
            raise KdpipeError(f"data_name imagefolder:{path}: no images found in class subfolders")
        x, y = torch.stack(xs), torch.tensor(ys)
        perm = torch.randperm(len(y), generator=generator("imagefolder-test-split", split_seed))
        n_test = max(1, len(y) // 5)
        test_x, test_y = x[perm[:n_test].sort().values], y[perm[:n_test].sort().values]
        train_x, train_y = x[perm[n_test:].sort().values], y[perm[n_test:].sort().values]
    if len(classes) < 2 or test_x is None or len(train_y.unique()) < 2:
        raise KdpipeError(f"data_name imagefolder:{path}: need at least 2 classes with images in train and test")
    return train_x, train_y.long(), test_x, test_y.long(), len(classes), classes


def check_data_name(data_name: str) -> None:
    if data_name in ("cifar10", "cifar100", "digits"):
        return
    if data_name.startswith("imagefolder:") and len(data_name) > len("imagefolder:"):
        return
    raise KdpipeError(f"data_name: unknown dataset {data_name!r}; choose one of {', '.join(DATASET_NAMES)}")


def augmentation_of(data_name: str, image_size: int | None = None, crop_padding: str = "auto") -> Augmentation:
    """The training augmentation of a dataset, known without reading any file.

    Image folders are resized to ``image_size`` (default 32) and padded by an eighth of it, as
    CIFAR's 4 of 32: 162 views at 32 pixels, 578 at 64.  ``crop_padding``: what the padding
    holds, ``reflect`` or ``zeros``; ``auto``, the dataset's own (reflect, KD-Zoo's CIFAR
    recipe; zeros for digits, whose background is black).
    """
    check_data_name(data_name)
    if crop_padding not in CROP_PADDINGS:
        raise KdpipeError(f"crop_padding: got {crop_padding!r}; allowed: {', '.join(CROP_PADDINGS)}")
    if data_name in ("cifar10", "cifar100"):
        aug = Augmentation(pad=4, pad_mode="reflect", flip=True)
    elif data_name == "digits":
        aug = Augmentation(pad=2, pad_mode="constant", flip=False)  # no flip: a mirrored digit is another symbol
    else:
        aug = Augmentation(pad=(image_size or IMAGEFOLDER_SIZE) // 8, pad_mode="reflect", flip=True)
    if crop_padding == "auto":
        return aug
    return replace(aug, pad_mode="constant" if crop_padding == "zeros" else "reflect")


def num_classes_of(data_name: str) -> int | None:
    """Class count known without reading files (None for image folders)."""
    return {"cifar10": 10, "cifar100": 100, "digits": 10}.get(data_name)


def load_data(
    data_name: str,
    img_root: str | Path = "data",
    val_size: float = 0.1,
    download: bool = False,
    split_seed: int = 0,
    image_size: int | None = None,
    train_subset: int | None = None,
    crop_padding: str = "auto",
) -> ImageData:
    """Load a dataset with its fixed train/val/test split; ``train_subset`` keeps the first N training images;
    ``crop_padding`` as :func:`augmentation_of`."""
    check_data_name(data_name)
    if image_size is not None and not data_name.startswith("imagefolder:"):
        raise KdpipeError(f"image_size: applies to imagefolder datasets only; {data_name} has a fixed size")
    official = None  # only CIFAR has official files (and published numbers)
    if data_name in ("cifar10", "cifar100"):
        train_x, train_y, test_x, test_y, k, classes, mean, std, official = load_cifar(data_name, img_root, download)
    elif data_name == "digits":
        train_x, train_y, test_x, test_y, k, classes = load_digits_arrays(split_seed)
        mean = std = None
    else:
        train_x, train_y, test_x, test_y, k, classes = load_imagefolder(
            data_name.split(":", 1)[1], split_seed, image_size or IMAGEFOLDER_SIZE
        )
        mean = std = None
    if val_size > 0:
        train_x, train_y, val_x, val_y = split_train_val(train_x, train_y, val_size, split_seed)
    else:
        val_x, val_y = train_x[:0], train_y[:0]
    if mean is None:
        mean, std = channel_stats(train_x)
    if train_subset:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    aug = augmentation_of(data_name, image_size, crop_padding)
    return ImageData(data_name, k, train_x, train_y, val_x, val_y, test_x, test_y, mean, std, aug, classes, official)
