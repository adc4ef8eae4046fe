"""Report figures and races on a small fabricated results tree (summary.csv + per-run metrics.csv)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageSequence

from kdpipe.engine import METRIC_COLUMNS
from kdpipe.report import frame as F
from kdpipe.report import plots, race
from kdpipe.summary import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 5
DATASET = "toy"
PAIR = "tnet-snet"
COHORT = "snet-snet"


# (method, teacher, student, role in the summary, net, seed, run dir, metrics role, start accuracy, epochs, cost)
RUNS = [
    ("baseline", "", "tnet", "teacher", "tnet", 0, "base/tnet/seed0", "net", 70.0, EPOCHS, 1.0),
    ("baseline", "", "snet", "student", "snet", 0, "base/snet/seed0", "net", 60.0, EPOCHS, 1.0),
    ("baseline", "", "snet", "student", "snet", 1, "base/snet/seed1", "net", 62.0, EPOCHS, 1.0),
    ("st", "tnet", "snet", "student", "snet", 0, "kd-st/tnet-snet/seed0", "student", 64.0, EPOCHS, 1.1),
    ("st", "tnet", "snet", "student", "snet", 1, "kd-st/tnet-snet/seed1", "student", 67.0, EPOCHS, 1.3),
    # a run that stopped after 3 epochs: the race forward-fills it
    ("at", "tnet", "snet", "student", "snet", 0, "kd-at/tnet-snet/seed0", "student", 58.0, 3, 2.0),
    ("dml", "snet", "snet", "net1", "snet", 0, "dml/snet-snet/seed0", "net1", 61.0, EPOCHS, 2.1),
    ("dml", "snet", "snet", "net2", "snet", 0, "dml/snet-snet/seed0", "net2", 63.0, EPOCHS, 2.1),
]


def accuracy(start: float, epoch: int) -> float:
    """Distinct, increasing, below 100; every epoch changes every run's value (frames never repeat)."""
    return round(start + 6.0 * epoch - 0.3 * epoch**2, 4)


