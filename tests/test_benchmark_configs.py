"""The CIFAR-100 benchmark of record: config/repdistiller.yaml and config/mdistiller.yaml planned through
the SLURM profile (job counts by rule, computed here from the published tables' pairs x methods x seeds),
per-network and per-pair settings reaching exactly their jobs' params, and the plan-time refusal of a
kd mode that cannot distil a pair."""

import copy
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from conftest import ROOT
from kdpipe.costplan import dag_jobs
from kdpipe.errors import KdpipeError
from kdpipe.workflow import base_options, kd_options, load_config, plan

# found, not imported: importing the plugin asks scontrol for the cluster's MinJobAge (9 s without a controller)
if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
    pytest.skip("snakemake-executor-plugin-slurm is not installed", allow_module_level=True)

SEEDS = 3
REPORT_RULES = ("summary", "tables", "cost_plot", "all")  # one job each for one dataset

# RepDistiller's table 1 is kdpipe/reference/repdistiller_cifar100.csv; its names -> kdpipe's rules and modes
REPDISTILLER_KD = {"kd": "st", "fitnet": "fitnet", "at": "at", "sp": "sp", "cc": "cc", "vid": "vid", "rkd": "rkd"}
REPDISTILLER_KD |= {"pkt": "pkt", "ab": "ab", "fsp": "fsp", "nst": "nst"}
REPDISTILLER_OWN_RULE = {"ft": "train_ft", "crd": "train_crd"}

