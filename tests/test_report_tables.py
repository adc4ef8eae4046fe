"""Comparison tables: means/stds over seeds, delta vs baseline, the published join, not-ok runs, md/csv/tex."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from kdpipe.report import frame as rf
from kdpipe.options import resolve
from kdpipe.report.reference import RECIPE_CONFIGS, follows, load_reference, preferred, published_for, recipe_config
from kdpipe.report.tables import _cells, _markdown, comparison_table, write_tables
from kdpipe.plan import RunId
from kdpipe.summary import write_summary
from kdpipe.workflow import SEEDED_RULES, plan, run_options

# (test_acc_at_best, last_test_acc) per seed
BASE20 = {0: (92.10, 92.00), 1: (92.50, 92.30), 2: (92.30, 92.45)}
BASE110 = {0: (93.70, 93.60), 1: (94.00, 93.90), 2: (93.85, 93.95)}
BASE56 = {0: (72.50, 72.40)}
BASE_WRN402 = {0: (75.10, 75.00)}
ST = {0: (92.90, 92.80), 1: (93.20, 93.00), 2: (92.75, 92.95)}
AT_ST = {0: (93.10, 93.00), 1: (92.95, 93.05)}
DML = {0: {"net1": ("resnet110", 94.20, 94.10), "net2": ("resnet20", 93.00, 92.90)}}
ST56 = {0: (70.90, 70.80)}
ST_WRN = {0: (74.00, 73.90)}
TEACHERS = ("resnet110", "resnet56", "wrn_40_2")
PAIR = "resnet110-resnet20"


def _role(method, teacher, student, best, last, variant="", generation=None):
    return {
        "method": method,
        "variant": variant,
        "teacher": teacher,
        "student": student,
        "generation": generation,
        "params": 1000,
        "best_epoch": 3,
        "best_val_acc": best - 0.5,
        "test_acc_at_best": best,
        "last_val_acc": last - 0.5,
        "last_test_acc": last,
    }


# The recipe each fabricated cell trained with: RepDistiller's for its own pairs, KD-Zoo's (paper.yaml) otherwise.
REPDISTILLER_NETS = {"resnet56", "wrn_40_2", "wrn_16_2"}


def trained_as(run: RunId, entry: str, recipe: str | None = None, **changed) -> dict:
    """The resolved options (``run.json``'s ``config``) of ``run`` trained as ``config/<recipe>`` plans it,
    with ``changed`` on top: what kdpipe.runner records of a workflow run."""
    if recipe is None:
        recipe = "repdistiller.yaml" if {run.teacher, run.student} & REPDISTILLER_NETS else "paper.yaml"
    planned = run_options(recipe_config(recipe), run)
    inputs = {"t_model": "results/teacher.pt"} if entry != "base" and entry != "dml" else {}
    return resolve(entry, {**inputs, **planned, **changed})


def _write_run(
    run_dir: Path,
    dataset: str,
    seed: int,
    entry: str,
    roles: dict,
    info: dict | None = None,
    config: dict | None = None,
) -> None:
    """A run directory as kdpipe.runner.finalize leaves it: run.json (the fields the summary reads) + metrics.csv."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "kdpipe": "0.1.0",
        "entry": entry,
        "method": entry,
        "dataset": dataset,
        "seed": seed,
        "epochs": 4,
        "roles": roles,
        "train_time_s": 8.0,
        "mean_epoch_s": 2.0,
        "wall_time_s": 9.0,
        "resumed_at_epochs": [],
        "device": "cpu",
        "info": info or {},
    }
    if config is not None:
        record["config"] = config
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    lines = ["epoch,role,lr,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,epoch_time_s,images_per_s"]
    for role, r in roles.items():
        metrics_role = "net" if entry == "base" else role
        for epoch in range(1, 5):
            acc = r["last_test_acc"] if epoch == 4 else r["test_acc_at_best"] - 4 + epoch
            lines.append(f"{epoch},{metrics_role},0.1,1.0,50.0,1.0,{acc - 0.5},1.0,{acc},2.0,100.0")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def fabricate(tmp_path: Path, dataset: str, bad: bool = True, recipes: dict | None = None) -> pd.DataFrame:
    """Runs of one dataset under tmp_path/results, their summary.csv, loaded as the report frame.  Each run
    trained as :func:`trained_as` says, or as ``recipes[(method label, teacher, student)]`` = (recipe, changed
    options); a baseline's teacher is ''."""
    results = tmp_path / "results"
    data = results / dataset
    dirs = []
    recipes = recipes or {}

    def config(run, entry, label):
        recipe, changed = recipes.get((label, run.teacher, run.student), (None, {}))
        return trained_as(run, entry, recipe, **changed)

    def base(net, accs):
        for seed, (best, last) in accs.items():
            d = data / "base" / net / f"seed{seed}"
            run = RunId("train_base", dataset, "baseline", "", "", net, seed, str(d))
            roles = {"net": _role("baseline", "", net, best, last)}
            _write_run(d, dataset, seed, "base", roles, config=config(run, "base", "baseline"))
            dirs.append(run)

    def kd(mode, teacher, student, accs, variant=""):
        for seed, (best, last) in accs.items():
            d = data / f"kd-{mode}{variant}" / f"{teacher}-{student}" / f"seed{seed}"
            info = {
                "loss": {"mode": mode, "settings": {"lambda_kd": 0.1, "T": 4.0}},
                "st_weight": 1.0 if variant else 0.0,
            }
            run = RunId("train_kd", dataset, mode, variant, teacher, student, seed, str(d))
            roles = {"student": _role(mode, teacher, student, best, last, variant)}
            _write_run(d, dataset, seed, "kd", roles, info, config(run, "kd", mode + variant))
            dirs.append(run)

    base("resnet110", BASE110)
    base("resnet20", BASE20)
    base("resnet56", BASE56)
    base("wrn_40_2", BASE_WRN402)
    kd("st", "resnet110", "resnet20", ST)
    kd("at", "resnet110", "resnet20", AT_ST, variant="+st")
    for seed, peers in DML.items():
        d = data / "dml" / PAIR / f"seed{seed}"
        roles = {role: _role("dml", "resnet110", "resnet20", best, last) for role, (_, best, last) in peers.items()}
        nets = tuple(net for net, _, _ in peers.values())
        run = RunId("train_dml", dataset, "dml", "", nets[0], "+".join(nets[1:]), seed, str(d), peers=nets)
        _write_run(
            d,
            dataset,
            seed,
            "dml",
            roles,
            {"peers": {role: net for role, (net, _, _) in peers.items()}, "lambda_kd": 1.0},
            config(run, "dml", "dml"),
        )
        dirs.append(run)
    kd("st", "resnet56", "resnet20", ST56)
    kd("st", "wrn_40_2", "wrn_16_2", ST_WRN)
    if bad:
        failed = RunId("train_kd", dataset, "st", "", "resnet110", "resnet20", 3, str(data / "kd-st" / PAIR / "seed3"))
        log = Path(failed.log)
        assert log == results / "logs" / dataset / "kd-st" / PAIR / "seed3.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("epoch 1/4 ...\nerror: CUDA out of memory\n")
        dirs.append(failed)
        # never ran: no directory, no log
        dirs.append(RunId("train_ft", dataset, "ft", "", "resnet110", "resnet20", 0, str(data / "ft" / PAIR / "seed0")))
    write_summary(dirs, results / "summary.csv", teachers=TEACHERS)
    return rf.load_summary(results / "summary.csv")