def write_results(root: Path) -> Path:
    """A results/ tree the way the workflow leaves it: run dirs with metrics.csv, and summary.csv."""
    metrics: dict[str, list[dict]] = {}
    rows = []
    for method, teacher, student, role, net, seed, run_dir, metric_role, start, epochs, cost in RUNS:
        path = f"results/{DATASET}/{run_dir}"
        accs = [accuracy(start, e) for e in range(1, epochs + 1)]
        for epoch, acc in enumerate(accs, start=1):
            metrics.setdefault(path, []).append(
                {
                    "epoch": epoch,
                    "role": metric_role,
                    "lr": 0.1,
                    "train_loss": round(2.0 / epoch + 0.01 * start, 4),
                    "train_acc": acc + 1,
                    "val_loss": 1.0 / epoch,
                    "val_acc": acc - 1,
                    "test_loss": 1.0 / epoch,
                    "test_acc": acc,
                    "epoch_time_s": cost,
                    "images_per_s": 100.0 / cost,
                }
            )
        best = max(range(epochs), key=lambda i: accs[i] - 1)
        rows.append(
            {
                "dataset": DATASET,
                "method": method,
                "variant": "",
                "teacher": teacher,
                "student": student,
                "role": role,
                "net": net,
                "seed": seed,
                "generation": "",
                "group": "" if method == "baseline" else f"{teacher}-{student}",
                "epochs": epochs,
                "params": 1000,
                "best_val_acc": accs[best] - 1,
                "test_acc_at_best": accs[best],
                "last_test_acc": accs[-1],
                "train_time_s": cost * epochs,
                "mean_epoch_s": cost,
                "cost_vs_baseline": cost,
                "settings": "",
                "status": "ok",
                "note": "",
                "run_dir": path,
            }
        )
    rows.append(
        {
            **rows[3],
            "method": "sp",
            "role": "",
            "seed": 0,
            "epochs": "",
            "best_val_acc": "",
            "test_acc_at_best": "",
            "last_test_acc": "",
            "train_time_s": "",
            "mean_epoch_s": "",
            "cost_vs_baseline": "",
            "status": "missing",
            "run_dir": f"results/{DATASET}/kd-sp/tnet-snet/seed0",
        }
    )
    for path, records in metrics.items():
        (root / path).mkdir(parents=True, exist_ok=True)
        with open(root / path / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(records)
    summary = root / "results" / "summary.csv"
    with open(summary, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return summary


@pytest.fixture
def results(tmp_path, monkeypatch):
    summary = write_results(tmp_path)
    monkeypatch.chdir(tmp_path)  # run_dir is relative to the workdir, as in the workflow
    frame = F.load_summary(summary)
    return summary, frame, F.load_curves(frame)


def assert_png(path, out):
    assert Path(path) == Path(out) and Path(out).is_file()
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 500 <= width <= 3000 and 300 <= height <= 2000, (width, height)
    assert not [p for p in Path(out).parent.iterdir() if ".tmp" in p.name]


def test_group_curves_maps_base_runs_by_net(results):
    _, frame, curves = results
    pair = plots.group_curves(curves, frame, DATASET, PAIR)
    assert set(pair["label"]) == {"baseline", "teacher", "st", "at"}
    assert sorted(pair.loc[pair["label"] == "baseline", "seed"].unique()) == [0, 1]
    assert (pair.loc[pair["label"] == "teacher", "net"] == "tnet").all()
    cohort = plots.group_curves(curves, frame, DATASET, COHORT)
    assert set(cohort["label"]) == {"baseline", "dml net1", "dml net2"}
    assert len(cohort[cohort["label"] == "dml net2"]) == EPOCHS
    with pytest.raises(ValueError):
        plots.group_curves(curves, frame, DATASET, "nope-none")


def test_label_colors_fixed_per_dataset(results):
    _, frame, _ = results
    colors = plots.label_colors(frame, DATASET)
    assert colors["baseline"] == plots.BASELINE_COLOR and colors["teacher"] == plots.TEACHER_COLOR
    others = [colors[k] for k in ("st", "at", "dml net1", "dml net2", "sp")]
    assert len(set(others)) == len(others)
    assert plots.label_colors(frame.iloc[::-1], DATASET) == colors


def test_plots_write_readable_pngs(results, tmp_path):
    _, frame, curves = results
    out = tmp_path / "plots"
    for group in (PAIR, COHORT):
        assert_png(
            plots.plot_curves(curves, frame, DATASET, group, out / group / "test_acc.png"), out / group / "test_acc.png"
        )
        assert_png(plots.plot_losses(curves, frame, DATASET, group, out / group / "loss.png"), out / group / "loss.png")
        assert_png(plots.plot_final(frame, DATASET, group, out / group / "final.png"), out / group / "final.png")
    val = out / PAIR / "val_acc.png"
    assert_png(plots.plot_curves(curves, frame, DATASET, PAIR, val, metric="val_acc"), val)
    assert_png(plots.plot_cost(frame, DATASET, out / "cost.png"), out / "cost.png")


def test_final_stats_mean_and_std_over_seeds(results):
    _, frame, _ = results
    stats = plots.final_stats(frame, DATASET, PAIR)
    st = [r for r in RUNS if r[0] == "st"]
    finals = [accuracy(r[8], EPOCHS) for r in st]  # accuracy rises every epoch: best == last
    assert stats.loc["st", "mean"] == pytest.approx(sum(finals) / 2)
    assert stats.loc["st", "std"] == pytest.approx(pd.Series(finals).std())
    assert stats.loc["st", "count"] == 2 and stats.loc["teacher", "count"] == 1
    assert "sp" not in stats.index  # missing runs are not plotted (final.png names them in a footnote)


def test_race_frame_is_mean_over_seeds_with_forward_fill(results):
    _, frame, curves = results
    table = race.race_frame(curves, frame, DATASET, PAIR)
    assert list(table.index) == list(range(1, EPOCHS + 1))
    assert set(table.columns) == {"baseline", "teacher", "st", "at"}
    for epoch in range(1, EPOCHS + 1):
        assert table.loc[epoch, "baseline"] == pytest.approx((accuracy(60.0, epoch) + accuracy(62.0, epoch)) / 2)
        assert table.loc[epoch, "st"] == pytest.approx((accuracy(64.0, epoch) + accuracy(67.0, epoch)) / 2)
        assert table.loc[epoch, "teacher"] == pytest.approx(accuracy(70.0, epoch))
        assert table.loc[epoch, "at"] == pytest.approx(accuracy(58.0, min(epoch, 3)))
    assert list(table.columns) == list(table.iloc[-1].sort_values(ascending=False).index)


def test_time_and_loss_races_are_cumulative_time_and_mean_loss(results):
    _, frame, curves = results
    time = race.race_frame(curves, frame, DATASET, PAIR, "train_time")
    for epoch in range(1, EPOCHS + 1):
        assert time.loc[epoch, "st"] == pytest.approx((1.1 + 1.3) / 2 * epoch)  # each seed summed, then mean
        assert time.loc[epoch, "at"] == pytest.approx(2.0 * min(epoch, 3))  # stopped at 3: keeps its total
        assert time.loc[epoch, "baseline"] == pytest.approx(1.0 * epoch)
    assert set(list(time.columns)[:2]) == {"baseline", "teacher"}  # fastest first: lowest time is best
    loss = race.race_frame(curves, frame, DATASET, PAIR, "train_loss")
    assert loss.loc[2, "baseline"] == pytest.approx((2.0 / 2 + 0.6) / 2 + (2.0 / 2 + 0.62) / 2)
    assert list(loss.columns) == list(loss.iloc[-1].sort_values().index)
    with pytest.raises(ValueError, match="unknown 'speed'"):
        race.race_frame(curves, frame, DATASET, PAIR, "speed")


def test_race_axes_are_proportional_and_values_below_the_window_show_no_bar():
    table = pd.DataFrame({"a": [40.0, 97.0, 99.0], "b": [10.0, 55.0, 96.0]}, index=[1, 2, 3])
    lo, hi = race.race_window(table, "test_acc")
    assert (lo, hi) == (94.0, 100.0)  # a window below the lowest final value, not a broken axis from 0
    drawn = race.bar_values(table.to_numpy(), lo)
    assert drawn[2].tolist() == [99.0, 96.0]  # in the window: drawn to their value on a linear axis
    assert (drawn[:2, 1] < lo).all() and (drawn[:2, 1] > lo - 1e-3).all()  # below: no visible bar
    assert drawn[0, 0] > drawn[0, 1]  # ... but still ranked by the true value
    assert [race.true_value(d, lo) for d in drawn[:, 1]] == pytest.approx([10.0, 55.0, 96.0])
    time = pd.DataFrame({"a": [1.0, 2.5], "b": [2.0, 4.0]})
    assert race.race_window(time, "train_time") == (0.0, 4.0)  # loss and time axes start at 0


def test_expected_frames():
    assert race.expected_frames(5, 4) == 17
    assert race.expected_frames(12, 4) == 45
    assert race.expected_frames(1, 10) == 1
    with pytest.raises(ValueError):
        race.expected_frames(0, 4)


def gif_frames(path) -> int:
    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.size[0] >= 300 and image.size[1] >= 100
        return sum(1 for _ in ImageSequence.Iterator(image))


@pytest.mark.parametrize("metric", list(race.RACES))
def test_render_race_gif_frame_count(results, tmp_path, metric):
    pytest.importorskip("bar_chart_race")
    _, frame, curves = results
    table = race.race_frame(curves, frame, DATASET, PAIR, metric)
    out = tmp_path / "race" / "toy.gif"
    frames = race.render_race(
        table,
        out,
        "toy: tnet → snet",
        steps_per_period=2,
        period_length_ms=200,
        dpi=50,
        colors=plots.label_colors(frame, DATASET),
        metric=metric,
    )
    assert frames == race.expected_frames(EPOCHS, 2) == gif_frames(out)
    assert not [p for p in out.parent.iterdir() if p.name != "toy.gif"]


def test_race_frames_draw_each_epoch_and_interpolate_between(tmp_path, monkeypatch):
    """What every frame of the GIF draws, on whichever pandas is installed (bar_chart_race 0.1's
    interpolation runs inside pandas): at step 0 of each period the bars are that epoch's values in
    rank order under that epoch's label; in between, they move linearly; then the last frame holds."""
    pytest.importorskip("bar_chart_race")
    from matplotlib.axes import Axes

    drawn = []  # one entry per drawn frame: {label: (y, bar length)} and the texts drawn with it
    barh, text = Axes.barh, Axes.text

    def spy_barh(self, y, width, *args, tick_label=None, **kwargs):
        drawn.append({"bars": dict(zip(tick_label, zip(y, width))), "texts": []})
        return barh(self, y, width, *args, tick_label=tick_label, **kwargs)

    def spy_text(self, *args, **kwargs):
        drawn[-1]["texts"].append(kwargs["s"] if "s" in kwargs else args[2])
        return text(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "barh", spy_barh)
    monkeypatch.setattr(Axes, "text", spy_text)
    epochs, steps, hold = [3, 4, 6], 2, 2  # epoch numbers need not be contiguous
    table = pd.DataFrame({"b": [96.0, 97.0, 99.5], "a": [95.5, 98.0, 99.0], "c": [10.0, 95.8, 96.0]}, index=epochs)
    out = tmp_path / "race.gif"
    frames = race.render_race(table, out, "t", steps_per_period=steps, dpi=40, hold_periods=hold)
    assert frames == race.expected_frames(len(epochs), steps) == gif_frames(out)

    lo, _ = race.race_window(table, "test_acc")
    assert lo == 94.0 and table.iloc[0]["c"] < lo  # c starts below the window: no bar, a marker
    rows = [dict(zip(table.columns, race.bar_values(row, lo))) for row in table.to_numpy()]
    rows += [rows[-1]] * hold
    rendered = (len(rows) - 1) * steps + 1  # bar_chart_race draws every frame, the hold included
    assert len(drawn) >= rendered
    for i, frame in enumerate(drawn[-rendered:]):  # (the animation draws frame 0 once more to start)
        period, step = divmod(i, steps)
        after = rows[min(period + 1, len(rows) - 1)]
        for label, (_, length) in frame["bars"].items():
            expected = rows[period][label] + step / steps * (after[label] - rows[period][label])
            assert length == pytest.approx(expected), (i, label)
        assert frame["texts"][-1] == f"epoch {epochs[min(period, len(epochs) - 1)]}", i
        if step == 0:
            values = table.iloc[min(period, len(epochs) - 1)]
            by_height = sorted(frame["bars"], key=lambda label: -frame["bars"][label][0])
            assert by_height == list(values.sort_values(ascending=False).index), i  # best on top
            expected_texts = [("◀ " if values[label] < lo else "") + f"{values[label]:.1f}%" for label in frame["bars"]]
            assert frame["texts"][:-1] == expected_texts, i


def test_race_cli_renders_in_subprocess(results, tmp_path):  # results writes the tree
    pytest.importorskip("bar_chart_race")
    out = tmp_path / "results" / "race" / DATASET / f"{COHORT}.gif"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base = [sys.executable, "-m", "kdpipe.report.race", "--summary", "results/summary.csv", "--dataset", DATASET]
    cmd = base + [
        "--group",
        COHORT,
        "--out",
        str(out),
        "--steps-per-period",
        "2",
        "--dpi",
        "50",
        "--metric",
        "train_loss",
    ]
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert gif_frames(out) == race.expected_frames(EPOCHS, 2)
    bad = subprocess.run(
        base + ["--group", "nope-none", "--out", str(tmp_path / "x.gif")],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "nope-none" in bad.stderr and not (tmp_path / "x.gif").exists()


def test_nothing_finished_gives_placeholder_pngs(results, tmp_path):
    _, frame, curves = results
    frame = frame.assign(status="missing")
    out = tmp_path / "empty"
    assert_png(plots.plot_curves(curves, frame, DATASET, PAIR, out / "test_acc.png"), out / "test_acc.png")
    assert_png(plots.plot_final(frame, DATASET, PAIR, out / "final.png"), out / "final.png")
    assert_png(plots.plot_cost(frame, DATASET, out / "cost.png"), out / "cost.png")
    with pytest.raises(ValueError):
        race.race_frame(curves, frame, DATASET, PAIR)


def test_a_race_of_a_group_with_nothing_finished_is_a_placeholder_gif(results, tmp_path):
    """report.partial builds the reports from what exists: a group none of whose runs finished (its baselines
    failed too) gets a one-frame GIF that says so, as its PNGs get placeholders, not a failed race job; a
    group that is not in the summary at all is still an error."""
    summary, frame, _ = results
    frame.assign(status="failed").drop(columns="label").to_csv(summary, index=False)
    out = tmp_path / "race" / "test_acc.gif"
    assert race.render_group_race(summary, DATASET, PAIR, out) == 1
    assert gif_frames(out) == 1 and not [p for p in out.parent.iterdir() if ".tmp" in p.name]
    with pytest.raises(ValueError, match="no runs of group"):
        race.render_group_race(summary, DATASET, "nope-none", tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_cost_plot_labels_overlap_nothing():
    """The default run's crowded cost plot: a point at the top (next to the title), a baseline star
    beside a method's point, and several methods at nearly the same cost and accuracy."""
    points = [  # (group, label, net, accuracy, cost)
        ("", "teacher", "resnet20", 95.3, 1.0),
        ("", "baseline", "resnet8w4", 83.0, 1.0),
        ("resnet20-resnet8w4", "st", "resnet8w4", 88.1, 1.45),
        ("resnet20-resnet8w4", "at", "resnet8w4", 87.9, 1.5),
        ("resnet20-resnet8w4", "fitnet", "resnet8w4", 84.0, 1.55),
        ("resnet20-resnet8w4", "rkd", "resnet8w4", 83.2, 1.52),
        ("resnet20-resnet8w4", "crd", "resnet8w4", 83.1, 1.05),
        ("resnet20-resnet8w4", "ft", "resnet8w4", 86.0, 1.6),
        ("resnet8w4-resnet8w4", "dml net1", "resnet8w4", 95.3, 2.1),
        ("resnet8w4-resnet8w4", "dml net2", "resnet8w4", 95.1, 2.1),
        ("resnet8w4-resnet8w4", "bss gen1", "resnet8w4", 84.5, 1.9),
        ("resnet8w4-resnet8w4", "bss gen2", "resnet8w4", 84.9, 1.9),
    ]
    frame = pd.DataFrame(
        [
            {"dataset": DATASET, "status": "ok", "group": g, "label": lab, "net": net}
            | {"test_acc_at_best": acc, "cost_vs_baseline": cost}
            for g, lab, net, acc, cost in points
        ]
    )
    fig, ax, texts, scatters = plots.cost_figure(frame, DATASET)
    assert len(texts) == len(points) and sum(len(c.get_offsets()) for c in scatters) == len(points)
    assert plots.label_overlaps(fig, ax, texts, scatters) == []
    # the checker itself sees an overlap when there is one
    texts[1].set_position(texts[0].get_position())
    assert any("overlaps" in p for p in plots.label_overlaps(fig, ax, texts, scatters))


def with_runs_left_out(frame: pd.DataFrame) -> pd.DataFrame:
    """The reviewer's case: st has 1 of 3 seeds finished (seed 1 failed, seed 2 missing), and the
    student's baseline 2 of 3 (seed 2 failed); rows of runs not ok, as the summary writes them."""
    frame = frame.copy()
    st = frame.index[frame["label"] == "st"]
    frame.loc[st[1], "status"] = "failed"
    base = frame.index[(frame["label"] == "baseline") & (frame["net"] == "snet")]
    empty = {"test_acc_at_best": float("nan"), "last_test_acc": float("nan"), "cost_vs_baseline": float("nan")}
    extra = [
        frame.loc[[st[0]]].assign(seed=2, status="missing", run_dir=f"results/{DATASET}/kd-st/{PAIR}/seed2", **empty),
        frame.loc[[base[0]]].assign(seed=2, status="failed", run_dir=f"results/{DATASET}/base/snet/seed2", **empty),
    ]
    return pd.concat([frame, *extra], ignore_index=True)


@pytest.fixture
def short(results):
    """``results`` with runs left out of two cells: (frame, curves of its finished runs)."""
    _, frame, _ = results
    frame = with_runs_left_out(frame)
    return frame, F.load_curves(frame)


def test_final_stats_count_runs_left_out_as_the_tables_do(short):
    from kdpipe.report.tables import comparison_table

    frame, _ = short
    stats = plots.final_stats(frame, DATASET, PAIR)
    assert stats.loc["st", "mean"] == pytest.approx(accuracy(64.0, EPOCHS))  # seed 0 only
    assert (stats.loc["st", "count"], stats.loc["st", "runs"], stats.loc["st", "not_ok"]) == (1, 3, 2)
    assert stats.loc["st", "statuses"] == "1 run failed, 1 run missing"
    assert (stats.loc["baseline", "count"], stats.loc["baseline", "runs"]) == (2, 3)
    assert (stats.loc["teacher", "count"], stats.loc["teacher", "runs"], stats.loc["teacher", "not_ok"]) == (1, 1, 0)
    table = comparison_table(frame, DATASET)[PAIR]
    for label, row in stats.iterrows():
        assert (row["count"], row["not_ok"]) == (table.at[label, "n"], table.at[label, "not_ok"]), label


def drawn_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_final_png_says_which_means_leave_runs_out(short, results, tmp_path):
    frame, _ = short
    fig, ax = plots.final_figure(frame, DATASET, PAIR)
    texts = drawn_texts(ax)
    assert f"{accuracy(64.0, EPOCHS):.2f}  (n=1 of 3)" in texts  # not a bare '90.00'
    base = pd.Series([accuracy(60.0, EPOCHS), accuracy(62.0, EPOCHS)])
    assert f"{base.mean():.2f} ± {base.std():.2f}  (n=2 of 3)" in texts
    assert f"{accuracy(70.0, EPOCHS):.2f}" in texts  # the teacher's one run is all its cell has
    note = texts[-1].split("\n")
    assert note == [
        "no finished run: sp",
        "st: mean of 1 of 3 runs (1 run failed, 1 run missing)",
        "baseline: mean of 2 of 3 runs (1 run failed)",
    ]
    assert_png(plots.plot_final(frame, DATASET, PAIR, tmp_path / "final.png"), tmp_path / "final.png")
    # every run finished: no 'of', and only the existing note
    _, complete, _ = results
    texts = drawn_texts(plots.final_figure(complete, DATASET, PAIR)[1])
    assert not [t for t in texts if " of " in t] and texts[-1] == "no finished run: sp"
    st = pd.Series([accuracy(64.0, EPOCHS), accuracy(67.0, EPOCHS)])
    assert f"{st.mean():.2f} ± {st.std():.2f}  (n=2)" in texts


def test_curves_legend_and_cost_labels_say_which_means_leave_runs_out(short):
    frame, curves = short
    data = plots.group_curves(curves, frame, DATASET, PAIR)
    assert plots.legend_names(data, frame, DATASET, PAIR) == {
        "at": "at",
        "baseline": "baseline (n=2 of 3)",
        "st": "st (n=1 of 3)",
        "teacher": "teacher",
    }
    _, _, texts, _ = plots.cost_figure(frame, DATASET)
    labels = {t.get_text() for t in texts}
    assert {"st (n=1 of 3)", "baseline (snet, n=2 of 3)", "teacher (tnet)", "at"} <= labels


def test_race_names_and_note_say_which_means_leave_runs_out(short, results):
    frame, curves = short
    table = race.race_frame(curves, frame, DATASET, PAIR)
    assert table.loc[EPOCHS, "st"] == pytest.approx(accuracy(64.0, EPOCHS))  # a mean over seed 0 alone
    seeds = race.race_seeds(curves, frame, DATASET, PAIR)
    assert seeds.loc["st", ["count", "runs", "not_ok"]].tolist() == [1, 3, 2]
    assert seeds.loc["sp", "count"] == 0
    names = race.race_names(table.columns, seeds)
    assert dict(zip(table.columns, names)) == {
        "teacher": "teacher",
        "st": "st (n=1 of 3)",
        "baseline": "baseline (n=2 of 3)",
        "at": "at",
    }
    assert race.race_footnote(seeds) == [
        "no finished run: sp",
        "st: mean of 1 of 3 runs (1 run failed, 1 run missing)",
        "baseline: mean of 2 of 3 runs (1 run failed)",
    ]
    _, complete, complete_curves = results
    seeds = race.race_seeds(complete_curves, complete, DATASET, PAIR, "train_time")
    table = race.race_frame(complete_curves, complete, DATASET, PAIR, "train_time")
    assert race.race_names(table.columns, seeds) == list(table.columns)
    assert race.race_footnote(seeds) == ["no finished run: sp"]


def test_race_gif_names_means_that_leave_runs_out(short, tmp_path, monkeypatch):
    """render_group_race (what the workflow runs) draws 'st (n=1 of 3)' beside st's bar in every frame
    and the note under the bars, and still writes every frame."""
    pytest.importorskip("bar_chart_race")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    frame, _ = short
    summary = tmp_path / "short.csv"
    frame.to_csv(summary, index=False)
    ticks, notes = [], []
    barh, text = Axes.barh, Figure.text

    def spy_barh(self, y, width, *args, tick_label=None, **kwargs):
        ticks.append(list(tick_label))
        return barh(self, y, width, *args, tick_label=tick_label, **kwargs)

    def spy_text(self, x, y, s, *args, **kwargs):
        notes.append(s)
        return text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "barh", spy_barh)
    monkeypatch.setattr(Figure, "text", spy_text)
    out = tmp_path / "race.gif"
    frames = race.render_group_race(summary, DATASET, PAIR, out, steps_per_period=1, dpi=40)
    assert frames == race.expected_frames(EPOCHS, 1) == gif_frames(out)
    assert ticks and all("st (n=1 of 3)" in t and "baseline (n=2 of 3)" in t and "st" not in t for t in ticks)
    assert (
        "no finished run: sp\n"
        "st: mean of 1 of 3 runs (1 run failed, 1 run missing)\n"
        "baseline: mean of 2 of 3 runs (1 run failed)"
    ) in notes
