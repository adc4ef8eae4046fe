"""The CUDA-graph step path's CPU side (kdpipe.capture), and several runs trained together in one process.

The graph replay itself needs a GPU: bench/gpu.py's fidelity section trains every method eagerly and
with graphs from the same seed (README, "GPU throughput").  Here: what decides where a graph is used,
the option, and that runs trained together equal runs trained alone, bit for bit."""

import json

import pytest
import torch

import kdpipe
from kdpipe.capture import StepRunner
from kdpipe.data import load_data
from kdpipe.engine import Context, fit, fit_together, seed_everything
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.options import resolve

DIGITS = dict(data_name="digits", batch_size=64, epochs=2, train_subset=300)


@pytest.fixture(scope="module")
def data():
    return load_data("digits", train_subset=300)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "resnet14.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet14", 10).state_dict(), path)
    return str(path)


def kd_task(data, tmp_path, teacher_file, **opts):
    seed_everything(0)
    pair = dict(t_model=teacher_file, t_name="resnet14", s_name="resnet8", kd_mode="st")
    ctx = Context(resolve("kd", {**DIGITS, **pair, **opts}), data, torch.device("cpu"), tmp_path)
    return DistillTask(ctx)


def test_cpu_never_captures_and_the_option_is_checked(data, tmp_path):
    ctx = Context(
        resolve("base", {**DIGITS, "net_name": "resnet8", "cuda_graphs": 1}), data, torch.device("cpu"), tmp_path
    )
    assert ctx.cuda_graphs is False  # no effect on the CPU
    runner = StepRunner(SupervisedTask(ctx), lambda i, v: None, 64)
    assert not runner.enabled and runner.mode == "eager"
    off = Context(
        resolve("base", {**DIGITS, "net_name": "resnet8", "cuda_graphs": 0}), data, torch.device("cpu"), tmp_path
    )
    assert off.cuda_graphs is False
    with pytest.raises(KdpipeError, match="cuda_graphs"):
        resolve("base", {**DIGITS, "net_name": "resnet8", "cuda_graphs": 2})


def test_capture_keys_name_what_a_step_bakes_in(data, tmp_path, teacher_file):
    ctx = Context(resolve("base", {**DIGITS, "net_name": "resnet8"}), data, torch.device("cpu"), tmp_path)
    assert SupervisedTask(ctx).capture_key(0) == ()
    st = kd_task(data, tmp_path, teacher_file)
    assert st.capture_key(0) == st.capture_key(1) is not None  # one graph for the whole run
    dkd = kd_task(data, tmp_path, teacher_file, kd_mode="dkd", warmup=4)
    keys = [dkd.capture_key(e) for e in range(6)]
    assert [k[-1] for k in keys] == [(0.25,), (0.5,), (0.75,), (1.0,), (1.0,), (1.0,)]  # re-captured in the warm-up
    fsp = kd_task(data, tmp_path, teacher_file, kd_mode="fsp", epochs=4)  # init phase: 1 epoch
    assert fsp.capture_key(0) != fsp.capture_key(1) == fsp.capture_key(2)
    assert kd_task(data, tmp_path, teacher_file, dot_delta=0.075).capture_key(0) is None  # DOT: eager
    assert kd_task(data, tmp_path, teacher_file, kd_mode="kdsvd").capture_key(0) is None  # svd syncs the host
    assert [m for m, cls in LOSSES.items() if not cls.capturable] == ["kdsvd"]