def _mean(accs, i=0):
    return statistics.mean(v[i] for v in accs.values())


def _stdev(accs, i=0):
    return statistics.stdev(v[i] for v in accs.values())


@pytest.fixture(scope="module")
def reference():
    return load_reference()


def test_means_stds_and_delta_vs_baseline(tmp_path):
    table = comparison_table(fabricate(tmp_path, "cifar10"), "cifar10")
    assert table.columns.names == ["group", "stat"]
    assert list(table.index[:2]) == ["teacher", "baseline"]
    assert list(table.index[2:]) == ["st", "at+st", "dml net1", "dml net2", "ft"]  # first appearance in the summary
    assert "published" not in table.columns.get_level_values("stat")  # no reference given
    cell = table[PAIR]
    for label, accs in [("st", ST), ("baseline", BASE20), ("teacher", BASE110), ("at+st", AT_ST)]:
        assert cell.at[label, "n"] == len(accs)
        assert cell.at[label, "best"] == pytest.approx(_mean(accs, 0))
        assert cell.at[label, "best_std"] == pytest.approx(_stdev(accs, 0))
        assert cell.at[label, "last"] == pytest.approx(_mean(accs, 1))
        assert cell.at[label, "last_std"] == pytest.approx(_stdev(accs, 1))
        assert cell.at[label, "delta"] == pytest.approx(_mean(accs, 0) - _mean(BASE20, 0))
    assert cell.at["baseline", "delta"] == pytest.approx(0.0)
    assert cell.at["dml net1", "best"] == pytest.approx(94.20) and cell.at["dml net2", "last"] == pytest.approx(92.90)
    # each peer against its own network's baseline: net1 is a resnet110
    assert cell.at["dml net1", "delta"] == pytest.approx(94.20 - _mean(BASE110, 0))
    assert cell.at["dml net2", "delta"] == pytest.approx(93.00 - _mean(BASE20, 0))
    assert math.isnan(cell.at["dml net1", "best_std"])  # one seed: no std
    # the failed seed is counted, not averaged; the missing run is a row of its own
    assert cell.at["st", "not_ok"] == 1 and cell.at["baseline", "not_ok"] == 0
    assert cell.at["ft", "n"] == 0 and cell.at["ft", "not_ok"] == 1 and math.isnan(cell.at["ft", "best"])
    # a pair without a student baseline has no delta
    wrn = table["wrn_40_2-wrn_16_2"]
    assert wrn.at["st", "best"] == pytest.approx(74.00) and math.isnan(wrn.at["st", "delta"])
    assert wrn.at["baseline", "n"] == 0 and wrn.at["teacher", "best"] == pytest.approx(75.10)


