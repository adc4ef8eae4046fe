"""The workflow's plan: one identity record per run, made once from the config.

A :class:`RunId` says what a run directory stands for -- dataset, method, variant, the pair,
chain or cohort, seed, generation, its run directory and log, and the report group it is
compared in.  The planner makes it; the job writes it into ``run.json``; the summary, tables,
plots and races read it.  Nothing parses paths, so a run that is missing or failed is
grouped exactly as a finished one.

A sweep (``kd.sweep``, ``crd.sweep``, ``ft.sweep``) adds, for every value of its grid, a run of the
plain mode (crd, ft) with that ``sweep`` point: its own node (rule ``train_<entry>_sweep``) and run
directory, ``.../kd-<mode>/<pair>/<key>~<value>/seed<s>`` (Snakemake's ``Paramspace`` naming); runs
without one keep the paths and records they always had.  A point's keys are in one order, by name
(:func:`canonical_point`), wherever it is built, so the order a config lists them in changes no run.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = "results"
SWEEP_KEY = r"[A-Za-z_][A-Za-z0-9_]*"  # an option name
# the directory segment of a sweep point, '<key>~<value>' per swept key, '/'-joined (:func:`sweep_dir`)
SWEEP_SEGMENT = rf"{SWEEP_KEY}~[^/~]+(/{SWEEP_KEY}~[^/~]+)*"

SweepPoint = tuple[tuple[str, Any], ...]  # ((key, value), ...), keys ordered by name (canonical_point)


def canonical_point(items) -> tuple:
    """(key, value) pairs ordered by key name: a sweep point's identity, directory and grid order do not
    depend on the order a config lists its keys in ({lr: .., p: ..} and {p: .., lr: ..} are one point)."""
    return tuple(sorted(((key, value) for key, value in items), key=lambda item: item[0]))


@dataclass(frozen=True)
class RunId:
    rule: str  # the Snakemake rule that produces the run
    dataset: str  # the config's dataset name
    method: str  # baseline, a kd mode, ft, crd, dml, bss
    variant: str  # "", "+st", "born-again"
    teacher: str  # "" for baselines; a cohort's first peer for DML; a chain's generation-0 teacher
    student: str  # the trained network; '+'-joined peers after the first for DML
    seed: int
    run_dir: str
    generation: int | None = None  # born-again generation
    peers: tuple[str, ...] = field(default_factory=tuple)  # DML cohort, in role order (net1, net2, ...)
    sweep: SweepPoint = ()  # the swept values of a kd.sweep run, keys by name; () for every other run

    def __post_init__(self):
        object.__setattr__(self, "sweep", canonical_point(self.sweep))  # however the run was built

    @property
    def log(self) -> str:
        """The rule's log file: results/logs/<the run dir below results/>.log"""
        return log_path(self.run_dir)

    @property
    def group(self) -> str:
        """The report group (table column, plot, race) the run is compared in; '' for baselines."""
        return "" if self.method == "baseline" else f"{self.teacher}-{self.student}"

    def record(self) -> dict:
        """The identity as ``run.json`` stores it and the summary reads it."""
        out = asdict(self)
        out["peers"] = list(self.peers)
        if self.sweep:
            out["sweep"] = [[key, value] for key, value in self.sweep]
        else:  # a run without a sweep has the record it always had
            del out["sweep"]
        out.update(log=self.log, group=self.group)
        return out

    @classmethod
    def from_record(cls, record: dict) -> RunId:
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in record.items() if k in names}
        values["peers"] = tuple(values.get("peers", ()))
        values["sweep"] = tuple((key, value) for key, value in values.get("sweep", ()))
        return cls(**values)


def run_dir(dataset: str, method: str, nets: str, seed: int, sweep: SweepPoint = ()) -> str:
    point = f"{sweep_dir(sweep)}/" if sweep else ""
    return f"{RESULTS}/{dataset}/{method}/{nets}/{point}seed{seed}"


