"""``build_teacher_cache``: the teacher-cache node (see :mod:`kdpipe.cache`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..cache import LOGITS_MANIFEST, build_cache, check_cache_request, data_fingerprint, read_manifest
from ..checkpoint import run_dir_lock, sha256_file
from ..data import check_data_name
from ..engine import Context
from ..errors import KdpipeError
from ..options import resolve
from ..runner import check_num_class, load_options_data, select_device
from .common import frozen, load_network

log = logging.getLogger("kdpipe")


def build_teacher_cache(**kwargs) -> dict:
    """Run the frozen teacher on every (training image, view) and write ``cache.pt`` + ``manifest.json``.

    Keyword arguments are the flags of ``python -m kdpipe teacher_cache``; returns the manifest.
    An up-to-date cache in the target directory is kept as it is.
    """
    opts = resolve("teacher_cache", kwargs)
    check_data_name(opts["data_name"])
    check_num_class(opts)
    note = opts["note"] or f"cache-{opts['data_name'].replace(':', '_').replace('/', '_')}-{opts['t_name']}"
    out_dir = Path(opts["save_root"]) / note
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = select_device(opts["cuda"])
    data = load_options_data(opts)
    check_num_class(opts, data)
    ctx = Context(opts, data, device, out_dir)  # the teacher placed, and its batches laid out, as a live one's
    manifest = _up_to_date(out_dir, opts, data, ctx.amp)
    if manifest is not None:
        return manifest
    check_cache_request(data, opts["cache_dtype"])
    teacher = frozen(ctx.prepare(load_network(opts["t_model"], opts["t_name"], data.num_classes, "t_model")))
    with run_dir_lock(out_dir):  # a duplicate job on the same cache is refused
        manifest = _up_to_date(out_dir, opts, data, ctx.amp)
        if manifest is not None:
            return manifest
        return build_cache(
            teacher,
            opts["t_model"],
            data,
            out_dir,
            device,
            embeddings=opts["embeddings"],
            dtype=opts["cache_dtype"],
            batch_size=opts["batch_size"],
            channels_last=ctx.channels_last,
            amp=ctx.amp,
        )


def _up_to_date(out_dir: Path, opts: dict, data, amp: bool) -> dict | None:
    """The manifest of a cache in ``out_dir`` built from this teacher and data (and with bf16 autocast or
    without, as ``amp``), if both files are there."""
    if not ((out_dir / "manifest.json").is_file() and (out_dir / "cache.pt").is_file()):
        return None
    if (out_dir / LOGITS_MANIFEST).is_file() and not (out_dir / "embedding.pt").is_file():  # embeddings lost
        return None
    try:
        manifest = read_manifest(out_dir)
    except KdpipeError:  # a damaged cache is rebuilt: it holds only what this job computes again
        log.info("teacher cache %s is damaged (its manifest.json); building it again", out_dir)
        return None
    if (
        manifest.get("teacher", {}).get("sha256") == sha256_file(opts["t_model"])
        and manifest.get("data") == data_fingerprint(data)
        and manifest.get("dtype") == opts["cache_dtype"]
        and manifest.get("amp_bf16", amp) == amp
        and ("embedding" in manifest.get("entries", [])) >= opts["embeddings"]
    ):
        log.info("%s is up to date; nothing to do", out_dir)
        return manifest
    return None