# mdistiller README: KD vs DKD (6 same-family and 5 cross-family pairs), DKD's BETA from configs/cifar100/dkd/
MDISTILLER_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "shufflenet_v1"): 8.0,
    ("wrn_40_2", "shufflenet_v1"): 8.0,
    ("vgg13", "mobilenet_v2"): 6.0,
    ("resnet50", "mobilenet_v2"): 8.0,
    ("resnet32x4", "shufflenet_v2"): 8.0,
}
# mdistiller README, DOT table: KD+DOT (configs/cifar100/dot/*.yaml, DOT.DELTA 0.075) on three of those pairs
MDISTILLER_DOT = {("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("resnet32x4", "shufflenet_v2")}
LR_001 = {"mobilenet_v2", "shufflenet_v1", "shufflenet_v2"}  # RepDistiller's and mdistiller's lr 0.01 students

BAD_PAIR = """
datasets: [cifar100]
pairs:
  - {teacher: resnet110, student: resnet20}
  - {teacher: resnet32x4, student: mobilenet_v2}
kd: {modes: [st, at]}
"""


def repdistiller_cells() -> set[tuple[str, str, str]]:
    """(method, teacher, student) of every published student cell of RepDistiller's table."""
    with open(ROOT / "kdpipe" / "reference" / "repdistiller_cifar100.csv") as fh:
        return {(r["method"], r["teacher"], r["student"]) for r in csv.DictReader(fh) if r["method"] != "baseline"}


def tool_path(tmp_path) -> str:
    """A PATH with the shells Snakemake looks for and no SLURM commands: without a controller the plugin's
    scontrol waits 9 s for one, and a dry run needs none of them."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("which", "bash", "sh"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), folder / tool)
    return str(folder)


def snakemake(workdir, config, *args, env):
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(config), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """The two configs through profiles/slurm, and a config with a pair a mode cannot distil, at once."""
    tmp = tmp_path_factory.mktemp("benchmark")
    env = {
        "KDPIPE_SLURM_PARTITION": "gpu-test",
        "KDPIPE_SLURM_ACCOUNT": "kd-project",
        "PATH": tool_path(tmp),
        "PYTHONPATH": str(ROOT),
    }
    (tmp / "bad.yaml").write_text(BAD_PAIR)
    profile = ("--profile", str(ROOT / "profiles" / "slurm"))
    procs = {
        name: snakemake(tmp / name, ROOT / "config" / f"{name}.yaml", *profile, env=env)
        for name in ("repdistiller", "mdistiller")
    }
    procs["bad"] = snakemake(tmp / "bad", tmp / "bad.yaml", "--cores", "1", env=env)
    out = {}
    for name, proc in procs.items():
        out[name] = (proc.communicate(timeout=600)[0], proc.returncode)
    return out


def job_counts(output: str) -> dict:
    table = output.split("Job stats:")[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    counts.pop("total")
    return counts


def kd_jobs(output: str) -> set[tuple[str, str, str, int]]:
    """(variant, teacher, student, seed) of every listed train_kd job."""
    found = re.findall(r"output: results/cifar100/kd-([a-z+]+)/(\w+)-(\w+)/seed(\d+)/model\.pt", output)
    return {(v, t, s, int(seed)) for v, t, s, seed in found}


def report_jobs(pairs: int) -> dict:
    # per report group (pair): plots, and three races (test accuracy, training loss, training time)
    return {**dict.fromkeys(REPORT_RULES, 1), "group_plots": pairs, "race": 3 * pairs}


def planned_jobs(name: str) -> dict:
    """Jobs by rule as ``python -m kdpipe plan`` counts them (kdpipe.costplan)."""
    config = load_config(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
    return dict(Counter(job.rule for job in dag_jobs(config)))


def test_repdistiller_jobs_by_rule(dry_runs):
    output, rc = dry_runs["repdistiller"]
    assert rc == 0, output[-3000:]
    cells = repdistiller_cells()
    pairs = {(t, s) for _, t, s in cells}
    teachers = {t for t, _ in pairs}
    nets = teachers | {s for _, s in pairs}
    kd_cells = [c for c in cells if c[0] in REPDISTILLER_KD]
    expected = {
        "data_manifest": 1,
        "train_base": len(nets) * SEEDS,
        "teacher_cache": len(teachers),  # one teacher seed (teacher_seed: 0); auto: 240-epoch students pay off
        "ft_paraphraser": len(teachers),
        "train_kd": len(kd_cells) * SEEDS,
        **{rule: len([c for c in cells if c[0] == m]) * SEEDS for m, rule in REPDISTILLER_OWN_RULE.items()},
        **report_jobs(len(pairs)),
    }
    assert (len(pairs), len(nets), len({c[0] for c in cells}), len(kd_cells)) == (7, 11, 13, 7 * 11 - 1)
    assert job_counts(output) == expected
    assert planned_jobs("repdistiller") == expected
    # the listed students are the table's cells (FSP's "N/A" on wrn_40_2 -> wrn_40_1 not among them)
    listed = kd_jobs(output)
    assert listed == {(REPDISTILLER_KD[m], t, s, seed) for m, t, s in kd_cells for seed in range(SEEDS)}
    assert not any(job[0] == "fsp" and job[1:3] == ("wrn_40_2", "wrn_40_1") for job in listed)


def test_mdistiller_jobs_by_rule(dry_runs):
    output, rc = dry_runs["mdistiller"]
    assert rc == 0, output[-3000:]
    pairs = set(MDISTILLER_BETA)
    nets = {n for pair in pairs for n in pair}
    expected = {
        "data_manifest": 1,
        "train_base": len(nets) * SEEDS,
        # st and dkd on every pair, st+dot on the DOT table's, all reading a logits-only teacher cache
        "teacher_cache": len({t for t, _ in pairs}),
        "train_kd": (len(pairs) * 2 + len(MDISTILLER_DOT)) * SEEDS,
        **report_jobs(len(pairs)),
    }
    assert (len(pairs), len(nets)) == (11, 15)
    assert job_counts(output) == expected
    assert planned_jobs("mdistiller") == expected
    cells = {(m, t, s) for t, s in pairs for m in ("st", "dkd")} | {("st+dot", t, s) for t, s in MDISTILLER_DOT}
    assert kd_jobs(output) == {(*cell, seed) for cell in cells for seed in range(SEEDS)}


def test_a_mode_that_cannot_distil_a_pair_is_refused_at_parse(dry_runs):
    output, rc = dry_runs["bad"]
    assert rc != 0
    lines = [line for line in output.splitlines() if line.startswith("kdpipe")]
    assert lines == [
        "kdpipe: config pairs.1 (resnet32x4 -> mobilenet_v2), kd.modes at: pairs stages one to one, but the "
        "teacher has 3 stages and the student 4; drop the pair or the mode, or list at under pairs.1.skip"
    ], output[-3000:]
    assert "Job stats" not in output


def mdistiller() -> dict:
    """The config as the rules see it (the pair check is the dry runs' business)."""
    return load_config(yaml.safe_load((ROOT / "config" / "mdistiller.yaml").read_text()), check_pairs=False)


def params(config: dict) -> dict:
    """What each planned base and kd job's rule gets as ``params.opts``, by run directory."""
    out = {}
    for run in plan(config):
        if run.rule == "train_base":
            out[run.run_dir] = base_options(config, run.dataset, run.student, run.seed)
        elif run.rule == "train_kd":
            out[run.run_dir] = kd_options(
                config, run.dataset, run.method + run.variant, run.teacher, run.student, run.seed
            )
    return out


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {run for run in before if before[run] != after[run]}


def test_network_lr_reaches_the_runs_that_train_it():
    config = mdistiller()
    opts = params(config)
    assert len(opts) == 45 + 66 + 9
    for run, o in opts.items():
        net = o.get("s_name", o.get("net_name"))
        assert o["lr"] == (0.01 if net in LR_001 else 0.05), run
    assert opts["results/cifar100/kd-dkd/vgg13-mobilenet_v2/seed1"]["lr"] == 0.01
    assert opts["results/cifar100/base/vgg13/seed1"]["lr"] == 0.05  # the teacher of that student
    # changing it re-plans exactly the runs that train a mobilenet_v2: 3 baselines, 2 pairs x 2 modes x 3 seeds
    other = copy.deepcopy(config)
    other["train"]["by_net"]["mobilenet_v2"]["lr"] = 0.02
    assert changed(opts, params(other)) == {
        r for r, o in opts.items() if "mobilenet_v2" in (o.get("s_name"), o.get("net_name"))
    }
    assert len(changed(opts, params(other))) == 3 + 2 * 2 * 3  # (no DOT student is a mobilenet_v2)


def test_cifar100_benchmarks_crop_with_zero_padding_as_their_references():
    """RepDistiller's and mdistiller's CIFAR-100 loaders: RandomCrop(32, padding=4), zeros; the seed's
    KD-Zoo grid keeps its reflect padding (the dataset's own: auto, which a run's params leave out, so that
    runs planned before the setting existed are not re-run)."""
    for name in ("repdistiller", "mdistiller", "paper"):
        config = load_config(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()), check_pairs=False)
        opts = params(config)
        assert opts and {o.get("crop_padding") for o in opts.values()} == {None if name == "paper" else "zeros"}, name


def test_repdistiller_pkt_and_vid_get_its_eps_and_the_paper_grid_kd_zoos():
    """PKT's guard and VID's variance floor: RepDistiller's 1e-7 and 1e-5 in its config's jobs; the seed's grid
    leaves them unset (KD-Zoo's 1e-6, the losses' defaults)."""
    from kdpipe.losses import LOSSES

    assert LOSSES["pkt"].defaults["eps"] == LOSSES["vid"].defaults["eps"] == 1e-6
    for name, expected in (("repdistiller", {"pkt": 1e-7, "vid": 1e-5}), ("paper", {"pkt": None, "vid": None})):
        config = load_config(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()), check_pairs=False)
        for mode, eps in expected.items():
            got = {o.get("eps") for o in params(config).values() if o.get("kd_mode") == mode}
            assert got == {eps}, (name, mode, got)


def test_dot_students_get_mdistillers_delta_and_kd_recipe():
    opts = params(mdistiller())
    dot = {run: o for run, o in opts.items() if "dot_delta" in o}
    assert {(o["t_name"], o["s_name"]) for o in dot.values()} == MDISTILLER_DOT and len(dot) == 3 * SEEDS
    for run, o in dot.items():
        assert "/kd-st+dot/" in run and (o["kd_mode"], o["dot_delta"]) == ("st", 0.075)
        assert (o["ce_weight"], o["lambda_kd"], o["nesterov"]) == (0.1, 0.9, False)  # KD.LOSS, plain SGD


def test_pair_beta_reaches_exactly_that_pairs_dkd_jobs():
    config = mdistiller()
    opts = params(config)
    for run, o in opts.items():
        if o.get("kd_mode") == "dkd":
            assert o.get("beta", 8.0) == MDISTILLER_BETA[(o["t_name"], o["s_name"])], run  # 8.0: DKD's default
        else:
            assert "beta" not in o, run
    other = copy.deepcopy(config)
    (vgg,) = [p for p in other["pairs"] if (p["teacher"], p["student"]) == ("vgg13", "vgg8")]
    vgg["settings"]["dkd"]["beta"] = 7.0
    assert changed(opts, params(other)) == {f"results/cifar100/kd-dkd/vgg13-vgg8/seed{s}" for s in range(SEEDS)}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8", "skip": ["fitnet"]}]},
            "config pairs.0.skip: 'fitnet' is not a planned kd mode; "
            "kd.modes, kd.with_st and kd.with_dot list: at, dkd",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8", "settings": {"dkd": {"beta": -1}}}]},
            "config pairs.0.settings.dkd.beta: -1 is less than the minimum of 0",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8", "settings": {"dkdd": {"beta": 1}}}]},
            "config pairs.0.settings: unknown mode 'dkdd'",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8", "settings": {"at": {"beta": 1}}}]},
            "config pairs.0.settings.at.beta: not a setting of at; allowed: ce_weight, lambda_kd, p",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8"}, {"teacher": "resnet20", "student": "resnet8"}]},
            "config pairs.1: repeats pairs.0 (resnet20 -> resnet8)",
        ),
        ({"train": {"by_net": {"mobilenetv2": {"lr": 0.01}}}}, "config train.by_net: unknown network 'mobilenetv2'"),
        ({"train": {"by_net": {"resnet8": {"lr": 0}}}}, "config train.by_net.resnet8.lr: 0 is less than or equal to"),
        ({"train": {"by_net": {"resnet8": {"lrr": 1}}}}, "config train.by_net.resnet8: Additional properties"),
        (
            {"train": {"by_net": {"resnet8": {"lr": 0.01}}}, "dml": {"cohorts": [["resnet20", "resnet8"]]}},
            "config dml.cohorts.0: peers resnet20 and resnet8 get different lr (0.1 and 0.01) from train.by_net",
        ),
    ],
)
def test_pair_and_network_setting_errors(change, message):
    config = {"pairs": [{"teacher": "resnet20", "student": "resnet8"}], "kd": {"modes": ["at", "dkd"]}, **change}
    with pytest.raises(KdpipeError) as err:
        load_config(config)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_stagewise_modes_refuse_different_stage_counts():
    """Which modes fit resnet32x4 (3 stages) -> mobilenet_v2 (4): the losses built on the probed shapes."""
    from kdpipe.compat import probe
    from kdpipe.losses import LOSSES

    (t_shapes, t_model), (s_shapes, _) = probe("resnet32x4", 32, 100), probe("mobilenet_v2", 32, 100)
    refused = {}
    for mode, cls in LOSSES.items():
        try:
            cls(s_shapes, t_shapes, teacher_model=t_model)
        except KdpipeError as exc:
            refused[mode] = str(exc)
    stagewise = {"at", "sp", "vid", "afd", "ab", "fsp", "ofd", "kdsvd", "reviewkd"}
    # sp pairs every stage in its default form (stages all), not in RepDistiller's (stages last); nst only in
    # its form stages all (its default reads stage 3)
    assert set(refused) == stagewise == {m for m, cls in LOSSES.items() if cls.stagewise_for(cls.defaults)}
    assert refused["ofd"] == "kd_mode ofd: pairs stages one to one, but the teacher has 3 stages and the student 4"
    # a pair that does fit builds one FSP flow matrix per consecutive pair of the stem and all four stages
    fsp = LOSSES["fsp"](*[probe(n, 32, 100)[0] for n in ("vgg8", "vgg13")])
    assert fsp.keys == ("stem", "stage1", "stage2", "stage3", "stage4")


def test_a_pairs_own_dot_mode_that_cannot_distil_it_is_named_by_its_key():
    text = BAD_PAIR.replace("student: mobilenet_v2}", "student: mobilenet_v2, with_dot: [at]}").replace(
        "modes: [st, at]", "modes: [st]"
    )
    with pytest.raises(KdpipeError, match=r"^config pairs\.1 \(resnet32x4 -> mobilenet_v2\), pairs\.1\.with_dot at: "):
        load_config(yaml.safe_load(text))