def sweep_value_text(value) -> str:
    """A swept value as paths and labels show it: 500.0 -> '500', 0.05 -> '0.05', True -> 'true'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def sweep_dir(point: SweepPoint) -> str:
    """The run-directory segment of a sweep point: 'lambda_kd~500', 'lambda_kd~500/p~2' for a grid (keys by
    name, whatever the point's order)."""
    return "/".join(f"{key}~{sweep_value_text(value)}" for key, value in canonical_point(point))


def sweep_points(config: dict, variant: str, section: str = "kd") -> list[SweepPoint]:
    """The grid of a variant's sweep -- ``kd.sweep.<mode>`` of a plain kd mode, ``crd.sweep`` of plain
    crd, ``ft.sweep`` of ft: every combination of its keys' values (the cartesian product), its keys
    ordered by name (:func:`canonical_point`: the first name varies slowest), each key's values in the
    config's order; [] when the variant is not swept."""
    if section == "kd":
        grid = config["kd"]["sweep"].get(variant, {})
    else:
        grid = config[section]["sweep"] if variant == section else {}
    if not grid:
        return []
    axes = canonical_point(grid.items())  # (key, its values), keys by name
    keys = [key for key, _ in axes]
    return [tuple(zip(keys, values)) for values in itertools.product(*(values for _, values in axes))]


def log_path(run_dir: str) -> str:
    parts = Path(run_dir).parts
    root = parts.index(RESULTS) if RESULTS in parts else 0
    return str(Path(*parts[: root + 1], "logs", *parts[root + 1 :]).with_suffix(".log"))


def pair_name(pair: dict) -> str:
    return f"{pair['teacher']}-{pair['student']}"


def split_variant(variant: str) -> tuple[str, bool]:
    """``"at+st"`` -> ("at", True); ``"st+dot"`` -> ("st", False) (DOT: :func:`uses_dot`)."""
    base = variant[: -len("+dot")] if uses_dot(variant) else variant
    return (base[:-3], True) if base.endswith("+st") else (base, False)


def uses_dot(variant: str) -> bool:
    """Whether a kd variant trains with the DOT optimizer (``<mode>+dot``)."""
    return variant.endswith("+dot")


def teacher_seed(config: dict, seed) -> int:
    return int(seed) if config["teacher_seed"] is None else int(config["teacher_seed"])


def teacher_checkpoints(config: dict) -> dict[str, str]:
    """Teacher network -> the file it is imported from (the pairs' ``teacher_checkpoint``; the config
    makes every pair of one teacher network name the same file, and such a network train nowhere)."""
    return {p["teacher"]: p["teacher_checkpoint"] for p in config["pairs"] if p.get("teacher_checkpoint")}


def base_nets(config: dict) -> list[str]:
    """Networks trained from scratch: the listed baselines and every teacher and student of a pair
    (a teacher imported from a checkpoint is not trained)."""
    imported = teacher_checkpoints(config)
    nets = list(config["base"]["nets"])
    for pair in config["pairs"]:
        nets += [pair["student"]] if pair["teacher"] in imported else [pair["teacher"], pair["student"]]
    for cohort in config["dml"]["cohorts"]:  # DML peers are compared with their baselines
        nets += list(cohort)
    nets += list(config["bss"]["nets"])  # generation 0 of a born-again chain
    return list(dict.fromkeys(nets))


def kd_variants(config: dict) -> list[str]:
    """Directory names of the kd student nodes: the mode, ``<mode>+st`` with the soft-target term,
    ``<mode>+dot`` with the DOT optimizer (``kd.with_dot`` and the pairs' ``with_dot``)."""
    kd = config["kd"]
    dot = [f"{m}+dot" for m in kd["with_dot"]] + [f"{m}+dot" for p in config["pairs"] for m in p.get("with_dot", ())]
    return list(dict.fromkeys([*kd["modes"], *(f"{m}+st" for m in kd["with_st"]), *dot]))


def crd_variants(config: dict) -> list[str]:
    if not config["crd"]["enabled"]:
        return []
    return ["crd"] + (["crd+st"] if config["crd"]["with_st"] else [])


def bss_chains(config: dict) -> list[tuple[str, str, str]]:
    """Born-again chains as (name, generation-0 teacher, student): ``<net>`` chains start from that
    net's base model, ``<teacher>-<student>`` chains (``bss.pairs``) from the pair's teacher.  A pair
    of a net with itself is that net's born-again chain, so the config refuses the net in ``bss.nets``
    too (the same runs under two directories, one report cell)."""
    chains = [(net, net, net) for net in config["bss"]["nets"]]
    if config["bss"]["pairs"]:
        chains += [(pair_name(p), p["teacher"], p["student"]) for p in config["pairs"]]
    return list(dict.fromkeys(chains))


def _base(config: dict) -> list[RunId]:
    runs = [
        RunId("train_base", d, "baseline", "", "", net, int(s), run_dir(d, "base", net, s))
        for d in config["datasets"]
        for net in base_nets(config)
        for s in config["seeds"]
    ]
    imported = teacher_checkpoints(config)
    # every network something learns from: the pairs' teachers and the born-again chains' generation 0
    teacher_nets = dict.fromkeys([p["teacher"] for p in config["pairs"]] + [t for _, t, _ in bss_chains(config)])
    teachers = [  # a fixed teacher_seed outside seeds adds those teachers' runs; an imported teacher is a run too
        RunId(
            "import_teacher" if net in imported else "train_base",
            d,
            "baseline",
            "imported" if net in imported else "",
            "",
            net,
            ts,
            run_dir(d, "base", net, ts),
        )
        for d in config["datasets"]
        for net in teacher_nets
        for ts in [teacher_seed(config, s) for s in config["seeds"]]
    ]
    return list(dict.fromkeys(runs + teachers))


def pair_of(config: dict, teacher: str, student: str) -> dict:
    """The ``pairs`` entry of (teacher, student); pairs are unique (the config refuses repeats)."""
    for pair in config["pairs"]:
        if (pair["teacher"], pair["student"]) == (teacher, student):
            return pair
    raise KeyError(f"{teacher} -> {student} is not a pair of this config")


def pair_variants(config: dict, pair: dict) -> list[str]:
    """The kd variants run for one pair: :func:`kd_variants` less the modes in its ``skip`` and the DOT
    variants asked for by other pairs only."""
    dot = {f"{m}+dot" for m in [*config["kd"]["with_dot"], *pair.get("with_dot", ())]}
    return [
        v
        for v in kd_variants(config)
        if split_variant(v)[0] not in pair.get("skip", ()) and (not uses_dot(v) or v in dot)
    ]


def _kd(config: dict) -> list[RunId]:
    """Every kd student: a variant's run per pair and seed; after a swept mode's own runs, one run
    per point of its sweep (``kd.sweep.<mode>`` varies the plain mode's runs only, not +st/+dot)."""
    return [
        RunId(
            "train_kd_sweep" if point else "train_kd",
            d,
            split_variant(v)[0],
            ("+st" if split_variant(v)[1] else "") + ("+dot" if uses_dot(v) else ""),
            p["teacher"],
            p["student"],
            int(s),
            run_dir(d, f"kd-{v}", pair_name(p), s, point),
            sweep=point,
        )
        for d in config["datasets"]
        for v in kd_variants(config)
        for p in config["pairs"]
        if v in pair_variants(config, p)
        for point in [(), *sweep_points(config, v)]
        for s in config["seeds"]
    ]


def _ft(config: dict) -> list[RunId]:
    if not config["ft"]["enabled"]:
        return []
    return [
        RunId(
            "train_ft_sweep" if point else "train_ft",
            d,
            "ft",
            "",
            p["teacher"],
            p["student"],
            int(s),
            run_dir(d, "ft", pair_name(p), s, point),
            sweep=point,
        )
        for d in config["datasets"]
        for p in config["pairs"]
        for point in [(), *sweep_points(config, "ft", "ft")]
        for s in config["seeds"]
    ]


def _crd(config: dict) -> list[RunId]:
    return [
        RunId(
            "train_crd_sweep" if point else "train_crd",
            d,
            "crd",
            "+st" if v.endswith("+st") else "",
            p["teacher"],
            p["student"],
            int(s),
            run_dir(d, v, pair_name(p), s, point),
            sweep=point,
        )
        for d in config["datasets"]
        for v in crd_variants(config)
        for p in config["pairs"]
        for point in [(), *sweep_points(config, v, "crd")]
        for s in config["seeds"]
    ]


def cohort_name(cohort: list[str]) -> str:
    """A cohort's directory name: its peers in role order (the config refuses a repeated cohort; the
    same peers in another order are another cohort, with its own roles and group)."""
    return "-".join(cohort)


def _dml(config: dict) -> list[RunId]:
    return [
        RunId(
            "train_dml",
            d,
            "dml",
            "",
            c[0],
            "+".join(c[1:]),
            int(s),
            run_dir(d, "dml", cohort_name(c), s),
            peers=tuple(c),
        )
        for d in config["datasets"]
        for c in config["dml"]["cohorts"]
        for s in config["seeds"]
    ]


def _bss(config: dict) -> list[RunId]:
    variant = "" if config["bss"]["attack_size"] else "born-again"
    return [
        RunId(
            "train_bss",
            d,
            "bss",
            variant,
            teacher,
            student,
            int(s),
            f"{run_dir(d, 'bss', chain, s)}/gen{g}",
            generation=g,
        )
        for d in config["datasets"]
        for chain, teacher, student in bss_chains(config)
        for s in config["seeds"]
        for g in range(1, config["bss"]["generations"] + 1)
    ]


def plan(config: dict) -> list[RunId]:
    """Every run of a (validated) config, in a stable order."""
    return _base(config) + _kd(config) + _ft(config) + _crd(config) + _dml(config) + _bss(config)


def runs_of(config: dict, rule: str) -> list[str]:
    return [r.run_dir for r in plan(config) if r.rule == rule]


def identity_of(config: dict, run_directory: str | Path) -> RunId:
    """The planned identity of a run directory (a lookup in the plan, not a parse of the path)."""
    wanted = str(Path(run_directory))
    for run in plan(config):
        if str(Path(run.run_dir)) == wanted:
            return run
    raise KeyError(f"{run_directory} is not a run of this config")