def test_published_join_cifar10(tmp_path, reference):
    table = comparison_table(fabricate(tmp_path, "cifar10"), "cifar10", reference)
    cell = table[PAIR]
    assert cell.at["st", "published"] == pytest.approx(92.82)
    assert cell.at["st", "published_source"] == "KD-Zoo README"
    assert cell.at["st", "diff"] == pytest.approx(_mean(ST) - 92.82)
    assert cell.at["baseline", "published"] == pytest.approx(92.37)
    assert cell.at["baseline", "diff"] == pytest.approx(_mean(BASE20) - 92.37)
    assert cell.at["teacher", "published"] == pytest.approx(93.86)
    assert cell.at["dml net1", "published"] == pytest.approx(94.45)
    assert cell.at["dml net2", "published"] == pytest.approx(92.92)
    assert math.isnan(cell.at["at+st", "published"]) and math.isnan(cell.at["at+st", "diff"])
    # KD-Zoo has no resnet56, RepDistiller no cifar10
    assert math.isnan(table["resnet56-resnet20"].at["st", "published"])


def test_mdistiller_dkd_and_dot_rows_join_their_cells(reference):
    assert published_for(reference, "cifar100", "dkd", "wrn_40_2", "shufflenet_v1") == [
        ("mdistiller README (DKD table)", 76.70)
    ]
    assert published_for(reference, "cifar100", "st+dot", "vgg13", "vgg8") == [("mdistiller README (DOT table)", 73.77)]
    assert published_for(reference, "cifar100", "st+st", "vgg13", "vgg8") == []  # no such published variant
    assert published_for(reference, "cifar10", "dkd", "wrn_40_2", "shufflenet_v1") == []


def test_repdistiller_kd_joins_st_on_cifar100(tmp_path, reference):
    assert "kd" not in set(reference["method"])
    assert set(reference["source"]) == {
        "KD-Zoo README",
        "RepDistiller README",
        "mdistiller README (DKD table)",
        "mdistiller README (DOT table)",
    }
    assert published_for(reference, "cifar100", "st", "resnet56", "resnet20") == [
        ("RepDistiller README", 70.66),
        ("mdistiller README (DKD table)", 70.66),
    ]
    both = published_for(reference, "cifar100", "st", "resnet110", "resnet20")
    assert both == [("KD-Zoo README", 70.06), ("RepDistiller README", 70.67)]
    assert preferred(both) == ("KD-Zoo README", 70.06)

    table = comparison_table(fabricate(tmp_path, "cifar100"), "cifar100", reference)
    r56 = table["resnet56-resnet20"]
    assert r56.at["st", "published"] == pytest.approx(70.66)
    assert r56.at["st", "published_source"] == "RepDistiller README"
    # RepDistiller reports its last epoch: our last-epoch mean beside it, not our best-on-val one
    assert r56.at["st", "published_epoch"] == "last"
    assert r56.at["st", "diff"] == pytest.approx(70.80 - 70.66)
    assert table[PAIR].at["st", "published_epoch"] == "best"  # KD-Zoo's: its best test epoch
    assert table[PAIR].at["st", "diff"] == pytest.approx(table[PAIR].at["st", "best"] - 70.06)
    assert r56.at["teacher", "published"] == pytest.approx(72.34)  # RepDistiller's teacher row
    assert table[PAIR].at["st", "published"] == pytest.approx(70.06)  # both report it: KD-Zoo's
    assert table[PAIR].at["teacher", "published"] == pytest.approx(73.15)
    assert table["wrn_40_2-wrn_16_2"].at["st", "published"] == pytest.approx(74.92)


def test_published_for_matching_rules(reference):
    def top1(*args):
        return [value for _, value in published_for(reference, *args)]

    assert top1("cifar10", "bss gen1", "resnet110", "resnet20") == [92.78]
    assert top1("cifar10", "bss gen2", "resnet110", "resnet20") == []
    assert top1("cifar10", "born-again gen1", "resnet110", "resnet20") == []
    assert top1("cifar10", "crd", "resnet110", "resnet20") == [92.92]
    assert top1("cifar10", "crd+st", "resnet110", "resnet20") == []
    assert top1("cifar10", "dml net2", "resnet20", "resnet20") == [93.37]
    assert top1("cifar10", "dml", "resnet20", "resnet20") == []
    assert top1("cifar10", "ft", "resnet20", "resnet110") == []  # direction matters
    assert top1("cifar100", "baseline", "resnet110", "resnet20") == [68.92, 69.06]
    assert top1("digits", "st", "resnet110", "resnet20") == []
    assert published_for(None, "cifar10", "st", "resnet110", "resnet20") == []


