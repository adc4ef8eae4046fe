"""The cost plan (``python -m kdpipe plan``): device-hours from the calibration table against a hand
computation, estimates flagged, the shipped table complete, bad input in one line. Its job counts are
checked against Snakemake's dry runs in test_workflow, test_cluster and test_benchmark_configs."""

import csv
import math
import re
import subprocess
import sys

import pytest
import yaml

import kdpipe
from conftest import ROOT, cli, cli_in_process
from kdpipe.costplan import (
    CALIBRATION,
    Calibration,
    FIELDS,
    _hours,
    cost_plan,
    dataset_split,
    device_label,
    format_plan,
    method_table,
    over_time_limit,
    student_share,
)
from kdpipe.data import load_data
from kdpipe.errors import KdpipeError
from kdpipe.workflow import load_config

ROWS = [  # device, quantity, subject, value, image_size
    ("gpu", "train_img_s", "resnet20", 1000, 16),
    ("gpu", "train_img_s", "resnet8", 4000, 32),  # measured at 32 px: 4x the images/s at 16 px
    ("gpu", "infer_img_s", "resnet20", 5000, 16),
    ("gpu", "student_step", "st", 1.5, 16),
    ("gpu", "teacher_passes", "st", 0.25, 16),
    ("cpu", "train_img_s", "resnet20", 100, 16),
    ("cpu", "train_img_s", "resnet14", 200, 16),  # half resnet20's step on the CPU
]

EAGER_ROWS = [  # the same GPU measured with --cuda_graphs 0: its plain steps 4x slower
    ("gpu-eager", "train_img_s", "resnet20", 250, 16),
    ("gpu-eager", "train_img_s", "resnet8", 1000, 32),
    ("gpu-eager", "infer_img_s", "resnet20", 5000, 16),
    ("gpu-eager", "student_step", "st", 1.5, 16),
    ("gpu-eager", "teacher_passes", "st", 0.25, 16),
]

CONFIG = {
    "datasets": ["digits"],
    "seeds": [0],
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "base": {"nets": ["resnet14"]},
    "kd": {"modes": ["st", "at"]},  # st reads the cache, at the live teacher
    "teacher_cache": "on",
    "train": {"epochs": 2},
    "data": {"val_size": 20, "train_subset": 100},
    "report": {"races": False},
}


def write_table(path, rows=ROWS):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for device, quantity, subject, value, size in rows:
            writer.writerow([device, quantity, subject, value, size, 32, f"test {device}", "2026-11-27"])
    return path


def test_hours_equal_a_hand_computation_and_estimates_are_flagged(tmp_path):
    config = load_config({**CONFIG})
    record = cost_plan(config, "gpu", write_table(tmp_path / "cal.csv"))
    # digits: 1,797 images, 359 for test; 20 of the other 1,438 for validation, the first 100 left to train on
    train, held_out, test, views = 100, 20 + 359, 359, 25
    s20, s8 = 1 / 1000, 1 / 4000 / 4  # seconds per image; resnet8 at a quarter of its 32-px time
    s14 = s20 * (100 / 200)  # not measured on gpu: resnet20's gpu time x resnet14's cpu step ratio
    i20 = 1 / 5000
    i8, i14 = s8 * (i20 / s20), s14 * (i20 / s20)  # inference: resnet20's inference/training ratio
    base = 2 * (train * s20 + held_out * i20) + 2 * (train * s8 + held_out * i8) + 2 * (train * s14 + held_out * i14)
    st = 2 * (train * 1.5 * s8 + held_out * i8) + test * i20  # cached: no teacher passes
    at = 2 * (train * (1.5 * s8 + 0.25 * s20) + held_out * i8) + test * i20  # costed as st, live teacher
    cache = train * views * i20
    hours = {rule: r["hours"] * 3600 for rule, r in record["rules"].items()}
    assert hours["train_base"] == pytest.approx(base, rel=1e-9)
    assert hours["train_kd"] == pytest.approx(st + at, rel=1e-9)
    assert hours["teacher_cache"] == pytest.approx(cache, rel=1e-9)
    assert record["hours"] * 3600 == pytest.approx(base + st + at + cache, rel=1e-9)
    longest = {rule: r["longest_h"] * 3600 for rule, r in record["rules"].items() if "runtime_min" in r}
    resnet20 = 2 * (train * s20 + held_out * i20)
    assert longest == pytest.approx({"train_base": resnet20, "train_kd": at, "teacher_cache": cache})
    limits = {rule: r["runtime_min"] for rule, r in record["rules"].items() if "runtime_min" in r}
    assert limits == {"train_base": 720, "train_kd": 960, "teacher_cache": 120}  # the rules' resources.runtime
    assert over_time_limit(record) == {}
    jobs = {rule: r["jobs"] for rule, r in record["rules"].items()}
    assert jobs == {
        "data_manifest": 1,
        "train_base": 3,
        "teacher_cache": 1,
        "train_kd": 2,
        "summary": 1,
        "tables": 1,
        "cost_plot": 1,
        "group_plots": 1,
        "all": 1,
    }
    assert set(record["estimated"]) == {"gpu"}  # by the calibration the jobs were costed from
    assert set(record["estimated"]["gpu"]) == {
        "net resnet14",
        "inference of resnet8",
        "inference of resnet14",
        "method at",
        "student_share st",  # no shares in this table: a method's extra cost scales with the student
        "student_share at",
    }
    assert "costed as st" in record["estimated"]["gpu"]["method at"]
    assert "calibrated nowhere" in record["estimated"]["gpu"]["student_share at"]
    assert "cpu step ratio" in record["estimated"]["gpu"]["net resnet14"]


