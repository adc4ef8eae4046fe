"""kd.sweep: config errors, the swept nodes' paths, identities and params, unswept runs unchanged, adding a
value adds only its nodes, the dry-run DAG, and the report's choice on validation (table and plot)."""

from __future__ import annotations

import copy
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT
from kdpipe.errors import KdpipeError
from kdpipe.plan import RunId
from kdpipe.report import frame as rf
from kdpipe.report import sweeps
from kdpipe.summary import summary_rows, write_summary
from kdpipe.workflow import (
    kd_options,
    load_config,
    plan,
    report_targets,
    run_options,
    student_inputs,
    sweep_point,
)

PAIRS = [{"teacher": "resnet14", "student": "resnet8"}]


def config_with(**kd) -> dict:
    return load_config({"seeds": [0, 1], "pairs": copy.deepcopy(PAIRS), "kd": {"modes": ["st", "at"], **kd}})


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"at": {"lambda_kd": [-1]}}, "config kd.sweep.at.lambda_kd.0: -1 is less than the minimum of 0"),
        ({"at": {"lambda_kd": [500, 500.0]}}, "config kd.sweep.at.lambda_kd: [500, 500.0] has non-unique elements"),
        ({"at": {"lambda_kd": []}}, "config kd.sweep.at.lambda_kd: [] should be non-empty"),
        ({"at": {"lambda_kd": 500}}, "config kd.sweep.at.lambda_kd: 500 is not of type 'array'"),
        ({"at": {}}, "config kd.sweep.at: {} should be non-empty"),
        ({"at": {"T": [2]}}, "config kd.sweep.at.T: not a setting of at; allowed: ce_weight, lambda_kd, lr, p"),
        ({"at": {"lr": [0]}}, "config kd.sweep.at.lr.0: 0 is less than or equal to the minimum of 0"),
        ({"st": {"T": [float("inf")]}}, "config kd.sweep.st.T.0: got inf; must be a finite number"),
        ({"st": {"logit_stand": ["maybe"]}}, "config kd.sweep.st.logit_stand.0: 'maybe' is not one of"),
        ({"rkd": {"lambda_kd": [1]}}, "config kd.sweep.rkd: rkd is not in kd.modes; a sweep varies the plain rkd"),
        ({"xyz": {"lambda_kd": [1]}}, "config kd.sweep: unknown mode 'xyz'"),
    ],
)
def test_config_errors(sweep, message):
    with pytest.raises(KdpipeError) as err:
        config_with(sweep=sweep)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"crd": {"sweep": {"lambda_kd": [0.5]}}}, "config crd.sweep: crd.enabled is false; a sweep varies the crd"),
        ({"crd": {"enabled": True, "sweep": {"nce_t": [0]}}}, "config crd.sweep.nce_t.0: 0 is less than or equal to"),
        ({"crd": {"enabled": True, "sweep": {"mode": ["near"]}}}, "config crd.sweep.mode.0: 'near' is not one of"),
        ({"ft": {"enabled": True, "sweep": {"k": [0.25]}}}, "config ft.sweep: Additional properties are not allowed"),
        ({"ft": {"enabled": True, "sweep": {"lambda_kd": [1, 1.0]}}}, "config ft.sweep.lambda_kd: [1, 1.0] has non-"),
    ],
)
def test_crd_and_ft_config_errors(section, message):
    with pytest.raises(KdpipeError) as err:
        load_config({"pairs": copy.deepcopy(PAIRS), **section})
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    if "ft.sweep: Additional" in message:
        assert str(err.value).endswith("allowed keys: lambda_kd, lr")


def test_parse_time_check_covers_swept_values():
    """kdsvd keeps k singular vectors of each stage; resnet8's last stage on digits (4 x 4) has 4."""
    config = {"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": {"modes": ["kdsvd"]}}
    load_config({**copy.deepcopy(config), "kd": {"modes": ["kdsvd"], "sweep": {"kdsvd": {"k": [1, 4]}}}})
    with pytest.raises(KdpipeError) as err:
        load_config({**config, "kd": {"modes": ["kdsvd"], "sweep": {"kdsvd": {"k": [1, 5]}}}})
    message = str(err.value)
    assert message.startswith("config pairs.0 (resnet8 -> resnet8), kd.sweep.kdsvd (k=5): k: got 5;"), message
    assert message.endswith("drop the value from the sweep, or list kdsvd under pairs.0.skip")