def _write(tmp_path, frame, dataset, reference):
    out = tmp_path / "tables"
    table = write_tables(
        frame, dataset, out / f"{dataset}.md", out / f"{dataset}.csv", out / f"{dataset}.tex", reference
    )
    return (
        table,
        (out / f"{dataset}.md").read_text(),
        pd.read_csv(out / f"{dataset}.csv"),
        (out / f"{dataset}.tex").read_text(),
    )


def test_write_tables_cifar10(tmp_path, reference):
    _, md, csv, tex = _write(tmp_path, fabricate(tmp_path, "cifar10"), "cifar10", reference)
    lines = md.splitlines()
    assert lines[0] == "# cifar10: test accuracy (%) by method"
    assert "### resnet110 \u2192 resnet20" in lines
    header = next(line for line in lines if line.startswith("| method | best-on-val"))
    assert "| published | ours \u2212 published |" in header
    st = next(line for line in lines if line.startswith("| st |"))
    st_mean = f"{_mean(ST):.2f} \u00b1 {_stdev(ST):.2f}"
    assert f"| {st_mean} (1 run failed) |" in st
    assert f"| {_mean(ST) - _mean(BASE20):+.2f} |" in st
    assert "| 92.82 (KD-Zoo, best) |" in st
    base = next(line for line in lines if line.startswith("| baseline |"))
    assert "| \u2014 | 3 |" in base  # no delta for the baseline itself
    assert next(line for line in lines if line.startswith("| ft |")).startswith("| ft | missing |")
    dml1 = next(line for line in lines if line.startswith("| dml net1 |"))
    assert "| 94.20 |" in dml1 and "\u00b1" not in dml1.split("|")[2]  # one seed: no std
    # the not-finished section lists both runs
    section = md.split("## Runs not finished", 1)[1]
    assert "| st | resnet110 \u2192 resnet20 | 3 | failed | CUDA out of memory |" in section
    assert "| ft | resnet110 \u2192 resnet20 | 0 | missing |" in section
    assert "All runs finished." not in md

    assert {"published", "published_source", "published_epoch", "diff_vs_published", "not_ok"} <= set(csv.columns)
    row = csv[(csv["group"] == PAIR) & (csv["label"] == "st")].iloc[0]
    assert row["n"] == 3 and row["not_ok"] == 1 and row["teacher"] == "resnet110" and row["student"] == "resnet20"
    assert row["best_mean"] == pytest.approx(_mean(ST), abs=1e-4)
    assert row["best_std"] == pytest.approx(_stdev(ST), abs=1e-4)
    assert row["delta_vs_baseline"] == pytest.approx(_mean(ST) - _mean(BASE20), abs=1e-4)
    assert row["published"] == pytest.approx(92.82) and row["published_source"] == "KD-Zoo README"
    assert row["published_epoch"] == "best"
    assert row["diff_vs_published"] == pytest.approx(_mean(ST) - 92.82, abs=1e-4)
    ft = csv[(csv["group"] == PAIR) & (csv["label"] == "ft")].iloc[0]
    assert ft["n"] == 0 and ft["not_ok"] == 1

    assert r"\begin{table}" in tex and r"\begin{tabular}{lccc}" in tex and r"\end{tabular}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\caption{" in tex and r"\label{tab:kdpipe-cifar10}" in tex
    assert r"wrn\_40\_2 $\rightarrow$ wrn\_16\_2" in tex
    assert "at$+$st &" in tex and "wrn_" not in tex
    assert f"{_mean(ST):.2f} $\\pm$ {_stdev(ST):.2f}" in tex and "(92.82)" in tex


def test_non_cifar_has_no_published_columns(tmp_path, reference):
    table, md, csv, tex = _write(tmp_path, fabricate(tmp_path, "digits"), "digits", reference)
    assert not {"published", "published_source", "diff"} & set(table.columns.get_level_values("stat"))
    assert "published" not in md
    header = next(line for line in md.splitlines() if line.startswith("| method | best-on-val"))
    assert header == "| method | best-on-val test acc | last-epoch test acc | \u0394 vs baseline | n |"
    assert not {"published", "published_source", "diff_vs_published"} & set(csv.columns)
    assert list(csv.columns) == [
        "dataset",
        "group",
        "teacher",
        "student",
        "label",
        "n",
        "best_mean",
        "best_std",
        "last_mean",
        "last_std",
        "delta_vs_baseline",
        "not_ok",
    ]
    assert "published" not in tex