@pytest.mark.parametrize(
    "other, share",
    [
        (1 + 0.5 / 3, 0.0),  # the same extra seconds with a student 3x slower: a fixed cost
        (1.5, 1.0),  # the same extra share of the student's step: it scales with the student
        (1 + 0.5 * (0.5 * 3 + 0.5) / 3, 0.5),
        (3.0, 1.0),  # clipped
        (0.9, 0.0),
    ],
)
def test_student_share_splits_a_methods_extra_cost_into_fixed_and_proportional(other, share):
    # own 1.5 plain steps of resnet20; `other` plain steps of a student whose step is 3x resnet20's
    assert student_share(1.5, other, 3.0) == pytest.approx(share)
    assert student_share(1.0, 2.0, 3.0) == 1.0  # nothing beyond a plain step to split
    assert student_share(1.09, 1.0, 3.0) == 1.0  # under SHARE_FLOOR: within the timing noise, not split


def test_methods_beyond_resnet20_students_cost_their_fixed_and_proportional_parts(tmp_path):
    """student_step is measured with resnet20 students: for another student, the cost beyond a plain step
    is student_share x that student's step + the rest x resnet20's, each method with its own share (the GPU
    takes the CPU's); the teacher's passes stay in the teacher's steps."""
    rows = ROWS + [
        ("gpu", "train_img_s", "resnet56", 250, 16),
        ("gpu", "student_step", "at", 1.2, 16),
        ("gpu", "teacher_passes", "at", 0.5, 16),
        ("cpu", "student_share", "st", 0.25, 16),
        ("cpu", "student_share", "at", 0.6, 16),
    ]
    table = write_table(tmp_path / "cal.csv", rows)
    config = {**CONFIG, "base": {"nets": []}, "kd": {"modes": ["st", "at"]}}  # st reads the cache, at does not
    train, held_out, test = 100, 20 + 359, 359
    s20, s56, s8, i20 = 1 / 1000, 1 / 250, 1 / 4000 / 4, 1 / 5000
    teacher = 0.5 * s8 * train  # at's teacher passes: resnet8's steps, whatever the student
    steps = {
        "resnet20": (1.5 * s20, 1.2 * s20),
        "resnet56": (s56 + 0.5 * (0.25 * s56 + 0.75 * s20), s56 + 0.2 * (0.6 * s56 + 0.4 * s20)),
    }
    for student, (st, at) in steps.items():
        pairs = [{"teacher": "resnet8", "student": student}]
        record = cost_plan(load_config({**config, "pairs": pairs}), "gpu", table)
        inference = held_out * i20 * (s56 / s20 if student == "resnet56" else 1)
        teacher_test = test * s8 * (i20 / s20)  # the teacher's accuracy: resnet8's inference, as estimated
        kd = 2 * (train * st + inference) + 2 * (train * at + teacher + inference) + 2 * teacher_test
        assert record["rules"]["train_kd"]["hours"] * 3600 == pytest.approx(kd, rel=1e-9)
        assert ("student_share" in record["estimated"].get("gpu", {})) == (student == "resnet56")
    assert "cpu's" in record["estimated"]["gpu"]["student_share"]


def test_student_share_is_the_inverse_of_the_plans_step(tmp_path):
    rows = [("cpu", "train_img_s", "resnet20", 1000, 16), ("cpu", "train_img_s", "resnet56", 400, 16)]
    rows += [("cpu", "student_share", "crd", 0.3, 16)]
    cal = Calibration.load("cpu", write_table(tmp_path / "cal.csv", rows))
    ratio = cal.train_seconds("resnet56", 16) / cal.train_seconds("resnet20", 16)
    other = cal.own_seconds("crd", 1.7, "resnet56", 16) / cal.train_seconds("resnet56", 16)
    assert ratio == pytest.approx(2.5) and student_share(1.7, other, ratio) == pytest.approx(0.3)
    assert cal.own_seconds("crd", 1.7, "resnet20", 16) == pytest.approx(1.7 / 1000)