# ----------------------------------------------------------------------------------------------- plan


def test_grid_nodes_paths_identities_and_params():
    config = load_config(
        {
            "seeds": [0, 1],
            "pairs": [
                {"teacher": "resnet14", "student": "resnet8", "settings": {"at": {"lambda_kd": 800, "p": 3}}},
                {"teacher": "resnet8", "student": "resnet8", "skip": ["at"]},
            ],
            "train": {"by_net": {"resnet8": {"lr": 0.3}}},
            "kd": {
                "modes": ["at"],
                "with_st": ["at"],
                "settings": {"at": {"p": 4}},
                "sweep": {"at": {"lambda_kd": [250, 1000.0], "lr": [0.05, 0.01]}},
            },
        }
    )
    swept = [run for run in plan(config) if run.sweep]
    # 2 x 2 grid x 2 seeds, one pair (the other skips at); at+st is not swept
    assert len(swept) == 8 and {(r.rule, r.method, r.variant, r.teacher) for r in swept} == {
        ("train_kd_sweep", "at", "", "resnet14")
    }
    first = swept[0]
    assert first.run_dir == "results/digits/kd-at/resnet14-resnet8/lambda_kd~250/lr~0.05/seed0"
    assert first.log == "results/logs/digits/kd-at/resnet14-resnet8/lambda_kd~250/lr~0.05/seed0.log"
    assert first.sweep == (("lambda_kd", 250), ("lr", 0.05)) and first.group == "resnet14-resnet8"
    assert [r.run_dir.split("resnet8/")[1] for r in swept[::2]] == [
        "lambda_kd~250/lr~0.05/seed0",
        "lambda_kd~250/lr~0.01/seed0",
        "lambda_kd~1000/lr~0.05/seed0",
        "lambda_kd~1000/lr~0.01/seed0",
    ]
    record = json.loads(json.dumps(first.record()))  # as run.json and the summary rule's params hold it
    assert record["sweep"] == [["lambda_kd", 250], ["lr", 0.05]] and RunId.from_record(record) == first
    # the point's values win over kd.settings, the pair's settings and train.by_net; the rest stays
    point = sweep_point(config, "at", "lambda_kd~1000/lr~0.01")
    assert point == (("lambda_kd", 1000.0), ("lr", 0.01))
    opts = kd_options(config, "digits", "at", "resnet14", "resnet8", 1, point)
    plain = kd_options(config, "digits", "at", "resnet14", "resnet8", 1)
    assert (plain["lambda_kd"], plain["p"], plain["lr"]) == (800, 3, 0.3)
    assert (opts["lambda_kd"], opts["p"], opts["lr"]) == (1000.0, 3, 0.01)
    assert {k for k in opts if opts[k] != plain[k]} == {"lambda_kd", "lr"}
    with pytest.raises(KdpipeError, match="lambda_kd~2 is not a point of kd.sweep.at"):
        sweep_point(config, "at", "lambda_kd~2")


def all_params(config: dict) -> dict:
    """run dir -> (params, inputs) of every kd, crd and ft student node (what Snakemake compares to re-run one)."""
    out = {}
    for run in plan(config):
        rule = run.rule.removesuffix("_sweep")
        if rule in ("train_kd", "train_crd"):
            method = run.method if rule == "train_kd" else "crd"
            inputs = student_inputs(config, rule, run.dataset, method, run.teacher, run.seed)
            out[run.run_dir] = (run_options(config, run), inputs)
        elif rule == "train_ft":
            out[run.run_dir] = (run_options(config, run), None)
    return out