def test_all_runs_finished_and_other_datasets_ignored(tmp_path):
    frame = fabricate(tmp_path / "a", "cifar10", bad=False)
    other = fabricate(tmp_path / "b", "digits")  # failed runs of another dataset do not leak in
    _, md, csv, _ = _write(tmp_path, pd.concat([frame, other], ignore_index=True), "cifar10", None)
    assert "All runs finished." in md
    assert set(csv["dataset"]) == {"cifar10"} and csv["not_ok"].sum() == 0
    assert "ft" not in set(csv["label"])


def test_settings_column_reads_what_the_run_declared_and_older_records_still_read():
    from kdpipe.summary import _settings

    info = {"loss": {"settings": {"lambda_kd": 0.1, "T": 4.0}}, "st_weight": 0.0, "teacher_source": "cache"}
    older = {"method": "kd", "info": info}  # run.json of a kdpipe before runs recorded their settings
    assert _settings(older) == "lambda_kd=0.1; T=4; teacher=cache"
    declared = {**older, "settings": {"lambda_kd": 0.1, "T": 4.0, "ce_weight": 0.1, "dot_delta": 0.075}}
    assert _settings(declared) == "lambda_kd=0.1; T=4; ce_weight=0.1; dot_delta=0.075"
    assert _settings({"method": "baseline", "info": {}, "settings": {}}) == ""


def test_published_only_beside_runs_trained_as_its_source(tmp_path, reference):
    # st at T 2 and the student's baseline for 4 epochs are not the runs KD-Zoo reported; the teacher's are
    changed = {("st", PAIR.split("-")[0], "resnet20"): ("paper.yaml", {"T": 2.0})}
    changed[("baseline", "", "resnet20")] = ("paper.yaml", {"epochs": 4})
    frame = fabricate(tmp_path, "cifar10", recipes=changed)
    assert set(frame.loc[frame["label"] == "st", "follows"]) == {""}
    table, md, csv, tex = _write(tmp_path, frame, "cifar10", reference)
    cell = table[PAIR]
    for label in ("st", "baseline"):
        assert math.isnan(cell.at[label, "published"]) and math.isnan(cell.at[label, "diff"])
        assert cell.at[label, "published_source"] is None and cell.at[label, "published_recipe"] == "paper.yaml"
    assert cell.at["teacher", "published"] == pytest.approx(93.86)
    assert cell.at["dml net1", "published"] == pytest.approx(94.45)
    st = next(line for line in md.splitlines() if line.startswith("| st |"))
    assert "| \u2014 (other recipe than config/paper.yaml's) | \u2014 |" in st and "92.82" not in md
    row = csv[(csv["group"] == PAIR) & (csv["label"] == "st")].iloc[0]
    assert math.isnan(row["published"]) and row["published_recipe"] == "paper.yaml"
    assert "(92.82)" not in tex and "(93.86)" in tex
    # a cell no source reports says nothing of recipes
    assert "other recipe" not in next(line for line in md.splitlines() if line.startswith("| at+st |"))


def test_a_pair_both_report_gets_the_number_of_the_recipe_it_followed(tmp_path, reference):
    # resnet110 -> resnet20 on CIFAR-100 trained as config/repdistiller.yaml plans it: RepDistiller's cells
    # (its last epoch), not KD-Zoo's, which the same cells get with paper.yaml's recipe
    rep = ("repdistiller.yaml", {})
    changed = {
        ("st", "resnet110", "resnet20"): rep,
        ("baseline", "", "resnet20"): rep,
        ("baseline", "", "resnet110"): rep,
    }
    table, md, _, tex = _write(tmp_path, fabricate(tmp_path, "cifar100", recipes=changed), "cifar100", reference)
    cell = table[PAIR]
    assert cell.at["st", "published"] == pytest.approx(70.67)
    assert (cell.at["st", "published_source"], cell.at["st", "published_epoch"]) == ("RepDistiller README", "last")
    assert cell.at["st", "diff"] == pytest.approx(cell.at["st", "last"] - 70.67)
    assert cell.at["baseline", "published"] == pytest.approx(69.06)
    assert cell.at["teacher", "published"] == pytest.approx(74.31)
    assert "(70.67)" in tex and "(70.06)" not in tex
    # the markdown's intro says whose number a cell gets: not 'KD-Zoo's where both report a cell', which this is
    assert "KD-Zoo's where both report a cell" not in md
    assert "the source whose recipe the cell's finished runs followed" in md


