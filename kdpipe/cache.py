"""An exact cache of a teacher's outputs for every view of every training image.

The training augmentation has a small, finite set of views per image (CIFAR: 9 x 9 crop
offsets x 2 flips = 162; digits: 25), each named by a view id (see :mod:`kdpipe.data`).
Running the frozen teacher once on every (image, view) pair gives a table from which a
student reads exactly the teacher output for the view it trains on -- no teacher forward
per step, and no approximation beyond the storage precision (fp16 by default).

Files in a cache directory:

* ``cache.pt``: ``{"logits": (N, V, K)}``, loaded with ``weights_only=True`` (a cache built before
  2026-11-28 may hold its ``"embedding"`` table here too; it is read as it is);
* ``embedding.pt``: ``{"embedding": (N, V, D)}``, where one of the cache's students reads embeddings;
* ``manifest.json``: what the tables are valid for (teacher checkpoint sha256, dataset and
  its training images, view definition, normalisation, dtype) -- a student refuses a cache
  whose manifest does not match its own setting;
* ``logits.json``, beside ``embedding.pt``: the manifest a cache of the same logits alone has (the same
  ``cache.pt``).  A student that reads only logits is tied to the cache by this file (:func:`reader_manifest`),
  so that adding embeddings to its cache (a mode that reads them joins the grid) or removing them leaves its
  run standing; the students that read embeddings are tied to ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .checkpoint import atomic_save, atomic_write_json, safe_load, sha256_file
from .data import ImageData, Normalizer
from .errors import KdpipeError

log = logging.getLogger("kdpipe")

CACHE_FORMAT = 1
LOGITS_MANIFEST = "logits.json"  # beside embedding.pt: the manifest of the logits alone (module docstring)
MAX_CACHE_VIEWS = 512  # beyond this many views per image an exhaustive table is not worth it
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def data_fingerprint(data: ImageData) -> dict:
    """What makes a cache valid for a dataset: its training images, in order, and their augmentation."""
    digest = hashlib.sha256()
    digest.update(data.train_x.contiguous().numpy().tobytes())
    return {
        "name": data.name,
        "num_train": len(data.train_y),
        "train_images_sha256": digest.hexdigest(),
        "image_shape": list(data.image_shape),
        "views": data.augmentation.describe(),
        "mean": list(data.mean),
        "std": list(data.std),
    }


def cacheable_views(data: ImageData) -> bool:
    return data.augmentation.num_views <= MAX_CACHE_VIEWS


@torch.inference_mode()
def compute_table(
    teacher: nn.Module,
    data: ImageData,
    device: torch.device,
    embeddings: bool,
    dtype: torch.dtype,
    batch_size: int = 1024,
    channels_last: bool = False,
    autocast: bool = False,
) -> dict[str, Tensor]:
    """Teacher logits (and embeddings) for every (training image, view id), as (N, V, dim) tables."""
    from .losses import TapShapes

    aug = data.augmentation
    n, views = len(data.train_y), aug.num_views
    shapes = TapShapes.probe(teacher, data.image_shape)
    dims = {"logits": shapes.num_classes, **({"embedding": shapes.embedding} if embeddings else {})}
    table = {key: torch.empty(n, views, dim, dtype=dtype, device=device) for key, dim in dims.items()}
    normalize = Normalizer(data.mean, data.std, device, channels_last)
    padded = aug.pad_images(data.train_x).to(device)
    teacher.eval()
    for view in range(views):
        for start in range(0, n, batch_size):
            chunk = padded[start : start + batch_size]
            x = normalize(aug.apply(chunk, torch.full((len(chunk),), view, dtype=torch.long)))
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                taps = teacher(x)
            for key in table:
                table[key][start : start + len(chunk), view] = getattr(taps, key).to(dtype)
    return {key: value.cpu() for key, value in table.items()}


def check_cache_request(data: ImageData, dtype: str) -> None:
    """One clear error for a cache that cannot be built (unknown dtype, too many views)."""
    if dtype not in DTYPES:
        raise KdpipeError(f"cache_dtype: got {dtype!r}; allowed: {', '.join(DTYPES)}")
    if not cacheable_views(data):
        raise KdpipeError(
            f"teacher_cache: {data.name} has {data.augmentation.num_views} views per image, more than the "
            f"{MAX_CACHE_VIEWS} an exhaustive cache allows; train with the live teacher (teacher_cache: off)"
        )


def build_cache(
    teacher: nn.Module,
    teacher_path: str | Path,
    data: ImageData,
    out_dir: str | Path,
    device: torch.device,
    embeddings: bool = True,
    dtype: str = "float16",
    batch_size: int = 1024,
    *,
    channels_last: bool,
    amp: bool,
) -> dict:
    """Compute and write ``cache.pt`` and ``manifest.json`` (written last) into ``out_dir``.

    ``teacher`` is on ``device``, in channels_last when ``channels_last`` (``Context.channels_last``), its
    forward under bf16 autocast when ``amp`` (``Context.amp``)."""
    check_cache_request(data, dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = compute_table(
        teacher, data, device, embeddings, DTYPES[dtype], batch_size, channels_last=channels_last, autocast=amp
    )
    seconds = time.perf_counter() - t0
    # a rebuild first removes the manifest it replaces: killed between the files, the directory holds new
    # tables and no manifest.json (refused as incomplete), never a new table under the old manifest
    for name in ("manifest.json", LOGITS_MANIFEST, "embedding.pt"):
        (out_dir / name).unlink(missing_ok=True)
    atomic_save({"logits": table["logits"]}, out_dir / "cache.pt")
    logits_only = {
        "format": CACHE_FORMAT,
        "kdpipe": __version__,
        "teacher": {"path": str(teacher_path), "sha256": sha256_file(teacher_path)},
        "data": data_fingerprint(data),
        "dtype": dtype,
        "entries": ["logits"],
        "shapes": {"logits": list(table["logits"].shape)},
        "bytes": (out_dir / "cache.pt").stat().st_size,
        "device": device.type,  # cpu or cuda: which GPU of a node built it does not change the table
        "amp_bf16": amp,
        "channels_last": channels_last,
    }
    # only what the table is (no build time: students fingerprint the cache by these files, so a bit-identical
    # rebuild must write the same bytes, or every cache reader would train again)
    manifest = logits_only
    if "embedding" in table:
        atomic_save({"embedding": table["embedding"]}, out_dir / "embedding.pt")
        atomic_write_json(out_dir / LOGITS_MANIFEST, logits_only)
        manifest = {
            **logits_only,
            "entries": sorted(table),
            "shapes": {k: list(v.shape) for k, v in sorted(table.items())},
            "bytes": logits_only["bytes"] + (out_dir / "embedding.pt").stat().st_size,
        }
    atomic_write_json(out_dir / "manifest.json", manifest)
    log.info("teacher cache %s: %s in %.1fs, %.1f MB", out_dir, manifest["shapes"], seconds, manifest["bytes"] / 1e6)
    return manifest


class TeacherCache:
    """A verified cache, on the training device; ``lookup(index, view_ids)`` gives the teacher's outputs."""

    def __init__(self, table: dict[str, Tensor], manifest: dict, device: torch.device):
        self.manifest = manifest
        self.tables = {k: v.to(device) for k, v in table.items()}
        self.device = device

    @property
    def has_embedding(self) -> bool:
        return "embedding" in self.tables

    def lookup(self, index: Tensor, view_ids: Tensor) -> dict[str, Tensor]:
        index = index.to(self.device, non_blocking=True)
        view_ids = view_ids.to(self.device, non_blocking=True)
        return {k: t[index, view_ids].float() for k, t in self.tables.items()}