def test_unswept_runs_keep_their_identities_params_and_inputs():
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    plain = load_config(copy.deepcopy(default))
    swept = copy.deepcopy(default)
    swept["kd"]["sweep"] = {"st": {"T": [1, 2]}, "rkd": {"lambda_kd": [0.5, 2], "lr": [0.01]}}
    swept["crd"]["sweep"] = {"lambda_kd": [0.8]}
    swept["ft"]["sweep"] = {"lambda_kd": [100, 400]}
    swept = load_config(swept)
    before = {run.run_dir: run.record() for run in plan(plain)}
    after = {run.run_dir: run.record() for run in plan(swept)}
    assert {k: after[k] for k in before} == before  # every record as it was (no 'sweep' key added)
    assert len(after) - len(before) == (2 + 2 + 1 + 2) * 3
    assert before["results/digits/kd-st/resnet20-resnet8w8/seed0"] == {
        "rule": "train_kd",
        "dataset": "digits",
        "method": "st",
        "variant": "",
        "teacher": "resnet20",
        "student": "resnet8w8",
        "seed": 0,
        "run_dir": "results/digits/kd-st/resnet20-resnet8w8/seed0",
        "generation": None,
        "peers": [],
        "log": "results/logs/digits/kd-st/resnet20-resnet8w8/seed0.log",
        "group": "resnet20-resnet8w8",
    }
    old, new = all_params(plain), all_params(swept)
    ft_dir = "results/digits/ft/resnet20-resnet8w8/seed2"
    assert {k: new[k] for k in old} == old
    assert {k for k in old if "/crd/" in k or "/ft/" in k} and len(new) - len(old) == (2 + 2 + 1 + 2) * 3
    ft, plain_ft = new["results/digits/ft/resnet20-resnet8w8/lambda_kd~400/seed2"][0], old[ft_dir][0]
    assert ft["lambda_kd"] == 400 and {k for k in ft if ft[k] != plain_ft[k]} == {"lambda_kd"}
    crd, crd_inputs = new["results/digits/crd/resnet20-resnet8w8/lambda_kd~0.8/seed0"]
    assert crd["lambda_kd"] == 0.8 and "cache" in crd_inputs  # the sweep's students read the teacher cache too
    # the report gains the sweeps' tables and plots, nothing else changes
    added = set(report_targets(swept)) - set(report_targets(plain))
    assert set(report_targets(plain)) <= set(report_targets(swept))
    assert added == {
        "results/tables/sweeps/digits.md",
        "results/tables/sweeps/digits.csv",
        "results/plots/digits/resnet20-resnet8w8/sweep-st-T.png",
        "results/plots/digits/resnet20-resnet8w8/sweep-rkd-lambda_kd.png",
        "results/plots/digits/resnet20-resnet8w8/sweep-rkd-lr.png",
        "results/plots/digits/resnet20-resnet8w8/sweep-crd-lambda_kd.png",
        "results/plots/digits/resnet20-resnet8w8/sweep-ft-lambda_kd.png",
    }


def test_adding_a_value_adds_only_its_nodes():
    old = all_params(config_with(sweep={"at": {"lambda_kd": [250, 500]}, "st": {"T": [2]}}))
    new = all_params(config_with(sweep={"at": {"lambda_kd": [250, 500, 2000]}, "st": {"T": [2]}}))
    assert {k: new[k] for k in old} == old
    added = sorted(set(new) - set(old))
    assert added == [f"results/digits/kd-at/resnet14-resnet8/lambda_kd~2000/seed{s}" for s in (0, 1)]
    assert all(new[k][0]["lambda_kd"] == 2000 and new[k][0]["kd_mode"] == "at" for k in added)


# digits' augmentation has 25 views per image (a cache of resnet8w8 pays off beyond 25 live teacher passes)
DIGITS_VIEWS = 25


def cache_config(epochs: int, teacher_cache: str = "auto", sweep: bool = False) -> dict:
    """README "Tuning"'s cache case: one st and one crd student of a teacher, with or without their sweeps."""
    raw = {
        "seeds": [0],
        "pairs": [{"teacher": "resnet8w8", "student": "resnet8w8"}],
        "train": {"epochs": epochs},
        "data": {"train_subset": 64},
        "teacher_cache": teacher_cache,
        "kd": {"modes": ["st"], **({"sweep": {"st": {"T": [2, 4]}}} if sweep else {})},
        "crd": {"enabled": True, **({"sweep": {"lambda_kd": [0.5]}} if sweep else {})},
    }
    return load_config(raw)


def kd_crd_inputs(config: dict) -> dict:
    """run dir -> the input files of every kd and crd student node (a sweep's included)."""
    return {run_dir: inputs for run_dir, (_, inputs) in all_params(config).items() if inputs is not None}