def test_latex_caption_names_the_sources_shown(tmp_path, reference):
    _, _, _, tex = _write(tmp_path, fabricate(tmp_path, "cifar100"), "cifar100", reference)
    assert "published top-1 (KD-Zoo, RepDistiller) in parentheses" in tex
    # our best-on-val mean stands beside RepDistiller's last-epoch number: the caption says from which epoch each is
    assert "KD-Zoo's from its best test epoch, RepDistiller's from its last epoch" in tex
    _, _, _, tex = _write(tmp_path / "c10", fabricate(tmp_path / "c10", "cifar10"), "cifar10", reference)
    assert "published top-1 (KD-Zoo) in parentheses" in tex and "KD-Zoo's from its best test epoch" in tex
    assert "last epoch" not in tex


def test_follows_names_the_configs_whose_runs_train_alike(tmp_path):
    run = RunId("train_kd", "cifar100", "st", "", "resnet56", "resnet20", 1, str(tmp_path / "st"))
    repdistiller = trained_as(run, "kd", "repdistiller.yaml")
    assert follows(run, repdistiller, "kd") == ["repdistiller.yaml"]
    # devices, precision, seeds and input paths aside
    neutral = {**repdistiller, "amp": "off", "cuda": 0, "threads": 8, "split_seed": 3, "t_model": "elsewhere.pt"}
    assert follows(run, neutral, "kd") == ["repdistiller.yaml"]
    for key, value in (("lambda_kd", 1.0), ("epochs", 200), ("ce_weight", 1.0), ("crop_padding", "reflect")):
        assert follows(run, {**repdistiller, key: value}, "kd") == [], key
    assert follows(run, trained_as(run, "kd", "mdistiller.yaml"), "kd") == ["mdistiller.yaml"]
    # KD-Zoo's grid has no resnet56 (above: not paper.yaml); a sweep point is nobody's cell; nor a dataset
    # no recipe trains on
    swept = RunId(
        "train_kd_sweep", "cifar100", "st", "", "resnet56", "resnet20", 1, str(tmp_path / "T"), sweep=(("T", 8.0),)
    )
    assert follows(swept, repdistiller, "kd") == []
    # a teacher imported from the source's released file (pairs[i].teacher_checkpoint) is the source's own
    # run: it follows the config it was imported under, so the table's teacher row keeps the published number
    imported = RunId("import_teacher", "cifar100", "baseline", "imported", "", "resnet56", 0, str(tmp_path / "t"))
    options = resolve(
        "import_teacher", {"src": "ckpt_epoch_240.pth", **run_options(recipe_config("repdistiller.yaml"), imported)}
    )
    assert follows(imported, options, "import_teacher") == ["repdistiller.yaml"]
    digits = RunId("train_kd", "digits", "st", "", "resnet56", "resnet20", 1, str(tmp_path / "d"))
    assert follows(digits, {**repdistiller, "data_name": "digits"}, "kd") == []


def test_a_run_on_other_than_the_official_cifar_files_follows_no_recipe(tmp_path):
    """summary's follows column: a run recorded on files other than the official ones (data.official false)
    follows no recipe, so no published number stands beside it; a run recorded before kdpipe checked (no
    data.official) is taken as it was."""
    from kdpipe.summary import _follows

    run = RunId("train_kd", "cifar100", "st", "", "resnet56", "resnet20", 1, str(tmp_path / "st"))
    record = {"entry": "kd", "config": trained_as(run, "kd", "repdistiller.yaml")}
    assert _follows(run, record) == ["repdistiller.yaml"]
    assert _follows(run, {**record, "data": {"official": True}}) == ["repdistiller.yaml"]
    assert _follows(run, {**record, "data": {"official": False}}) == []


@pytest.mark.parametrize("recipe", RECIPE_CONFIGS)
def test_every_run_a_recipe_config_plans_follows_it_alone(recipe):
    """Each shipped recipe config's planned runs, trained as planned, follow that config and no other (the
    three differ in schedule or data): their cells get that source's numbers and only those."""
    config = recipe_config(recipe)
    runs = plan(config)
    assert {run.rule for run in runs} >= {"train_base", "train_kd"}
    for run in runs:
        entry = SEEDED_RULES[run.rule].entry
        inputs = {} if entry in ("base", "dml") else {"t_model": "teacher.pt"}
        options = resolve(entry, {**inputs, **run_options(config, run)})
        assert follows(run, options, entry) == [recipe], run


def test_the_summary_reads_the_recipe_configs_only_for_cifar():
    from kdpipe.report.reference import recipe_paths

    assert recipe_paths({"datasets": ["digits"]}) == []  # the default: editing config/paper.yaml re-runs nothing
    paths = recipe_paths({"datasets": ["digits", "cifar100"]})
    assert [Path(p).name for p in paths] == list(RECIPE_CONFIGS) and all(Path(p).is_file() for p in paths)


