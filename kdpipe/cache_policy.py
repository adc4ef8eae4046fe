"""The teacher-cache policy: decided once per config, for every (dataset, teacher, teacher seed).

A student reads a cache when its method reads nothing of the teacher but what a cache holds
(:func:`reads_only_cached_taps`: the kd modes and CRD answer through the same declaration, a
``cacheable()`` on the loss or objective class) and the policy (``teacher_cache``: on, off, auto)
says the cache pays off. The rules' inputs, the jobs' log lines and ``cache_plan`` all read
:func:`cache_policy`.

The decision for a teacher is made from its unswept students alone; a sweep's students (``kd.sweep``,
``crd.sweep``) read the cache where that decision builds one and the live teacher elsewhere, so adding,
changing or removing a sweep never changes what an unswept run reads (its inputs, hence its results).
"""

from __future__ import annotations

import json

from .config import data_name, image_size, training
from .plan import RunId, plan, run_dir, teacher_seed

_POLICIES: dict[str, dict] = {}


def _consumer_class(rule: str, method: str):
    """The class that declares what a student of ``rule`` and ``method`` reads of its teacher, or None."""
    rule = rule.removesuffix("_sweep")  # a sweep's node (train_kd_sweep, ...) is its entry's student
    if rule == "train_kd":
        from .losses import LOSSES

        return LOSSES[method]
    if rule == "train_crd":
        from .objectives.crd import CRDLoss

        return CRDLoss
    return None


def reads_only_cached_taps(rule: str, method: str) -> bool:
    """Whether a student of ``rule`` and ``method`` (a kd mode, crd) reads only what a teacher cache
    holds (logits, embeddings)."""
    cls = _consumer_class(rule, method)
    return cls is not None and cls.cacheable()


def reads_embedding(rule: str, method: str) -> bool:
    """Whether such a student reads the teacher's pooled embedding (else a cache of logits serves it)."""
    cls = _consumer_class(rule, method)
    return cls is not None and "embedding" in cls.teacher_taps


def _decide(config: dict, dataset: str, consumers: list[tuple[str, int]]) -> tuple[bool, str]:
    """The decision for one teacher, given (run directory, epochs) of the unswept students that could read its cache."""
    from .cache import MAX_CACHE_VIEWS
    from .data import augmentation_of

    setting = config["teacher_cache"]
    views = augmentation_of(data_name(config, dataset), image_size(config, dataset)).num_views
    passes = sum(epochs for _, epochs in consumers)
    if setting == "off":
        return False, "teacher_cache: off"
    if views > MAX_CACHE_VIEWS:
        return False, f"{views} views per image exceed the {MAX_CACHE_VIEWS} an exhaustive cache allows"
    if setting == "on":
        return True, f"teacher_cache: on ({views} views per image)"
    if passes > views:
        return True, (
            f"auto: {len(consumers)} students x their epochs = {passes} live teacher passes per image > {views} views"
        )
    return False, f"auto: {passes} live teacher passes per image <= {views} views, the cache would not pay off"


def _stage(rule: str) -> str:
    """The config section whose schedule a student of ``rule`` trains on (kd, crd; their sweeps too)."""
    return rule.removeprefix("train_").removesuffix("_sweep")


def _consumers(config: dict) -> dict[tuple[str, str, int], list[RunId]]:
    """(dataset, teacher, teacher seed) -> the planned students that could read its cache."""
    consumers: dict[tuple[str, str, int], list[RunId]] = {}
    for run in plan(config):  # one pass: every student that could read a cache, by its teacher
        if reads_only_cached_taps(run.rule, run.method):
            consumers.setdefault((run.dataset, run.teacher, teacher_seed(config, run.seed)), []).append(run)
    return consumers


def cache_policy(config: dict) -> dict[tuple[str, str, int], tuple[bool, str, bool]]:
    """(dataset, teacher, teacher seed) -> (students read a cache, why, the cache stores embeddings),
    for every teacher with students that could; computed once per config (Snakemake asks for every
    rule's inputs). Only the unswept students count (a sweep's students follow their decision, see the
    module's docstring). A cache holds the pooled embeddings only where one of its students reads them:
    logits alone take (K + 64) / K less room (ResNet-50's 2048-wide embeddings would dwarf them)."""
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _POLICIES:
        policy = {}
        for teacher, runs in sorted(_consumers(config).items()):
            unswept = [r for r in runs if not r.sweep]  # a sweep varies the plain mode: its method reads the same
            epochs = [training(config, _stage(r.rule), r.student)["epochs"] for r in unswept]
            use, why = _decide(config, teacher[0], list(zip([r.run_dir for r in unswept], epochs)))
            policy[teacher] = (use, why, any(reads_embedding(r.rule, r.method) for r in unswept))
        _POLICIES[key] = policy
    return _POLICIES[key]


def cache_decision(config: dict, dataset: str, teacher: str, tseed) -> tuple[bool, str]:
    """Whether students of (dataset, teacher, teacher seed) read a cache, and why."""
    use, why, _ = cache_policy(config).get(
        (dataset, teacher, int(tseed)), (False, "no student reads only logits or embeddings", False)
    )
    return use, why


def cache_embeddings(config: dict, dataset: str, teacher: str, tseed) -> bool:
    """Whether the cache of (dataset, teacher, teacher seed) stores pooled embeddings (a student reads them)."""
    return cache_policy(config).get((dataset, teacher, int(tseed)), (False, "", False))[2]


def cache_dir(dataset: str, teacher: str, tseed) -> str:
    return run_dir(dataset, "cache", teacher, tseed)


def cache_plan(config: dict) -> list[str]:
    """One line per (dataset, teacher, teacher seed) with cache consumers: the decision and its reason."""
    return [
        f"teacher cache {cache_dir(dataset, teacher, tseed)}: "
        + (f"built ({'logits and embeddings' if embeddings else 'logits'})" if use else "not used")
        + f" -- {why}"
        for (dataset, teacher, tseed), (use, why, embeddings) in cache_policy(config).items()
    ]