@pytest.mark.parametrize(
    "epochs, teacher_cache, reads",
    [
        (10, "auto", False),  # 2 unswept students x 10 = 20 passes <= 25 views (the sweep's 3 would make it 50)
        (13, "auto", True),  # 2 x 13 = 26 > 25: the unswept students read the cache, so the sweep's do too
        (1, "on", True),
        (200, "off", False),
    ],
)
def test_a_sweep_follows_the_unswept_cache_decision(epochs, teacher_cache, reads):
    """``teacher_cache: auto`` is decided from the unswept students alone: adding a sweep changes neither the
    decision nor the inputs of the unswept runs (so their results stay finished), and the sweep's students read
    the cache exactly where the unswept students do; ``on``/``off`` hold for every student."""
    from kdpipe.workflow import cache_decision, cache_plan

    assert (2 * epochs > DIGITS_VIEWS) == reads or teacher_cache != "auto"
    plain, swept = cache_config(epochs, teacher_cache), cache_config(epochs, teacher_cache, sweep=True)
    assert cache_plan(swept) == cache_plan(plain)
    assert cache_decision(swept, "digits", "resnet8w8", 0) == cache_decision(plain, "digits", "resnet8w8", 0)
    assert cache_decision(plain, "digits", "resnet8w8", 0)[0] is reads
    before, after = kd_crd_inputs(plain), kd_crd_inputs(swept)
    assert sorted(before) == [
        "results/digits/crd/resnet8w8-resnet8w8/seed0",
        "results/digits/kd-st/resnet8w8-resnet8w8/seed0",
    ]
    assert {k: after[k] for k in before} == before  # the plain runs read what they read without the sweep
    added = sorted(set(after) - set(before))
    assert added == [
        "results/digits/crd/resnet8w8-resnet8w8/lambda_kd~0.5/seed0",
        "results/digits/kd-st/resnet8w8-resnet8w8/T~2/seed0",
        "results/digits/kd-st/resnet8w8-resnet8w8/T~4/seed0",
    ]
    cache = {"cache": "results/digits/cache/resnet8w8/seed0/cache.pt"}
    cache["manifest"] = "results/digits/cache/resnet8w8/seed0/manifest.json"
    expected = {"data": "results/digits/data/manifest.json", "teacher": "results/digits/base/resnet8w8/seed0/model.pt"}
    for run_dir in [*before, *added]:
        assert after[run_dir] == {**expected, **(cache if reads else {})}, run_dir


def test_the_key_order_of_a_grid_changes_no_run():
    """A sweep point's keys are ordered by name wherever it is built (kd, crd, ft sweeps): two configs that list
    a grid's keys in other orders plan the same runs, records, directories, options, inputs and reports."""
    from kdpipe.plan import sweep_dir
    from kdpipe.workflow import report_targets

    def config(reverse: bool) -> dict:
        def grid(*items):
            return dict(reversed(items) if reverse else items)

        return load_config(
            {
                "seeds": [0, 1],
                "pairs": copy.deepcopy(PAIRS),
                "kd": {"modes": ["at"], "sweep": {"at": grid(("lr", [0.01, 0.05]), ("p", [4, 2]))}},
                "crd": {"enabled": True, "sweep": grid(("nce_t", [0.1]), ("lambda_kd", [0.5, 0.8]))},
                "ft": {"enabled": True, "sweep": grid(("lr", [0.01]), ("lambda_kd", [100]))},
            }
        )

    first, second = config(False), config(True)
    assert list(second["kd"]["sweep"]["at"]) == ["p", "lr"]  # the configs do differ in order
    assert [r.record() for r in plan(first)] == [r.record() for r in plan(second)]
    assert all_params(first) == all_params(second) and report_targets(first) == report_targets(second)
    swept = [r for r in plan(second) if r.sweep and r.seed == 0]
    assert [r.run_dir.split("resnet14-resnet8/")[1] for r in swept] == [
        "lr~0.01/p~4/seed0",  # keys by name: lr varies slowest, each key's values in the config's order
        "lr~0.01/p~2/seed0",
        "lr~0.05/p~4/seed0",
        "lr~0.05/p~2/seed0",
        "lambda_kd~100/lr~0.01/seed0",  # ft, then crd: the plan's order of sections
        "lambda_kd~0.5/nce_t~0.1/seed0",
        "lambda_kd~0.8/nce_t~0.1/seed0",
    ]
    assert swept[0].sweep == (("lr", 0.01), ("p", 4)) and swept[0].run_dir.startswith("results/digits/kd-at/")
    # built from any order, a point is the same identity and directory
    assert RunId("train_kd_sweep", "digits", "at", "", "a", "b", 0, "d", sweep=(("p", 4), ("lr", 0.01))).sweep == (
        ("lr", 0.01),
        ("p", 4),
    )
    assert sweep_dir((("p", 4), ("lr", 0.01))) == "lr~0.01/p~4"
    assert sweep_point(second, "at", "lr~0.01/p~4") == (("lr", 0.01), ("p", 4))
    rows = summary_rows([run.record() for run in plan(second)])
    assert [r["sweep"] for r in rows if r["sweep"]][:2] == ["lr=0.01; p=4", "lr=0.01; p=4"]  # seeds 0 and 1
    assert rf.method_label({"method": "at", "variant": "", "sweep": "lr=0.01; p=4"}) == "at lr=0.01, p=4"