def test_a_born_again_chain_of_a_net_follows_the_self_pair_chain_of_paper_yaml(tmp_path):
    # bss.nets: [resnet20] trains what paper.yaml's bss.pairs chain resnet20-resnet20 trains (the config refuses
    # both at once): its gen1 stands beside KD-Zoo's bss number
    def gen1(chain):
        run_dir = f"results/cifar100/bss/{chain}/seed0/gen1"
        return RunId("train_bss", "cifar100", "bss", "", "resnet20", "resnet20", 0, run_dir, generation=1)

    options = resolve("bss", {"t_model": "t.pt", **run_options(recipe_config("paper.yaml"), gen1("resnet20-resnet20"))})
    assert follows(gen1("resnet20"), options, "bss") == ["paper.yaml"]
    assert follows(gen1("resnet56"), options, "bss") == []


def test_an_unfinished_dml_run_counts_in_each_peers_cell(tmp_path):
    """A DML run that failed or never ran has a row per peer, so 'dml net1' over 1 of 2 seeds says so in the
    table (not_ok) and in the figures (n=1 of 2), instead of a separate 'dml' row with nothing finished."""
    from kdpipe.report.plots import final_stats

    data, nets = tmp_path / "results" / "cifar10", ("resnet110", "resnet20")
    runs = [
        RunId("train_dml", "cifar10", "dml", "", nets[0], nets[1], s, str(data / "dml" / PAIR / f"seed{s}"), peers=nets)
        for s in (0, 1)
    ]
    roles = {"net1": _role("dml", *nets, 94.2, 94.1), "net2": _role("dml", *nets, 93.0, 92.9)}
    _write_run(Path(runs[0].run_dir), "cifar10", 0, "dml", roles, {"peers": dict(zip(("net1", "net2"), nets))})
    write_summary(runs, tmp_path / "summary.csv")
    frame = rf.load_summary(tmp_path / "summary.csv")
    assert sorted(frame["label"]) == ["dml net1", "dml net1", "dml net2", "dml net2"]
    missing = frame[frame["status"] == "missing"]
    assert list(zip(missing["role"], missing["net"])) == [("net1", "resnet110"), ("net2", "resnet20")]
    cell = comparison_table(frame, "cifar10")[PAIR]
    assert [(cell.at[peer, "n"], cell.at[peer, "not_ok"]) for peer in ("dml net1", "dml net2")] == [(1, 1), (1, 1)]
    stats = final_stats(frame, "cifar10", PAIR)
    assert [(stats.at[p, "count"], stats.at[p, "runs"]) for p in ("dml net1", "dml net2")] == [(1, 2), (1, 2)]


def test_a_swept_rows_latex_label_writes_lambda_and_the_tex_is_ascii(tmp_path, monkeypatch):
    """A lambda_kd sweep row is labelled 'at λ=250' (markdown); the .tex writes λ as $\\lambda$ (pdflatex stops on a
    raw one), so the file is pure ASCII."""
    from kdpipe.workflow import load_config

    config = load_config(
        {
            "datasets": ["cifar10"],
            "seeds": [0, 1],
            "pairs": [{"teacher": "resnet110", "student": "resnet20"}],
            "kd": {"modes": ["at"], "sweep": {"at": {"lambda_kd": [250, 1000]}}},
        },
        check_pairs=False,
    )
    runs = [run for run in plan(config) if run.student == "resnet20"]
    monkeypatch.chdir(tmp_path)
    best_of = {(): 93.0, (("lambda_kd", 250),): 93.4, (("lambda_kd", 1000),): 92.6}  # seed s: + s / 10
    for run in runs:
        entry, best = ("base", 92.0) if run.method == "baseline" else ("kd", best_of[run.sweep])
        best += run.seed / 10
        role = "net" if entry == "base" else "student"
        roles = {role: _role(run.method, run.teacher, run.student, best, best - 0.1)}
        _write_run(Path(run.run_dir), "cifar10", run.seed, entry, roles)
    write_summary(runs, "results/summary.csv", teachers=["resnet110"])
    _, md, _, tex = _write(tmp_path, rf.load_summary("results/summary.csv"), "cifar10", None)
    mean = statistics.mean([93.4, 93.5])
    std = statistics.stdev([93.4, 93.5])
    assert f"| at \u03bb=250 | {mean:.2f} \u00b1 {std:.2f} |" in md
    assert f"\nat $\\lambda$=250 & {mean:.2f} $\\pm$ {std:.2f} \\\\\n" in tex
    assert "at $\\lambda$=1000 & " in tex and tex.isascii()