def calibrate(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "bench/calibrate.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_calibrate_replaces_the_rows_it_measures_and_keeps_the_others(tmp_path):
    """bench/calibrate.py on the CPU (one step per timing): a net's rows, a method's student_step,
    teacher_passes and student_share, written into a copy of the shipped table that keeps every other row."""
    table = tmp_path / "step_costs.csv"
    table.write_bytes(CALIBRATION.read_bytes())
    argv = ["--device", "cpu", "--nets", "resnet8w4", "--only", "st", "--teacher", "resnet14"]
    argv += ["--share_student", "resnet8w4", "--steps", "1", "--repeats", "1", "--out", str(table)]
    calibrate(argv)
    with CALIBRATION.open() as f:
        before = list(csv.DictReader(f))
    with table.open() as f:
        after = list(csv.DictReader(f))
    measured = {("train_img_s", "resnet8w4"), ("infer_img_s", "resnet8w4")}
    measured |= {(q, "st") for q in ("student_step", "teacher_passes", "student_share")}

    def remeasured(r):
        return r["device"] == "cpu" and (r["quantity"], r["subject"]) in measured

    new = {(r["quantity"], r["subject"]): r for r in after if remeasured(r)}
    assert len(new) == len(measured) == sum(map(remeasured, after))
    assert all(r["batch"] == "32" and r["image_size"] == "16" for r in new.values())
    assert [r for r in after if not remeasured(r)] == [r for r in before if not remeasured(r)]
    assert float(new[("train_img_s", "resnet8w4")]["value"]) > 0 < float(new[("teacher_passes", "st")]["value"])
    share = new[("student_share", "st")]
    assert 0 <= float(share["value"]) <= 1
    ratio = float(re.search(r"\(([0-9.e+-]+) x resnet20's\)", share["source"]).group(1))
    assert "resnet8w4: " in share["source"] and ratio < 1  # timed with the second student, a smaller net
    assert "--only st" in new[("student_step", "st")]["source"]
    assert cost_plan(load_config(CONFIG), "cpu", table)["hours"] > 0
    # st measured again without a second student: its share, of the step measured before, goes
    argv[argv.index("--share_student") + 1] = "none"
    calibrate(argv)
    with table.open() as f:
        again = {(r["device"], r["quantity"], r["subject"]): r for r in csv.DictReader(f)}
    assert ("cpu", "student_share", "st") not in again and ("cpu", "student_share", "at") in again
    assert "--share_student none" in again[("cpu", "student_step", "st")]["source"]


def test_jobs_over_their_time_limit_are_named_with_the_runtime_that_would_do(tmp_path):
    """A GPU 10,000x slower than ROWS', 30 epochs: resnet20's base run outruns train_base's 12 h limit,
    the kd students (3.5 h) stay inside train_kd's 16 h."""
    slow = [(d, q, s, v / 10_000 if q.endswith("img_s") else v, px) for d, q, s, v, px in ROWS]
    config = load_config({**CONFIG, "train": {"epochs": 30}})
    record = cost_plan(config, "gpu", write_table(tmp_path / "cal.csv", slow))
    base = 30 * (100 * 10 + (20 + 359) * 2) / 3600  # resnet20: 10 s a training image, 2 s an inference
    assert over_time_limit(record) == {"train_base": (pytest.approx(base), 720)}
    at = 30 * (100 * (1.5 * 0.625 + 0.25 * 10) + 379 * 0.125) + 359 * 2  # resnet8 0.625 s, 0.125 s
    assert record["rules"]["train_kd"]["longest_h"] == pytest.approx(at / 3600)
    lines = format_plan(record).splitlines()
    assert [line for line in lines if line.startswith("over its time limit")] == [
        f"over its time limit: train_base's longest job, {base:.1f} h, > the 12 h its SLURM job asks for: "
        f"ask for more, --set-resources train_base:runtime={math.ceil(base * 1.25) * 60} (a job killed at its "
        "limit resumes from its last epoch checkpoint when Snakemake retries it: profiles/slurm retries)"
    ]
    row = next(line for line in lines if line.startswith("train_base ")).split()
    assert row == ["train_base", "3", f"{record['rules']['train_base']['hours']:.1f}", f"{base:.1f}", "h", "12", "h"]


def test_splits_are_the_data_modules():
    config = load_config({"base": {"nets": ["resnet8"]}, "data": {"val_size": 0.1}})
    split = dataset_split(config, "digits")
    data = load_data("digits", val_size=0.1)
    assert (split.train, split.val, split.test) == (len(data.train_y), len(data.val_y), len(data.test_y))
    assert (split.pixels, split.views) == (data.image_shape[-1], data.augmentation.num_views)
    cifar = load_config({"datasets": ["cifar100"], "base": {"nets": ["resnet8"]}, "data": {"val_size": 5000}})
    assert dataset_split(cifar, "cifar100").train == 45_000


def test_shipped_table_covers_every_net_on_the_cpu():
    from kdpipe.models import MODELS

    with open(CALIBRATION) as f:
        rows = {(r["quantity"], r["subject"]) for r in csv.DictReader(f) if r["device"] == "cpu"}
    assert {net for q, net in rows if q == "train_img_s"} >= set(MODELS)
    assert {net for q, net in rows if q == "infer_img_s"} >= set(MODELS)
    assert device_label("NVIDIA H100 80GB HBM3") == "h100" and device_label("cpu") == "cpu"


def test_command_prints_the_table_and_bad_input_is_one_line(tmp_path):
    out = cli("plan", "--configfile", "config/config.yaml", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["rule", "jobs", "CPU-hours", "longest", "job", "SLURM", "-t"]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1] == "46"  # make run's 46 jobs
    missing = cli("plan", "--configfile", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"kdpipe plan: error: configfile: got ['{tmp_path / 'nope.yaml'}']; no such file: {tmp_path / 'nope.yaml'}"
    ]
    shipped = ", ".join(kdpipe.costplan.calibration_devices())
    assert shipped == "h100, cpu, h200, h200-eager"
    with pytest.raises(KdpipeError, match=rf"^device: got 'tpu'; the calibration table has {shipped}$"):
        kdpipe.plan_cost(configfile="config/config.yaml", device="tpu")
    with pytest.raises(KdpipeError, match=r"^plan: unknown option 'gpu'"):
        kdpipe.plan_cost(configfile="config/config.yaml", gpu="h100")
    (tmp_path / "bad.yaml").write_text("train: {epochs: -1}\n")
    with pytest.raises(KdpipeError, match=r"config train.epochs: -1 is less than the minimum of 1"):
        kdpipe.plan_cost(configfile=str(tmp_path / "bad.yaml"))


def test_sweep_nodes_are_jobs_costed_as_their_entrys():
    """kd.sweep's nodes (train_kd_sweep) and its report rules count, and a swept point costs what the same
    student costs with its values (here an unchanged T: exactly the mode's own run's hours)."""
    import collections

    from kdpipe.costplan import dag_jobs

    config = load_config(
        {
            "seeds": [0, 1],
            "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
            "kd": {"modes": ["st"], "sweep": {"st": {"T": [2, 4, 8]}}},
            "teacher_cache": "off",
        }
    )
    counts = collections.Counter(job.rule for job in dag_jobs(config))
    assert counts["train_kd_sweep"] == 3 * 2 and counts["train_kd"] == 2
    assert counts["sweep_tables"] == 1 and counts["sweep_plot"] == 1
    rules = cost_plan(config, "cpu")["rules"]
    assert rules["train_kd_sweep"]["hours"] == pytest.approx(3 * rules["train_kd"]["hours"])


def test_seeds_together_and_eager_steps_on_a_graph_device(tmp_path):
    """resources.seeds_together: one <rule>_seeds job per run (train_kd_seeds, ...), its seeds' costs summed and
    divided by the measured together factor (interpolated between measured counts); a kd mode that cannot be captured
    (kdsvd) gains nothing and, like the eager rules, is costed from the GPU's -eager rows."""
    rows = ROWS + EAGER_ROWS + [("gpu", "together_x2", "resnet8", 1.5, 32), ("gpu", "together_x4", "resnet8", 2.5, 32)]
    table = write_table(tmp_path / "cal.csv", rows)
    seeds = [0, 1, 2]
    alone = cost_plan(load_config({**CONFIG, "seeds": seeds, "kd": {"modes": ["st", "kdsvd"]}}), "gpu", table)
    config = load_config(
        {**CONFIG, "seeds": seeds, "kd": {"modes": ["st", "kdsvd"]}, "resources": {"seeds_together": True}}
    )
    together = cost_plan(config, "gpu", table)
    assert together["rules"]["train_kd_seeds"]["jobs"] == 2 and "train_kd" not in together["rules"]
    assert alone["rules"]["train_kd"]["jobs"] == 6
    train, held_out, test = 100, 20 + 359, 359
    s8, i20 = 1 / 4000 / 4, 1 / 5000
    i8 = s8 * (i20 / (1 / 1000))
    st = 2 * (train * 1.5 * s8 + held_out * i8) + test * i20  # one seed, cached
    e8, e20 = 1 / 1000 / 4, 1 / 250  # the eager rows
    ei8 = e8 * (i20 / e20)
    kdsvd = 2 * (train * (1.5 * e8 + 0.25 * e20) + held_out * ei8) + test * i20  # eager, live teacher, costed as st
    assert alone["rules"]["train_kd"]["hours"] * 3600 == pytest.approx(3 * st + 3 * kdsvd, rel=1e-9)
    factor = 1.5 + (3 - 2) / (4 - 2) * (2.5 - 1.5)  # 3 seeds: between the measured 2 and 4 runs
    assert together["rules"]["train_kd_seeds"]["hours"] * 3600 == pytest.approx(3 * st / factor + 3 * kdsvd, rel=1e-9)
    assert together["estimated"]["gpu"]["3 runs of resnet8 together"] == "interpolated between 2 and 4 runs"
    assert "seeds of a run train together" in kdpipe.costplan.format_plan(together)
    grid = {  # every other rule that trains a seed per job has its <rule>_seeds too
        **CONFIG,
        "seeds": seeds,
        "crd": {"enabled": True},
        "ft": {"enabled": True},
        "dml": {"cohorts": [["resnet8", "resnet8"]]},
        "bss": {"nets": ["resnet8"], "generations": 2},
    }
    apart = cost_plan(load_config(grid), "gpu", table)["rules"]
    joint = cost_plan(load_config({**grid, "resources": {"seeds_together": True}}), "gpu", table)["rules"]
    for rule, jobs in (("train_crd", 1), ("train_ft", 1), ("train_dml", 1), ("train_bss", 2)):
        assert rule not in joint and apart[rule]["jobs"] == 3 * jobs, rule
        assert joint[f"{rule}_seeds"]["jobs"] == jobs, rule
        assert joint[f"{rule}_seeds"]["hours"] == pytest.approx(apart[rule]["hours"] / factor, rel=1e-9), rule
    assert joint["train_base_seeds"]["jobs"] * 3 == apart["train_base"]["jobs"]  # teachers and baselines too


def test_every_training_rule_replays_unless_cuda_graphs_is_off(tmp_path):
    """Which jobs a graph device costs from its -eager rows follows Task.replays: with graphs on, only kd runs that
    cannot replay (kdsvd); with resources.cuda_graphs 0 every training job, base runs and FT/CRD students too."""
    rows = ROWS + EAGER_ROWS
    table = write_table(tmp_path / "cal.csv", rows)
    grid = {**CONFIG, "kd": {"modes": ["st", "kdsvd"]}, "ft": {"enabled": True}, "crd": {"enabled": True}}
    on = cost_plan(load_config(grid), "gpu", table)["rules"]
    off = cost_plan(load_config({**grid, "resources": {"cuda_graphs": 0}}), "gpu", table)["rules"]
    eager = cost_plan(load_config({**grid, "resources": {"cuda_graphs": 0}}), "gpu-eager", table)["rules"]
    for rule in ("train_base", "train_ft", "train_crd", "train_kd", "ft_paraphraser"):
        assert off[rule]["hours"] > on[rule]["hours"] > 0, rule  # the eager rows: 4x slower training steps
        assert off[rule]["hours"] == pytest.approx(eager[rule]["hours"], rel=1e-12), rule  # costed as the eager device
    kdsvd_only = cost_plan(load_config({**grid, "kd": {"modes": ["kdsvd"]}}), "gpu", table)["rules"]["train_kd"]
    kdsvd_eager = cost_plan(load_config({**grid, "kd": {"modes": ["kdsvd"]}}), "gpu-eager", table)["rules"]["train_kd"]
    assert kdsvd_only["hours"] == pytest.approx(kdsvd_eager["hours"], rel=1e-12)  # kdsvd: eager with graphs on too


# README's plan table, its columns: (header, device, resources.seeds_together)
README_COLUMNS = (
    ("H100, eager (2026-11-26)", "h100", False),
    ("H200, eager", "h200-eager", False),
    ("H200, CUDA graphs (default)", "h200", False),
    ("H200, + `seeds_together`", "h200", True),
)


def _plan(name: str, device: str, together: bool) -> dict:
    raw = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    raw.setdefault("resources", {})["seeds_together"] = together
    return cost_plan(load_config(raw, check_pairs=False), device)


def test_readme_plan_figures_are_the_plans_of_the_shipped_table():
    """README's cost table and its printed plan are what ``kdpipe plan`` computes from the shipped
    calibration table: refreshing step_costs.csv (bench/calibrate.py, bench/gpu.sh) fails here
    until README says the new figures."""
    readme = (ROOT / "README.md").read_text()
    header = "| config | jobs | " + " | ".join(h for h, _, _ in README_COLUMNS) + " |"
    assert header in readme, "README's plan table changed its columns: update README_COLUMNS"
    rows = {}
    for line in readme[readme.index(header) :].splitlines()[2:]:
        if not line.startswith("| `config/"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    assert sorted(rows) == ["config/mdistiller.yaml", "config/paper.yaml", "config/repdistiller.yaml"]
    expected = {}
    for path in rows:
        name = path.removeprefix("config/").removesuffix(".yaml")
        plans = [_plan(name, device, together) for _, device, together in README_COLUMNS]
        cells = [str(plans[0]["jobs"])]
        for (_, _, together), record in zip(README_COLUMNS, plans):
            cells.append(_hours(record["hours"]) + (f" ({record['jobs']} jobs)" if together else ""))
        expected[path] = cells
        if name == "paper":
            together_plan = plans[-1]
    written = {path: [c.replace("*", "") for c in cells] for path, cells in rows.items()}  # * marks estimates
    assert written == expected, "README's plan table; the plans give:\n" + "\n".join(
        f"| `{path}` | " + " | ".join(cells) + " |" for path, cells in expected.items()
    )
    # the plan README prints: its table lines as format_plan writes them today
    printed = format_plan(together_plan, "config/paper.yaml + config/seeds_together.yaml").splitlines()
    table = printed[: printed.index(next(line for line in printed if line.startswith("total"))) + 1]
    missing = [line for line in table if line not in readme.splitlines()]
    assert not missing, "README's printed plan differs from today's:\n" + "\n".join(table)


def test_readme_cost_of_each_method_is_the_shipped_cpu_rows(tmp_path):
    """README's "Cost of each method" table is derived from the shipped CPU rows (method_table), and its
    cells are live-teacher steps over plain ones: student_step + teacher_passes x S(resnet110) / S(resnet20)."""
    table = method_table()
    assert table in (ROOT / "README.md").read_text(), "README's 'Cost of each method' table; the rows give:\n" + table
    rows = {
        (r["quantity"], r["subject"]): float(r["value"])
        for r in csv.DictReader(CALIBRATION.open())
        if r["device"] == "cpu"
    }
    ratio = rows[("train_img_s", "resnet20")] / rows[("train_img_s", "resnet110")]
    crd = rows[("student_step", "crd")] + rows[("teacher_passes", "crd")] * ratio
    assert f"| crd | {crd:.2f} |" in table
    assert f"| st with the teacher cache | {rows[('student_step', 'st')]:.2f} |" in table
    with pytest.raises(KdpipeError, match="no step costs of resnet110 and st on gpu"):
        method_table("gpu", write_table(tmp_path / "cal.csv"))


def test_plan_merges_several_config_files_as_snakemake_does(tmp_path):
    """``--configfile a.yaml b.yaml``: b's keys over a's, nested mappings key by key (Snakemake's update_config);
    the shipped overlay plans the paper grid with its seeds together, as README prints it."""
    from kdpipe.costplan import merge_config

    base = {"train": {"epochs": 5, "milestones": [2, 4]}, "seeds": [0, 1], "kd": {"modes": ["st"]}}
    over = {"train": {"milestones": [3]}, "seeds": [2], "kd": None}
    assert merge_config(base, over) == {"train": {"epochs": 5, "milestones": [3]}, "seeds": [2], "kd": None}
    assert base["train"] == {"epochs": 5, "milestones": [2, 4]}  # the inputs are left as they were

    files = ["config/paper.yaml", "config/seeds_together.yaml"]
    record = kdpipe.plan_cost(configfile=files, device="h200")
    assert record["seeds_together"] and record["table"] == format_plan(_plan("paper", "h200", True), " + ".join(files))
    (tmp_path / "short.yaml").write_text("train: {epochs: 100}\n")  # half the paper grid's epochs
    out = cli_in_process("plan", "--configfile", "config/paper.yaml", tmp_path / "short.yaml", "--device", "h100")
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.splitlines()[0]
        == f"kdpipe plan of config/paper.yaml + {tmp_path / 'short.yaml'} on h100, eager steps"
    )
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["train"]["epochs"] = 100  # the rest of paper.yaml's train group stays
    expected = format_plan(
        cost_plan(load_config(raw, check_pairs=False), "h100"), f"config/paper.yaml + {tmp_path / 'short.yaml'}"
    )
    assert out.stdout.strip() == expected
    assert expected != format_plan(_plan("paper", "h100", False), f"config/paper.yaml + {tmp_path / 'short.yaml'}")


# ---------------------------------------------------------------- what the printed plan says about its figures


def _notes(record) -> list[str]:
    return [
        line.removeprefix("measured otherwise: ") for line in format_plan(record).splitlines() if "otherwise" in line
    ]


def test_a_batch_size_the_steps_were_not_measured_at_is_named_not_scaled(tmp_path):
    """The rows' ``batch`` column against each costed run's batch size (a section's override included): named under
    the table with both batches, per calibration (graph and eager rows apart), the hours unchanged."""
    table = write_table(tmp_path / "cal.csv", ROWS + EAGER_ROWS)  # every row measured at batch 32
    kd = {"modes": ["st", "kdsvd"]}  # kdsvd's steps are eager: costed from the gpu-eager rows
    same = cost_plan(load_config({**CONFIG, "kd": kd, "train": {"epochs": 2, "batch_size": 32}}), "gpu", table)
    assert same["measured_otherwise"] == [] and _notes(same) == []
    config = {**CONFIG, "kd": {**kd, "train": {"batch_size": 16}}, "train": {"epochs": 2, "batch_size": 64}}
    other = cost_plan(load_config(config), "gpu", table)
    assert _notes(other) == [
        "batch: the gpu steps were measured at batch 32; this config trains at batch 16 (1 run), 64 (3 runs): "
        "per-image cost may differ (not scaled)",  # st at 16, the three base runs at 64
        "batch: the gpu-eager steps were measured at batch 32; this config trains at batch 16 (1 run): "
        "per-image cost may differ (not scaled)",  # kdsvd
    ]
    assert other["hours"] == pytest.approx(same["hours"], rel=1e-12)  # no scaling law invented


def test_gpu_sharing_is_named_not_scaled(monkeypatch):
    """A GPU share per SLURM job or several local jobs per GPU: the rows are a job's steps on a GPU of its own, so
    the plan names the share under the table (on a GPU only); the hours are unchanged."""
    config = load_config(CONFIG)
    alone = cost_plan(config, "h200")
    assert not [n for n in alone["measured_otherwise"] if n.startswith("GPU sharing")]
    monkeypatch.setenv("KDPIPE_SLURM_GPUS", "shard:1")
    monkeypatch.setenv("KDPIPE_JOBS_PER_GPU", "4")
    shared = cost_plan(config, "h200")
    (note,) = [n for n in shared["measured_otherwise"] if n.startswith("GPU sharing")]
    assert note.startswith("GPU sharing: KDPIPE_JOBS_PER_GPU=4 and KDPIPE_SLURM_GPUS=shard:1 puts several jobs on")
    assert (
        "time-slice" in note and note.endswith("(not scaled)") and f"measured otherwise: {note}" in format_plan(shared)
    )
    assert shared["hours"] == pytest.approx(alone["hours"], rel=1e-12)
    assert not [n for n in cost_plan(config, "cpu")["measured_otherwise"] if n.startswith("GPU sharing")]


def test_cuda_0_is_refused_on_a_gpu_and_precision_layout_threads_are_named(tmp_path):
    """resources.cuda 0 trains on the CPU: planned on a GPU it is refused in one line; amp, memory_format and
    threads that differ from what the rows measured (kdpipe's defaults on that device; the CPU rows' threads
    from their source) are named under the table."""
    (tmp_path / "cpu_only.yaml").write_text("resources: {cuda: 0}\n")
    out = cli_in_process("plan", "--configfile", "config/config.yaml", tmp_path / "cpu_only.yaml", "--device", "h200")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "kdpipe plan: error: device: got 'h200', a GPU, but config resources.cuda is 0: its jobs train on the CPU; "
        "plan them with --device cpu"
    ]

    def notes(device, **resources):  # the shipped table's; its batches are the other test's
        noted = cost_plan(load_config({**CONFIG, "resources": resources}), device)["measured_otherwise"]
        return [note for note in noted if not note.startswith("batch:")]

    assert notes("cpu", cuda=0) == [] == notes("cpu", memory_format="contiguous", threads=1)
    assert notes("h200", memory_format="channels_last") == [] == notes("h200", cuda=1, threads=8)
    assert notes("h200", amp="off") == [
        "amp: the h200 rows measured bf16 autocast steps (kdpipe's default there); resources.amp off trains float32 "
        "steps: per-image cost may differ (not scaled)"
    ]
    assert notes("cpu", amp="off") == []  # float32 on the CPU either way
    assert notes("h100", memory_format="contiguous") == [
        "memory_format: the h100 rows measured channels_last steps (kdpipe's default there); "
        "resources.memory_format contiguous trains contiguous (NCHW) steps: per-image cost may differ (not scaled)"
    ]
    assert [n.split(":")[0] for n in notes("cpu", memory_format="channels_last", threads=8, cuda=1)] == [
        "memory_format",
        "threads",
        "cuda",
    ]
    assert notes("cpu", threads=8)[0] == (
        "threads: the cpu rows are 1-thread steps and the hours here 1-thread hours; resources.threads 8: "
        "a job's wall time may be shorter (not scaled)"
    )