def test_runs_trained_together_equal_runs_trained_alone(data, tmp_path, teacher_file):
    """fit_together interleaves the steps of several runs; each run's metrics and weights are its own."""

    def tasks(root):
        out = []
        for seed, make in ((0, "base"), (1, "base"), (0, "kd")):
            run_dir = root / f"{make}{seed}"
            run_dir.mkdir(parents=True)
            if make == "base":
                seed_everything(seed)
                opts = resolve("base", {**DIGITS, "net_name": "resnet8", "seed": seed})
                ctx = Context(opts, data, torch.device("cpu"), run_dir)
                out.append((SupervisedTask(ctx), ctx, {}))
            else:
                task = kd_task(data, run_dir, teacher_file, epochs=3)
                out.append((task, task.ctx, {}))
        return out

    alone = [(task, fit(task, ctx, fp)) for task, ctx, fp in tasks(tmp_path / "alone")]
    together_runs = tasks(tmp_path / "together")
    together = list(zip([t for t, _, _ in together_runs], fit_together(together_runs)))
    assert [len(r.history) for _, r in together] == [2, 2, 3]  # the kd run has one epoch more, run on alone
    for (task_a, a), (task_b, b) in zip(alone, together):
        strip = [{k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")} for row in a.history]
        assert strip == [
            {k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")} for row in b.history
        ]
        for (name, pa), pb in zip(
            task_a.roles[next(iter(task_a.roles))].state_dict().items(),
            task_b.roles[next(iter(task_b.roles))].state_dict().values(),
        ):
            assert torch.equal(pa, pb), name
    assert alone[0][1].history != alone[1][1].history  # the seeds differ: the comparison has teeth


class StandInGenerator:
    """A CUDA default generator's graph-safe state handling as torch.Generator has it: graphsafe_get_state
    and graphsafe_set_state share a state by reference, clone_state copies it."""

    clones = 0

    def __init__(self, state=None):
        self.state = state if state is not None else {"name": "default"}

    def graphsafe_get_state(self):
        return StandInGenerator(self.state)

    def graphsafe_set_state(self, other):
        self.state = other.state

    def clone_state(self):
        StandInGenerator.clones += 1
        return StandInGenerator(dict(self.state, name=f"own{StandInGenerator.clones}"))


def two_base_runs(data, root):
    runs = []
    for seed in (0, 1):
        seed_everything(seed)
        opts = resolve("base", {**DIGITS, "net_name": "resnet8", "seed": seed, "epochs": 1})
        ctx = Context(opts, data, torch.device("cpu"), root / f"s{seed}")
        ctx.run_dir.mkdir(parents=True)
        runs.append((SupervisedTask(ctx), ctx, {}))
    return runs


@pytest.fixture
def stand_in_generator(monkeypatch):
    """The CPU has no CUDA generator: a stand-in takes the default generator's place for every device."""
    import kdpipe.engine as engine

    generator = StandInGenerator()
    monkeypatch.setattr(engine, "_default_cuda_generator", lambda device: generator)
    monkeypatch.setattr(engine.OwnCudaGenerators, "graph_safe", True)
    return generator


def test_fit_together_gives_each_run_a_generator_state_of_its_own(data, tmp_path, monkeypatch, stand_in_generator):
    """On CUDA a graph replays its random ops from the generator state current at its capture: every
    turn of a run (epoch begin, steps, epoch end) runs with the run's own state current -- made current
    before the run's saved generator states are set, which go into whatever state is current -- another
    run's state never, and fit_together leaves the generator with the state it found (the GPU side:
    bench/gpu.py's seeds section)."""
    import kdpipe.engine as engine

    generator, original = stand_in_generator, stand_in_generator.state
    seen = []
    for name in ("begin_epoch", "step", "end_epoch"):
        method = getattr(engine.Training, name)

        def spy(self, *args, method=method, name=name):
            seen.append((self.ctx.run_dir.name, name, generator.state["name"]))
            return method(self, *args)

        monkeypatch.setattr(engine.Training, name, spy)
    restored = []  # the state current whenever a run's saved states are set
    for name in ("set_rng_state", "_set_torch_rng"):
        function = getattr(engine, name)

        def spy(*args, function=function):
            restored.append(generator.state["name"])
            return function(*args)

        monkeypatch.setattr(engine, name, spy)
    fit_together(two_base_runs(data, tmp_path))
    states = {run: {state for r, _, state in seen if r == run} for run in ("s0", "s1")}
    assert [len(v) for v in states.values()] == [1, 1] and states["s0"] != states["s1"], states
    assert "default" not in states["s0"] | states["s1"]
    assert {name for _, name, _ in seen} == {"begin_epoch", "step", "end_epoch"}
    assert sum(name == "step" for _, name, _ in seen) == 2 * 5  # 300 images, 64 a batch, a tenth held out
    # the first two: each run's start, set before its own state is made (a copy of what they set)
    assert restored[:2] == ["default", "default"] and len(restored) > 2 + 10
    assert set(restored[2:]) == states["s0"] | states["s1"]
    assert generator.state is original


def test_fit_together_restores_the_generator_when_a_run_fails(data, tmp_path, monkeypatch, stand_in_generator):
    import kdpipe.engine as engine

    original = stand_in_generator.state
    step = engine.Training.step

    def failing(self, i):
        if self.ctx.run_dir.name == "s1" and i == 2:
            raise RuntimeError("out of memory")
        return step(self, i)

    monkeypatch.setattr(engine.Training, "step", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        fit_together(two_base_runs(data, tmp_path))
    assert stand_in_generator.state is original


def test_run_record_says_how_steps_ran(tmp_path):
    opts = {**DIGITS, "epochs": 1}
    record = kdpipe.train_base(**opts, net_name="resnet8", save_root=str(tmp_path), note="r", cuda=0)
    assert record["step"] == "eager"
    assert json.loads((tmp_path / "r" / "run.json").read_text())["step"] == "eager"


def test_run_together_writes_each_run_as_alone(tmp_path):
    """Two base runs through run_together: the records and metrics of runs made alone; each train.log
    holds only its own run's lines; a finished run is returned as it is."""
    from kdpipe.runner import run_together

    opts = {**DIGITS, "epochs": 1, "net_name": "resnet8", "cuda": 0}
    alone = [kdpipe.train_base(**opts, seed=s, save_root=str(tmp_path / "alone"), note=f"s{s}") for s in (0, 1)]
    calls = [
        (lambda s=s: kdpipe.train_base(**opts, seed=s, save_root=str(tmp_path / "together"), note=f"s{s}"), {"id": s})
        for s in (0, 1)
    ]
    together = run_together(calls)
    for a, b in zip(alone, together):
        assert a["roles"] == b["roles"]
    assert [r["run"] for r in together] == [{"id": 0}, {"id": 1}]
    for s in (0, 1):
        run = tmp_path / "together" / f"s{s}"
        assert (run / "metrics.csv").read_text().splitlines()[1].split(",")[:9] == (
            (tmp_path / "alone" / f"s{s}" / "metrics.csv").read_text().splitlines()[1].split(",")[:9]
        )
        log = (run / "train.log").read_text()
        assert str(run) in log and str(tmp_path / "together" / f"s{1 - s}") not in log
    assert run_together(calls[:1])[0]["finished_at"] == together[0]["finished_at"]  # complete: not retrained


def test_methods_that_draw_random_numbers_train_together_as_alone(tmp_path, teacher_file):
    """CRD (negatives), BSS (attack targets), DML and FT, two seeds each, all in one run_together (made to
    interleave on the CPU): every run's metrics and weights are those of its run alone, bit for bit --
    each run draws from its own generators, seeded by its own seed."""
    from kdpipe.runner import run_together

    small = {**DIGITS, "train_subset": 96, "batch_size": 32, "cuda": 0}
    teacher = dict(t_model=teacher_file, t_name="resnet14")
    para = kdpipe.train_ft_paraphraser(**{**small, "epochs": 1}, **teacher, save_root=str(tmp_path), note="para")
    paraphraser = str(tmp_path / "para" / "paraphraser.pt")
    assert para["roles"]
    methods = {
        "crd": (kdpipe.train_crd, {**teacher, "s_name": "resnet8", "nce_n": 16}),
        "bss": (kdpipe.train_bss, {**teacher, "s_name": "resnet8", "attack_size": 8}),
        "dml": (kdpipe.train_dml, {"peers": ["resnet8", "resnet8"]}),
        "ft": (kdpipe.train_ft, {**teacher, "s_name": "resnet8", "paraphraser": paraphraser}),
    }

    def calls(root):
        return [
            (lambda f=f, o=o, m=m, s=s: f(**small, **o, seed=s, save_root=str(root), note=f"{m}{s}"), None)
            for m, (f, o) in methods.items()
            for s in (0, 1)
        ]

    alone = [call() for call, _ in calls(tmp_path / "alone")]
    together = run_together(calls(tmp_path / "together"), together=lambda task: True)
    assert [r["roles"] for r in together] == [r["roles"] for r in alone]
    for m in methods:
        for s in (0, 1):
            a, b = tmp_path / "alone" / f"{m}{s}", tmp_path / "together" / f"{m}{s}"
            strip = [line.split(",")[:9] for line in (a / "metrics.csv").read_text().splitlines()]
            assert strip == [line.split(",")[:9] for line in (b / "metrics.csv").read_text().splitlines()], m
            wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
            flat_a, flat_b = _tensors(wa), _tensors(wb)
            assert flat_a.keys() == flat_b.keys() and flat_a
            for key in flat_a:
                assert torch.equal(flat_a[key], flat_b[key]), (m, s, key)
    seeds = [(tmp_path / "alone" / f"crd{s}" / "metrics.csv").read_text() for s in (0, 1)]
    assert seeds[0] != seeds[1]  # the seeds differ: the comparison has teeth


def test_runs_killed_together_resume_as_alone(tmp_path, teacher_file, monkeypatch):
    """A together job killed mid-way (seed 0 after 2 epochs, seed 1 after 1) resumes each run from its own
    checkpoint, generators included: CRD's two seeds end as their uninterrupted runs alone, bit for bit."""
    from kdpipe import engine
    from kdpipe.runner import run_together

    small = {**DIGITS, "train_subset": 96, "batch_size": 32, "cuda": 0, "epochs": 3}
    opts = dict(t_model=teacher_file, t_name="resnet14", s_name="resnet8", nce_n=16)

    def calls(root):
        return [
            (lambda s=s: kdpipe.train_crd(**small, **opts, seed=s, save_root=str(root), note=f"crd{s}"), None)
            for s in (0, 1)
        ]

    for call, _ in calls(tmp_path / "alone"):
        call()
    end_epoch, ended = engine.Training.end_epoch, []

    def killed_after_three_epochs(self):
        end_epoch(self)
        ended.append(self.ctx.run_dir.name)
        if len(ended) == 3:
            raise RuntimeError("killed")

    monkeypatch.setattr(engine.Training, "end_epoch", killed_after_three_epochs)
    with pytest.raises(RuntimeError, match="killed"):
        run_together(calls(tmp_path / "together"), together=lambda task: True)
    monkeypatch.undo()
    assert ended == ["crd0", "crd1", "crd0"]
    records = run_together(calls(tmp_path / "together"), together=lambda task: True)
    assert [r["resumed_at_epochs"] for r in records] == [[2], [1]]
    for s in (0, 1):
        a, b = tmp_path / "alone" / f"crd{s}", tmp_path / "together" / f"crd{s}"
        strip = [line.split(",")[:9] for line in (a / "metrics.csv").read_text().splitlines()]
        assert strip == [line.split(",")[:9] for line in (b / "metrics.csv").read_text().splitlines()], s
        wa = _tensors(torch.load(a / "model.pt", weights_only=True))
        wb = _tensors(torch.load(b / "model.pt", weights_only=True))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), s


def _tensors(tree, prefix="") -> dict:
    """Every tensor of a nested checkpoint, by its path of keys."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _tensors(value, f"{prefix}/{key}").items()}
    return {}


@pytest.mark.slow
def test_seeds_together_rules_train_every_seed_in_one_job(tmp_path):
    """resources.seeds_together: one <rule>_seeds job per run of base, kd, FT, CRD, DML and per BSS generation
    writes every seed's run directory, each with its own identity, inputs (teacher, paraphraser, previous
    generation), log lines and teacher line; the summary sees them as usual."""
    import csv
    import re

    from test_workflow import job_counts, snakemake

    config = """
seeds: [0, 1]
pairs: [{teacher: resnet8, student: resnet8}]
data: {train_subset: 32}
train: {epochs: 1, batch_size: 16}
kd: {modes: [st]}
ft: {enabled: true}
crd: {enabled: true}
dml: {cohorts: [[resnet8, resnet8]]}
bss: {nets: [resnet8], generations: 2}
resources: {seeds_together: true}
"""
    (tmp_path / "c.yaml").write_text(config)
    run = snakemake("results/summary.csv", "--cores", "2", "--configfile", str(tmp_path / "c.yaml"), workdir=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = run.stdout + run.stderr
    assert job_counts(stats) == {
        "data_manifest": 1,
        "train_base_seeds": 1,
        "ft_paraphraser": 2,
        "train_kd_seeds": 1,
        "train_ft_seeds": 1,
        "train_crd_seeds": 1,
        "train_dml_seeds": 1,
        "train_bss_seeds": 2,
        "summary": 1,
    }
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    methods = ("baseline", "st", "ft", "crd", "dml", "bss")
    assert {(r["method"], r["seed"]) for r in rows} == {(m, str(s)) for m in methods for s in (0, 1)}
    results = tmp_path / "results/digits"
    runs = {  # run directory -> the input file its seed reads (run.json's inputs.t_model / paraphraser)
        "kd-st/resnet8-resnet8/seed{s}": ("t_model", "base/resnet8/seed{s}/model.pt"),
        "crd/resnet8-resnet8/seed{s}": ("t_model", "base/resnet8/seed{s}/model.pt"),
        "ft/resnet8-resnet8/seed{s}": ("paraphraser", "ft-paraphraser/resnet8/seed{s}/paraphraser.pt"),
        "bss/resnet8/seed{s}/gen1": ("t_model", "base/resnet8/seed{s}/model.pt"),
        "bss/resnet8/seed{s}/gen2": ("t_model", "bss/resnet8/seed{s}/gen1/model.pt"),
        "dml/resnet8-resnet8/seed{s}": (None, None),
    }
    for seed in (0, 1):
        for pattern, (option, path) in runs.items():
            run_dir = results / pattern.format(s=seed)
            record = json.loads((run_dir / "run.json").read_text())
            assert record["seed"] == seed and record["run"]["seed"] == seed, run_dir
            if option:
                assert record["inputs"][option]["path"].endswith(path.format(s=seed)), run_dir
            log = (run_dir / "train.log").read_text()
            assert f"seed{seed}" in log and f"seed{1 - seed}" not in log, run_dir
    logs = tmp_path / "results/logs/digits"
    assert len(re.findall(r"seed\d: teacher: live", (logs / "kd-st/resnet8-resnet8/seeds.log").read_text())) == 2
    assert (logs / "bss/resnet8/seeds/gen2.log").is_file() and (logs / "dml/resnet8-resnet8/seeds.log").is_file()


def test_capture_stream_is_the_runs_own_or_one_side_stream(data, tmp_path, monkeypatch):
    """Warm-ups and captures run on the run's own stream in fit_together (never a new pool stream,
    which could be another run's: a graph keeps its capture stream's cuBLAS workspace), and alone on one
    side stream of the runner's, the same for every capture.  CUDA's streams are stand-ins here."""
    ctx = Context(resolve("base", {**DIGITS, "net_name": "resnet8"}), data, torch.device("cpu"), tmp_path)
    runner = StepRunner(SupervisedTask(ctx), lambda i, v: None, 64)
    default, own, made = object(), object(), []
    current = [default]

    def new_stream(device=None):
        made.append(object())
        return made[-1]

    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    side = runner.capture_stream()
    assert side is not default and runner.capture_stream() is side and made == [side]
    current[0] = own  # fit_together's stream for this run
    assert runner.capture_stream() is own and made == [side]


def test_fit_together_refuses_runs_that_would_share_a_stream():
    from types import SimpleNamespace

    from kdpipe.engine import _check_distinct

    _check_distinct([SimpleNamespace(cuda_stream=1), SimpleNamespace(cuda_stream=2), None])
    with pytest.raises(KdpipeError) as err:
        _check_distinct([SimpleNamespace(cuda_stream=h) for h in (1, 2, 1)])
    assert str(err.value) == (
        "resources.seeds_together: 3 runs on one GPU need as many CUDA streams; torch gave 2 distinct ones "
        "(train fewer seeds together)"
    )