def test_every_symbol_a_label_can_hold_has_a_latex_form():
    """Labels are made of method and variant names and the swept keys (SWEEP_SYMBOLS) and values of every sweep;
    each one goes into the .tex as ASCII, so no label can stop pdflatex."""
    from kdpipe.config import sweep_keys
    from kdpipe.losses import LOSSES
    from kdpipe.options import SECTION_SETTINGS, SWEEP_SCHEDULE, find_option
    from kdpipe.report.tables import tex_escape

    swept = [("kd", key) for mode in LOSSES for key in sweep_keys(mode)]
    swept += [(section, key) for section in SECTION_SETTINGS for key in (*SECTION_SETTINGS[section], *SWEEP_SCHEDULE)]
    assert set(rf.SWEEP_SYMBOLS) <= {key for _, key in swept}  # every symbol is one that labels show
    labels = []
    for entry, key in dict.fromkeys(swept):
        option = find_option(entry, key)
        values = option._choices() if option.choices is not None else [0.5]
        labels += [rf.method_label({"method": "at", "variant": "+st", "sweep": f"{key}={v}; lr=0.1"}) for v in values]
    methods = [*LOSSES, "crd", "ft"]
    labels += [rf.method_label({"method": m, "variant": v, "sweep": ""}) for m in methods for v in ("", "+st", "+dot")]
    rows = [
        ("baseline", "", "teacher", ""),
        ("dml", "", "net2", ""),
        ("bss", "born-again", "", "2"),
        ("bss", "", "", ""),
    ]
    labels += [rf.method_label(dict(zip(("method", "variant", "role", "generation"), row))) for row in rows]
    assert "at+st \u03bb=0.5, lr=0.1" in labels and "born-again gen2" in labels
    for label in labels:
        assert tex_escape(label).isascii(), label
    for symbol in rf.SWEEP_SYMBOLS.values():
        assert tex_escape(symbol).isascii() and tex_escape(symbol) != symbol, symbol


def test_a_finished_run_without_test_accuracy_is_left_out_of_n_as_the_figures_leave_it_out(tmp_path):
    """run.json may hold null accuracies (the runner writes None for a non-finite one; the summary accepts the
    record): such a run is in no mean, so the table's n does not count it and the cell says why, as final.png does
    ('n=2 of 3'), instead of n = 3 beside a mean of 2 seeds."""
    from kdpipe.report.plots import final_stats

    frame = fabricate(tmp_path, "cifar10", bad=False)
    st = frame.index[(frame["label"] == "st") & (frame["group"] == PAIR)]
    frame.loc[st[2], ["test_acc_at_best", "last_test_acc"]] = math.nan  # what an empty summary cell loads as
    table = comparison_table(frame, "cifar10")[PAIR]
    seeds = {s: ST[s] for s in (0, 1)}
    assert table.at["st", "best"] == pytest.approx(_mean(seeds)) and table.at["st", "best_std"] == pytest.approx(
        _stdev(seeds)
    )
    assert (table.at["st", "n"], table.at["st", "not_ok"]) == (2, 1)
    stats = final_stats(frame, "cifar10", PAIR)
    assert (stats.at["st", "count"], stats.at["st", "not_ok"]) == (2, 1)
    assert stats.at["st", "statuses"] == "1 run without test accuracy"
    _, _, cells = _cells(frame, "cifar10")
    md = _markdown(comparison_table(frame, "cifar10"), frame, "cifar10", cells)
    assert "| st | 93.05 ± 0.21 (1 run without test accuracy) |" in md, md


def test_means_are_of_the_runs_accuracies_not_of_values_already_rounded_to_two_decimals(tmp_path):
    """The summary keeps enough digits that the table's mean and std, rounded to 2, are those of the runs' own
    accuracies (test accuracies on 359 images are multiples of 100/359; rounded per run first, the std of the
    default config's teacher read 1.40 for 1.39)."""
    data = tmp_path / "results" / "digits"
    accs = [100 * 300 / 359, 100 * 301 / 359, 100 * 303 / 359]  # std 0.4255; of the values rounded to 2: 0.4234
    runs = []
    for seed, acc in enumerate(accs):
        run = RunId("train_base", "digits", "baseline", "", "", "resnet20", seed, str(data / "base" / f"s{seed}"))
        _write_run(Path(run.run_dir), "digits", seed, "base", {"net": _role("baseline", "", "resnet20", acc, acc)})
        runs.append(run)
    kd = RunId("train_kd", "digits", "st", "", "resnet20", "resnet8", 0, str(data / "st"))
    _write_run(Path(kd.run_dir), "digits", 0, "kd", {"student": _role("st", "resnet20", "resnet8", 80.0, 80.0)})
    write_summary([*runs, kd], tmp_path / "summary.csv", teachers=("resnet20",))
    cell = comparison_table(rf.load_summary(tmp_path / "summary.csv"), "digits")["resnet20-resnet8"]
    assert f"{cell.at['teacher', 'best_std']:.2f}" == f"{statistics.stdev(accs):.2f}" == "0.43"
    assert abs(cell.at["teacher", "best"] - statistics.mean(accs)) < 1e-4