def read_manifest(cache_dir: str | Path) -> dict:
    """``manifest.json`` of a cache directory as a dict, or one line naming it and what is wrong."""
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        raise KdpipeError(f"teacher_cache {cache_dir}: no manifest.json (an incomplete or missing cache)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(cache_dir, f"{manifest_path.name} is unreadable ({exc})") from None
    if not isinstance(manifest, dict):
        raise _damaged(cache_dir, f"{manifest_path.name} is not a JSON object (it holds a {type(manifest).__name__})")
    for key, kind in (("teacher", dict), ("data", dict), ("entries", list), ("shapes", dict)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise _damaged(cache_dir, f"{manifest_path.name}: {key} is a {type(manifest[key]).__name__}")
    return manifest


def _damaged(cache_dir: Path, what: str) -> KdpipeError:
    return KdpipeError(
        f"teacher_cache {cache_dir}: damaged: {what}; delete it and build it again (python -m kdpipe teacher_cache)"
    )


def _check_table(cache_dir: Path, table, manifest: dict, data: ImageData) -> None:
    """``cache.pt``'s tables: tensors of a cache dtype, (training images, views, dim), as the manifest says."""
    if not isinstance(table, dict) or not isinstance(table.get("logits"), Tensor):
        got = f"a dict of {sorted(map(str, table))}" if isinstance(table, dict) else f"a {type(table).__name__}"
        raise _damaged(cache_dir, f"cache.pt holds {got}, not a table of teacher logits")
    rows = (len(data.train_y), data.augmentation.num_views)
    split = (cache_dir / "embedding.pt").is_file()

    def source(key: str) -> str:  # the file a table came from
        return "embedding.pt" if key == "embedding" and split else "cache.pt"

    for key, value in table.items():
        if key not in ("logits", "embedding") or not isinstance(value, Tensor):
            raise _damaged(cache_dir, f"cache.pt holds {key!r} ({type(value).__name__}), not a logits/embedding table")
        if value.dtype not in DTYPES.values() or value.dim() != 3 or tuple(value.shape[:2]) != rows:
            raise _damaged(
                cache_dir,
                f"{source(key)}'s {key} is a {value.dtype} table of shape {tuple(value.shape)}, "
                f"not ({rows[0]} training images, {rows[1]} views, dim) in {' or '.join(DTYPES)}",
            )
        listed = manifest.get("shapes", {}).get(key)
        if list(value.shape) != listed:
            raise _damaged(
                cache_dir, f"{source(key)}'s {key} has shape {list(value.shape)}, manifest.json says {listed}"
            )
    if table["logits"].shape[2] != data.num_classes:
        classes = table["logits"].shape[2]
        raise _damaged(cache_dir, f"cache.pt's logits have {classes} classes, {data.name} has {data.num_classes}")
    if not set(table) <= set(manifest.get("entries", [])):  # (a logits reader leaves embedding.pt unread)
        raise _damaged(cache_dir, f"cache.pt holds {sorted(table)}, manifest.json says {manifest.get('entries')}")


def load_cache(
    cache_dir: str | Path, teacher_path: str | Path, data: ImageData, device: torch.device, need_embedding: bool
) -> TeacherCache:
    """Load a cache and refuse it, with one line, unless it was built for exactly this teacher and data."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    expected_sha = sha256_file(teacher_path)
    stored_sha = manifest.get("teacher", {}).get("sha256")
    if stored_sha != expected_sha:
        raise KdpipeError(
            f"teacher_cache {cache_dir}: built for another teacher checkpoint "
            f"(sha256 {str(stored_sha or '?')[:12]}..., t_model has {expected_sha[:12]}...)"
        )
    current = data_fingerprint(data)
    for key in ("name", "num_train", "train_images_sha256", "image_shape", "views", "mean", "std"):
        if manifest.get("data", {}).get(key) != current[key]:
            what = {
                "views": "view definition",
                "mean": "normalisation",
                "std": "normalisation",
                "train_images_sha256": "training images",
            }.get(key, key)
            raise KdpipeError(
                f"teacher_cache {cache_dir}: built for another {what} ({key}: {manifest.get('data', {}).get(key)!r} "
                f"vs {current[key]!r}); rebuild it for this data"
            )
    if need_embedding and "embedding" not in manifest.get("entries", []):
        raise KdpipeError(
            f"teacher_cache {cache_dir}: holds no embeddings, which this method reads; rebuild it with embeddings"
        )
    table = safe_load(cache_dir / "cache.pt", "teacher_cache", mmap=True)
    if isinstance(table, dict) and need_embedding and "embedding" not in table:  # in embedding.pt (the layout now)
        extra = safe_load(cache_dir / "embedding.pt", "teacher_cache", mmap=True)
        if not isinstance(extra, dict) or sorted(map(str, extra)) != ["embedding"]:
            raise _damaged(cache_dir, "embedding.pt holds no embedding table alone")
        table["embedding"] = extra["embedding"]
    _check_table(cache_dir, table, manifest, data)
    if not need_embedding:  # a logits reader of a cache with embeddings: they would take room on its device unread
        table.pop("embedding", None)
    return TeacherCache(table, manifest, device)


def reader_manifest(cache_dir: str | Path, need_embedding: bool) -> Path:
    """The file that ties a student to the cache it reads (a run input, fingerprinted by its sha256):
    ``logits.json`` for a student of the logits alone where the cache also holds embeddings (so that adding or
    removing them leaves its run standing), else ``manifest.json``."""
    cache_dir = Path(cache_dir)
    logits = cache_dir / LOGITS_MANIFEST
    return logits if not need_embedding and logits.is_file() else cache_dir / "manifest.json"