def test_summary_rows_carry_the_sweep():
    config = config_with(sweep={"at": {"lambda_kd": [250, 1000]}})
    rows = summary_rows([run.record() for run in plan(config)])  # nothing ran: every row 'missing'
    swept = [(r["sweep"], r["run_dir"]) for r in rows if r["sweep"]]
    assert swept[0] == ("lambda_kd=250", "results/digits/kd-at/resnet14-resnet8/lambda_kd~250/seed0")
    assert len(swept) == 4 and all(r["status"] == "missing" for r in rows)
    assert {r["sweep"] for r in rows if r["method"] == "st"} == {""}


def snakemake_dry_run(tmp_path, config: str):
    from test_workflow import job_counts, snakemake

    (tmp_path / "c.yaml").write_text(config)
    out = snakemake("-n", "--cores", "1", "--configfile", "c.yaml", workdir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return job_counts(out.stdout), out.stdout


def test_dry_run_lists_the_swept_jobs(tmp_path):
    counts, dry = snakemake_dry_run(
        tmp_path,
        "seeds: [0, 1]\npairs: [{teacher: resnet14, student: resnet8}]\nreport: {races: false}\n"
        "kd: {modes: [st, at], sweep: {at: {lambda_kd: [250, 500]}, st: {T: [2, 8], lr: [0.05]}}}\n"
        "crd: {enabled: true, sweep: {lambda_kd: [0.5]}}\nft: {enabled: true, sweep: {lambda_kd: [100]}}\n",
    )
    assert counts["train_kd"] == 4 and counts["train_kd_sweep"] == (2 + 2) * 2, counts
    assert counts["train_crd"] == counts["train_crd_sweep"] == counts["train_ft_sweep"] == 2, counts
    assert counts["ft_paraphraser"] == 2, counts  # one per teacher seed, shared by the ft sweep's students
    assert counts["sweep_tables"] == 1 and counts["sweep_plot"] == 5, counts
    outputs = re.findall(r"^\s+output: (\S+?)(?:,|$)", dry, re.M)
    assert "results/digits/kd-at/resnet14-resnet8/lambda_kd~500/seed1/model.pt" in outputs
    assert "results/digits/kd-st/resnet14-resnet8/T~8/lr~0.05/seed0/model.pt" in outputs
    assert "results/digits/kd-st/resnet14-resnet8/seed0/model.pt" in outputs  # the mode's own run, unchanged
    assert "results/digits/crd/resnet14-resnet8/lambda_kd~0.5/seed1/model.pt" in outputs
    assert "results/digits/ft/resnet14-resnet8/lambda_kd~100/seed0/model.pt" in outputs
    for plot in ("sweep-at-lambda_kd", "sweep-st-T", "sweep-st-lr"):
        assert f"results/plots/digits/resnet14-resnet8/{plot}.png" in outputs
    assert "results/tables/sweeps/digits.md" in outputs


def test_seeds_together_packs_each_sweep_points_seeds(tmp_path):
    """resources.seeds_together: a sweep point's seeds are one job too (train_kd_sweep_seeds, ...), with the
    point's options for every seed; the cost plan lists the same jobs."""
    import collections

    from kdpipe.costplan import dag_jobs

    text = (
        "seeds: [0, 1]\npairs: [{teacher: resnet14, student: resnet8}]\nreport: {races: false}\n"
        "kd: {modes: [st], sweep: {st: {T: [2, 8]}}}\ncrd: {enabled: true, sweep: {lambda_kd: [0.5]}}\n"
        "ft: {enabled: true, sweep: {lambda_kd: [100]}}\nresources: {seeds_together: true}\n"
    )
    counts, dry = snakemake_dry_run(tmp_path, text)
    for rule, jobs in (("train_kd", 1), ("train_kd_sweep", 2), ("train_crd_sweep", 1), ("train_ft_sweep", 1)):
        assert counts[f"{rule}_seeds"] == jobs and rule not in counts, counts
    planned = collections.Counter(job.rule for job in dag_jobs(load_config(yaml.safe_load(text))))
    assert dict(planned) == counts
    # the point's options reach every seed's run: run the rule's params function as Snakemake does
    from kdpipe.workflow import SEEDED_RULES, seeds_options

    wildcards = collections.namedtuple("W", "dataset variant teacher student sweep")(
        "digits", "st", "resnet14", "resnet8", "T~8"
    )
    opts = seeds_options(load_config(yaml.safe_load(text)), "train_kd_sweep", wildcards)
    assert [(o["seed"], o["T"], o["kd_mode"]) for o in opts.values()] == [(0, 8, "st"), (1, 8, "st")]
    assert SEEDED_RULES["train_kd_sweep"].entry == "kd"
    assert "results/digits/kd-st/resnet14-resnet8/T~8/seed1/model.pt" in dry


# ----------------------------------------------------------------------------------------------- report

# (best_val_acc, test_acc_at_best) per seed, per value of st's T: T=2 is best on validation, T=8 on test
SWEEP = {
    1.0: [(80.0, 79.0), (81.0, 78.0), (79.0, 80.0)],
    2.0: [(86.0, 82.0), (85.0, 83.0), (87.0, 81.0)],
    4.0: [(84.0, 84.0), (84.0, 85.0), (83.0, 83.0)],
    8.0: [(82.0, 90.0), (83.0, 91.0), (81.0, 89.0)],
}
OWN = [(84.0, 84.5), (84.0, 84.0), (83.0, 83.5)]  # the plain st run
BASE = [(75.0, 74.0), (76.0, 75.0), (74.0, 76.0)]  # the student's baseline


def _write_run(run: RunId, val: float, test: float) -> None:
    d = Path(run.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    role = {"params": 1000, "best_epoch": 2, "best_val_acc": val, "test_acc_at_best": test, "last_test_acc": test - 1}
    role.update(last_val_acc=val)
    record = {"method": run.method, "epochs": 3, "roles": {"student" if run.teacher else "net": role}}
    record.update(train_time_s=3.0, mean_epoch_s=1.0, settings={})
    (d / "run.json").write_text(json.dumps(record))
    (d / "metrics.csv").write_text("epoch,role,test_acc\n")


@pytest.fixture
def swept_frame(tmp_path, monkeypatch):
    """A summary of st's T sweep (3 seeds) beside the plain st run and the baseline, through write_summary."""
    monkeypatch.chdir(tmp_path)
    config = load_config(
        {
            "seeds": [0, 1, 2],
            "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
            "kd": {"modes": ["st"], "sweep": {"st": {"T": list(SWEEP)}}},
        }
    )
    runs = [run for run in plan(config) if run.student == "resnet8"]
    for run in runs:
        if run.sweep:
            val, test = SWEEP[run.sweep[0][1]][run.seed]
        else:
            val, test = (OWN if run.method == "st" else BASE)[run.seed]
        _write_run(run, val, test)
    write_summary([run.record() for run in runs], "results/summary.csv", teachers=["resnet14"])
    return rf.load_summary("results/summary.csv")


def test_labels_of_swept_rows(swept_frame):
    labels = list(dict.fromkeys(swept_frame["label"]))
    assert labels == ["baseline", "st", "st T=1", "st T=2", "st T=4", "st T=8"]
    assert rf.method_label({"method": "at", "variant": "", "sweep": "lambda_kd=500; p=2"}) == "at \u03bb=500, p=2"


def test_best_is_chosen_on_validation_and_every_test_number_stays(swept_frame, tmp_path):
    stats = sweeps.sweep_stats(swept_frame, "digits")
    assert list(stats["sweep"]) == ["T=1", "T=2", "T=4", "T=8"]
    for (_, row), per_seed in zip(stats.iterrows(), SWEEP.values()):
        assert row["n"] == 3 and row["not_ok"] == 0
        assert row["val_mean"] == pytest.approx(statistics.mean(v for v, _ in per_seed))
        assert row["val_std"] == pytest.approx(statistics.stdev(v for v, _ in per_seed))
        assert row["test_mean"] == pytest.approx(statistics.mean(t for _, t in per_seed))
        assert row["test_std"] == pytest.approx(statistics.stdev(t for _, t in per_seed))
    assert list(stats["best"]) == [False, True, False, False]  # T=2 (val 86), not T=8 (test 90)
    assert stats["test_mean"].idxmax() == 3

    md, csv = tmp_path / "sweeps.md", tmp_path / "sweeps.csv"
    sweeps.write_sweep_tables(swept_frame, "digits", md, csv)
    lines = md.read_text().splitlines()
    assert "### resnet14 \u2192 resnet8: st, T" in lines
    assert "| 2 | 86.00 \u00b1 1.00 | 82.00 \u00b1 1.00 | 81.00 \u00b1 1.00 | 3 | **best** |" in lines
    assert "| 8 | 82.00 \u00b1 1.00 | 90.00 \u00b1 1.00 | 89.00 \u00b1 1.00 | 3 |  |" in lines
    assert "| st (own settings) | 83.67 \u00b1 0.58 | 84.00 \u00b1 0.50 | 83.00 \u00b1 0.50 | 3 |  |" in lines
    assert sum(line.endswith("| **best** |") for line in lines) == 1
    table = [line.split(",") for line in csv.read_text().splitlines()]
    assert table[0] == sweeps.CSV_COLUMNS and [row[-1] for row in table[1:]] == ["False", "True", "False", "False"]


def test_without_a_validation_split_no_point_is_best(swept_frame, tmp_path):
    # data.val_size 0 (config/repdistiller.yaml): every validation accuracy is empty, so nothing is chosen
    frame = swept_frame.assign(best_val_acc=float("nan"))
    stats = sweeps.sweep_stats(frame, "digits")
    assert stats["n"].tolist() == [3, 3, 3, 3] and not stats["best"].any()
    md, csv = tmp_path / "sweeps.md", tmp_path / "sweeps.csv"
    sweeps.write_sweep_tables(frame, "digits", md, csv)
    text = md.read_text()
    assert "**best**" not in text.split("### ", 1)[1] and "hold out no validation split" in text
    assert [row.split(",")[-1] for row in csv.read_text().splitlines()[1:]] == ["False"] * 4


def test_ties_on_validation_go_to_more_seeds_then_the_lower_std_then_the_first_listed():
    import pandas as pd

    stats = pd.DataFrame(
        {
            "group": ["g"] * 4,
            "method": ["st"] * 4,
            "n": [2, 3, 3, 3],
            "val_mean": [85.0, 85.0, 85.0, 84.0],
            "val_std": [0.1, 2.0, 1.0, 0.0],
        }
    )
    assert list(sweeps.best_points(stats)) == [False, False, True, False]
    stats["val_std"] = [0.1, 1.0, 1.0, 0.0]
    assert list(sweeps.best_points(stats)) == [False, True, False, False]


def test_sweep_plot_is_drawn(swept_frame, tmp_path):
    out = sweeps.plot_sweep(swept_frame, "digits", "resnet14-resnet8", "st", "T", tmp_path / "p" / "sweep-st-T.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 400
    assert sweeps._axis_values([1.0, 2.0, 4.0, 8.0])[2] is False  # 8x: linear
    assert sweeps._axis_values([250.0, 500.0, 1000.0, 2500.0])[2] is True  # 10x: log
    assert sweeps._axis_values(["kdzoo", "gradcam"])[1] == ["kdzoo", "gradcam"]
    missing = sweeps.plot_sweep(swept_frame, "digits", "resnet14-resnet8", "st", "lr", tmp_path / "none.png")
    assert missing.is_file()  # a placeholder, not an error


def test_a_grid_listed_in_any_key_order_is_reported_by_key_name(tmp_path, monkeypatch):
    """A grid written {lr: .., T: ..} is planned, labelled, tabled and plotted with its keys by name (T, lr),
    one row per point, grouped under its pair and mode."""
    monkeypatch.chdir(tmp_path)
    grid = {"lr": [0.05, 0.1], "T": [2, 8]}
    config = load_config(
        {"seeds": [0, 1], "pairs": copy.deepcopy(PAIRS), "kd": {"modes": ["st"], "sweep": {"st": grid}}}
    )
    runs = [run for run in plan(config) if run.student == "resnet8"]
    for run in runs:  # val = 80 + T + 10 lr + seed, test = val - 5: T=8, lr=0.1 is best
        point = dict(run.sweep) or {"T": 4, "lr": 0.1}
        val = 80 + point["T"] + 10 * point["lr"] + run.seed
        _write_run(run, val, val - 5)
    write_summary([run.record() for run in runs], "results/summary.csv", teachers=["resnet14"])
    frame = rf.load_summary("results/summary.csv")
    labels = list(dict.fromkeys(frame["label"]))
    assert labels == ["baseline", "st", "st T=2, lr=0.05", "st T=2, lr=0.1", "st T=8, lr=0.05", "st T=8, lr=0.1"]
    md, csv = tmp_path / "sweeps.md", tmp_path / "sweeps.csv"
    stats = sweeps.write_sweep_tables(frame, "digits", md, csv)
    assert list(stats["sweep"]) == ["T=2; lr=0.05", "T=2; lr=0.1", "T=8; lr=0.05", "T=8; lr=0.1"]
    assert list(stats["best"]) == [False, False, False, True] and set(stats["n"]) == {2}
    lines = md.read_text().splitlines()
    assert "### resnet14 \u2192 resnet8: st, T, lr" in lines
    assert lines[lines.index("### resnet14 \u2192 resnet8: st, T, lr") + 2].startswith("| T | lr | best-epoch val acc")
    assert "| 8 | 0.1 | 89.50 \u00b1 0.71 | 84.50 \u00b1 0.71 | 83.50 \u00b1 0.71 | 2 | **best** |" in lines
    for key in ("T", "lr"):
        out = sweeps.plot_sweep(frame, "digits", "resnet14-resnet8", "st", key, tmp_path / f"sweep-st-{key}.png")
        with Image.open(out) as image:
            assert image.format == "PNG" and image.size[0] > 800


def test_worked_example_merges_onto_the_default():
    """README "Tuning": config/sweep.yaml after config/config.yaml (Snakemake merges config files key by key)."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / "sweep.yaml").read_text()))
    config = load_config(config)
    assert config["kd"]["modes"] == ["st", "rkd"] and config["ft"]["enabled"] and config["dml"]["cohorts"]
    swept = [run.run_dir for run in plan(config) if run.sweep]
    assert len(swept) == 4 * 3 and swept[0] == "results/digits/kd-st/resnet20-resnet8w8/T~1/seed0"


@pytest.mark.slow
def test_a_sweep_added_to_finished_runs_plans_only_its_jobs(tmp_path):
    """Real tiny runs: finished runs stay finished when a sweep is added, and a value added later plans only
    that value's students (and the report)."""
    from test_workflow import job_counts, snakemake

    config = (
        "seeds: [0]\npairs: [{teacher: resnet8, student: resnet8}]\ndata: {train_subset: 32}\n"
        "train: {epochs: 1, batch_size: 16}\nteacher_cache: 'off'\nkd: {modes: [st]%s}\n"
    )

    def plan(sweep="", run=False):
        """Jobs by rule that a dry run lists, or that a real run planned (it prints the same Job stats first)."""
        (tmp_path / "c.yaml").write_text(config % sweep)
        out = snakemake(
            "results/summary.csv", *([] if run else ["-n"]), "--cores", "2", "--configfile", "c.yaml", workdir=tmp_path
        )
        assert out.returncode == 0, out.stderr[-3000:]
        text = out.stdout + out.stderr
        return job_counts(text) if "Job stats" in text else {}, out.stdout

    assert plan(run=True)[0] == {"data_manifest": 1, "train_base": 1, "train_kd": 1, "summary": 1}
    assert plan()[0] == {}
    # the finished runs stay finished: the sweep's run plans its student and the summary only
    assert plan(", sweep: {st: {T: [2]}}", run=True)[0] == {"train_kd_sweep": 1, "summary": 1}
    counts, dry = plan(", sweep: {st: {T: [2, 8]}}")
    assert counts == {"train_kd_sweep": 1, "summary": 1}
    assert "results/digits/kd-st/resnet8-resnet8/T~8/seed0/model.pt" in dry and "T~2/seed0/model.pt" not in dry
    record = json.loads((tmp_path / "results/digits/kd-st/resnet8-resnet8/T~2/seed0/run.json").read_text())
    assert record["run"]["sweep"] == [["T", 2]] and record["config"]["T"] == 2.0
    summary = (tmp_path / "results" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("dataset,method,variant,sweep,") and any(",st,,T=2," in row for row in summary)