def test_the_first_line_says_which_engine_the_rows_measured(tmp_path):
    """A GPU's graph rows come with its -eager rows: without them (the H100's) or on the -eager rows themselves the
    plan says it costs eager steps, as it does for a config that turns the graphs off."""
    old = [("old", *row[1:]) for row in ROWS if row[0] == "gpu"]  # a GPU measured without its -eager rows
    table = write_table(tmp_path / "cal.csv", ROWS + EAGER_ROWS + old)

    def first(device, shipped=False, **resources):
        record = cost_plan(load_config({**CONFIG, "resources": resources}), device, None if shipped else table)
        return format_plan(record, "c.yaml").splitlines()[0]

    assert first("gpu") == "kdpipe plan of c.yaml on gpu, today's engine"
    assert first("gpu", cuda_graphs=0) == "kdpipe plan of c.yaml on gpu, eager steps (resources.cuda_graphs: 0)"
    assert first("gpu-eager") == "kdpipe plan of c.yaml on gpu-eager, eager steps"
    assert first("old") == "kdpipe plan of c.yaml on old, eager steps"  # a GPU without -eager rows
    assert first("cpu", shipped=True) == "kdpipe plan of c.yaml on cpu, today's engine"
    out = cli_in_process("plan", "--configfile", "config/config.yaml", "--device", "h100")
    assert out.stdout.splitlines()[0] == "kdpipe plan of config/config.yaml on h100, eager steps"


def test_the_plan_is_the_full_grid_and_counts_the_jobs_whose_outputs_exist(tmp_path):
    """Every job is planned whatever has run; the notes say how many already have their outputs (a run's run.json,
    another job's first output) and their hours, and what the hours include."""
    table = write_table(tmp_path / "cal.csv")
    config = load_config({**CONFIG})
    fresh = cost_plan(config, "gpu", table, root=tmp_path)
    lines = format_plan(fresh).splitlines()
    assert "the full grid: none of its 12 jobs has its outputs in this directory yet" in lines
    assert lines[lines.index(next(line for line in lines if line.startswith("total"))) + 1].startswith(
        "assumes: one gpu per job, its training steps plus per-epoch evaluation (not process start, checkpoint "
        "writes); digits 100 train + 20 val + 359 test images"
    )
    from kdpipe.costplan import dag_jobs

    jobs = {job.rule: job for job in dag_jobs(config)}
    base = next(job for job in dag_jobs(config) if job.rule == "train_base" and job.run.student == "resnet20")
    for path in (f"{base.run.run_dir}/run.json", jobs["teacher_cache"].key, "results/summary.csv"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    (tmp_path / jobs["train_kd"].run.run_dir).mkdir(parents=True)  # a run dir without its run.json: not done
    (tmp_path / jobs["train_kd"].run.run_dir / "model.pt").write_text("")
    partial = cost_plan(config, "gpu", table, root=tmp_path)
    assert partial["jobs"] == fresh["jobs"] == 12 and partial["hours"] == fresh["hours"]  # still the full grid
    assert partial["done"]["jobs"] == 3
    resnet20 = 2 * (100 * (1 / 1000) + (20 + 359) / 5000)  # as the hand computation above
    cache = 100 * 25 / 5000
    assert partial["done"]["hours"] * 3600 == pytest.approx(resnet20 + cache, rel=1e-9)
    assert (
        "the full grid: 3 of its 12 jobs already have their outputs in this directory (a run's run.json, another "
        f"job's first output; {_hours(partial['done']['hours'])} GPU-hours of the total); `snakemake -n` lists "
        "what is left to run"
    ) in format_plan(partial).splitlines()


def test_sources_and_estimates_are_those_of_each_calibration_used(tmp_path):
    """The graph and eager rows keep their own estimates (the device in the key), and the sources name the rows
    of every calibration a job was costed from: the eager ones only where a job's steps stayed eager."""
    eager = [r for r in EAGER_ROWS if r[2] != "resnet8"]  # resnet8 measured as graphs only
    table = write_table(tmp_path / "cal.csv", ROWS + eager + [("cpu", "train_img_s", "resnet8", 400, 16)])
    graphs = cost_plan(load_config({**CONFIG, "kd": {"modes": ["st"]}}), "gpu", table)
    assert [s for s in graphs["sources"] if s.startswith("gpu")] == ["gpu 2026-11-27: test gpu"]
    assert "gpu-eager" not in graphs["estimated"] and "net resnet8" not in graphs["estimated"]["gpu"]
    mixed = cost_plan(load_config({**CONFIG, "kd": {"modes": ["st", "kdsvd"]}}), "gpu", table)
    assert mixed["sources"] == [
        "gpu 2026-11-27: test gpu",
        "gpu-eager 2026-11-27: test gpu-eager",
        "cpu 2026-11-27: test cpu",
    ]
    assert "net resnet8" not in mixed["estimated"]["gpu"]  # st's student: measured there
    assert mixed["estimated"]["gpu-eager"]["net resnet8"] == "resnet20's gpu-eager throughput x its cpu step ratio"
    printed = format_plan(mixed).splitlines()
    at = printed.index("estimated (not measured on gpu-eager):")
    assert "  net resnet8: resnet20's gpu-eager throughput x its cpu step ratio" in printed[at:]
    assert "calibration gpu-eager 2026-11-27: test gpu-eager" in printed


def test_a_teacher_cache_runs_no_graphs_and_restarts_when_killed(tmp_path):
    """resources.cuda_graphs moves the training jobs to the eager rows, never a teacher cache (inference, no
    training steps); over its time limit, a cache build is said to start again, a training job to resume."""
    eager = [(d, q, s, 1000 if q == "infer_img_s" else v, px) for d, q, s, v, px in EAGER_ROWS]  # 5x slower inference
    table = write_table(tmp_path / "cal.csv", ROWS + eager)
    grid = {**CONFIG, "ft": {"enabled": True}}
    on = cost_plan(load_config(grid), "gpu", table)["rules"]
    off = cost_plan(load_config({**grid, "resources": {"cuda_graphs": 0}}), "gpu", table)["rules"]
    cache = 100 * 25 / 5000  # the graph device's inference rows: digits' 25 views of 100 training images
    assert off["teacher_cache"]["hours"] * 3600 == pytest.approx(cache, rel=1e-12)
    assert on["teacher_cache"]["hours"] == off["teacher_cache"]["hours"]
    assert off["ft_paraphraser"]["hours"] > on["ft_paraphraser"]["hours"]  # it trains: its steps are graphs or not
    slow = [(d, q, s, v / 100_000 if q.endswith("img_s") else v, px) for d, q, s, v, px in ROWS]
    record = cost_plan(load_config({**CONFIG, "train": {"epochs": 30}}), "gpu", write_table(tmp_path / "s.csv", slow))
    over = {line.split("'")[0].removeprefix("over its time limit: "): line for line in format_plan(record).splitlines()}
    assert set(over) >= {"train_base", "teacher_cache"}
    assert "(a job killed at its limit resumes from its last epoch checkpoint when Snakemake" in over["train_base"]
    assert over["teacher_cache"].endswith(
        "(a job killed at its limit starts again from scratch, keeping no checkpoint, when Snakemake retries it: "
        "profiles/slurm retries)"
    )


def test_a_flag_is_taken_only_as_spelled_in_full():
    """Every subcommand's parser refuses a prefix of a flag (allow_abbrev=False): Snakemake's --config is not
    kdpipe's --configfile, and is refused in one line."""
    from kdpipe.cli import make_parser
    from kdpipe.options import ENTRIES, options_for

    out = cli_in_process("plan", "--configfile", "config/config.yaml", "--config", "seeds=[0]")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["python -m kdpipe: error: unrecognized arguments: --config seeds=[0]"]
    parser = make_parser("kdpipe")
    for entry in ENTRIES:
        names = [opt.name for opt in options_for(entry)]
        name = max(names, key=len)
        assert name[:-1] not in names
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([entry, f"--{name[:-1]}", "1"])
        assert stop.value.code == 2, entry
