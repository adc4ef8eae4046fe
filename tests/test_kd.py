"""train_kd end to end on tiny digits data: every mode, API and CLI, errors, two-stage phases."""

import csv
import json
import math

import pytest
import torch

import kdpipe
from conftest import cli, cli_in_process, tiny_cli_flags
from kdpipe.checkpoint import sha256_file
from kdpipe.errors import KdpipeError
from kdpipe.losses import LOSSES

SEED_MODES = [
    "logits",
    "st",
    "at",
    "fitnet",
    "nst",
    "pkt",
    "fsp",
    "rkd",
    "ab",
    "sp",
    "sobolev",
    "cc",
    "lwm",
    "irg",
    "vid",
    "ofd",
    "afd",
]
NEW_MODES = ["dkd", "dist", "kdsvd", "reviewkd"]  # mdistiller's table beyond the seed
ALL_MODES = SEED_MODES + NEW_MODES
TINY = dict(data_name="digits", epochs=1, batch_size=16, lr=0.05, train_subset=48, cuda=0, threads=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    kdpipe.train_base(net_name="resnet14", save_root=str(root), note="t", **{**TINY, "train_subset": 200, "epochs": 2})
    return root / "t" / "model.pt"


def test_registry_has_every_mode():
    assert sorted(LOSSES) == sorted(ALL_MODES)
    reference = {
        "logits": 0.1,
        "st": 0.1,
        "at": 1000,
        "fitnet": 0.1,
        "nst": 10,
        "pkt": 10000,
        "fsp": 1.0,
        "rkd": 1.0,
        "ab": 10,
        "sp": 3000,
        "sobolev": 20,
        "cc": 100,
        "lwm": 0.4,
        "irg": 1.0,
        "vid": 1.0,
        "ofd": 0.5,
        "afd": 500,
        "dkd": 1.0,
        "dist": 2.0,
        "kdsvd": 1.0,
        "reviewkd": 5.0,
    }
    assert {m: LOSSES[m].defaults["lambda_kd"] for m in ALL_MODES} == pytest.approx(reference)
    assert {m for m in ALL_MODES if LOSSES[m].two_stage} == {"fsp", "ab"}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_trains_from_api(tmp_path, teacher, mode):
    record = kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode=mode,
        save_root=str(tmp_path),
        note=mode,
        **TINY,
    )
    rows = list(csv.DictReader(open(tmp_path / mode / "metrics.csv")))
    expected_epochs = 2 if LOSSES[mode].two_stage else 1  # init phase (epochs/4, at least 1) + 1
    assert len(rows) == expected_epochs
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    info = record["info"]
    assert info["loss"]["mode"] == mode and info["lambda_kd"] == pytest.approx(LOSSES[mode].defaults["lambda_kd"])
    assert record["roles"]["student"]["method"] == mode and record["roles"]["student"]["teacher"] == "resnet14"
    assert record["inputs"]["t_model"]["sha256"] == sha256_file(teacher)
    assert 0 <= info["teacher"]["test_acc"] <= 100
    state = torch.load(tmp_path / mode / "model.pt", weights_only=True)
    assert "fc.weight" in state


def test_learned_helpers_are_trained_and_saved(tmp_path, teacher):
    kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="vid",
        save_root=str(tmp_path),
        note="vid",
        **TINY,
    )
    ckpt = torch.load(tmp_path / "vid" / "checkpoint.pt", weights_only=True)
    helper_state = ckpt["task"]["extra"]["loss"]
    assert any("alpha" in k or "regressor" in k for k in helper_state)
    # the optimizer holds the helper parameters as well as the student's
    n_student = len(list(kdpipe.models.build_model("resnet8", 10).parameters()))
    assert len(ckpt["task"]["optimizers"]["student"]["param_groups"][0]["params"]) > n_student


def test_teacher_is_frozen_and_measured(tmp_path, teacher):
    before = torch.load(teacher, weights_only=True)
    record = kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="at",
        save_root=str(tmp_path),
        note="at",
        **TINY,
    )
    after = torch.load(teacher, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    teacher_record = json.loads((teacher.parent / "run.json").read_text())
    assert record["info"]["teacher"]["test_acc"] == pytest.approx(
        teacher_record["roles"]["net"]["test_acc_at_best"], abs=1e-6
    )


def test_adapter_reported_when_widths_differ(tmp_path, teacher):
    """A teacher and student of different depth share widths here, so build a case by hand."""
    from kdpipe.losses import TapShapes

    s = TapShapes((16, 16, 16), ((16, 16, 16), (32, 8, 8), (32, 4, 4)), 32, 10)
    t = TapShapes((16, 16, 16), ((16, 16, 16), (32, 8, 8), (64, 4, 4)), 64, 10)
    loss = LOSSES["fitnet"](s, t)
    assert loss.describe()["adapters"][0]["conv1x1_bn"] is True


def test_st_weight_adds_soft_target_term_for_any_mode(tmp_path, teacher):
    record = kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="rkd",
        st_weight=0.5,
        save_root=str(tmp_path),
        note="rkd+st",
        **TINY,
    )
    assert record["roles"]["student"]["variant"] == "+st" and record["info"]["st_weight"] == 0.5


def test_two_stage_phases_and_schedule(tmp_path, teacher):
    record = kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="fsp",
        save_root=str(tmp_path),
        note="fsp",
        init_epochs=5,
        **{**TINY, "epochs": 2},
    )
    rows = list(csv.DictReader(open(tmp_path / "fsp" / "metrics.csv")))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([0.005, 0.005, 0.005, 0.0005, 0.00005, 0.05, 0.005])
    assert record["info"]["init_epochs"] == 5
    assert record["roles"]["student"]["best_epoch"] > 5  # never chosen during the init phase


def two_stage_task(tmp_path, teacher, mode, **kw):
    """A DistillTask built as run_entry builds it, and one tiny normalised batch."""
    from kdpipe.data import Normalizer
    from kdpipe.engine import Context, seed_everything
    from kdpipe.methods.kd import DistillTask
    from kdpipe.options import resolve
    from kdpipe.runner import load_options_data

    args = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", kd_mode=mode, init_epochs=1)
    opts = resolve("kd", {**args, **TINY, "save_root": str(tmp_path), **kw})
    data = load_options_data(opts)
    ctx = Context(opts, data, torch.device("cpu"), tmp_path)
    seed_everything(0)
    task = DistillTask(ctx)
    x = Normalizer(data.mean, data.std, ctx.device, False)(data.train_x[:16])
    batch = (x, data.train_y[:16], torch.arange(16), torch.zeros(16, dtype=torch.long))
    return task, batch


def step(task, batch, epoch):
    task.train(True)
    task.on_epoch_start(epoch)
    task.train_step(*batch, epoch)
    task.on_epoch_end(epoch)


@pytest.mark.parametrize("mode", ["fsp", "ab"])
def test_two_stage_phases_share_one_optimizer_and_its_momentum(tmp_path, teacher, mode):
    """KD-Zoo's train_kd.py: the init phase and the CE phase step ONE SGD optimizer, so the CE phase's
    first update starts from the momentum the init phase built up (buf <- 0.9 buf + grad + wd p)."""
    task, batch = two_stage_task(tmp_path, teacher, mode)
    assert set(task.optimizers) == {"student"} and set(task.schedulers) == {"student"}
    opt = task.optimizers["student"]
    student = task.roles["student"]
    fc = student.fc.weight
    fc_before = fc.detach().clone()
    step(task, batch, 0)  # init phase: distillation loss only (lr 0.05 x 0.1)
    assert task.current_lr() == pytest.approx(0.05)  # the schedule moved on to the CE phase
    params = [p for group in opt.param_groups for p in group["params"]]
    init_bufs = [opt.state[p]["momentum_buffer"].clone() for p in params]
    # the classifier is untouched by the FSP/AB loss; KD-Zoo's 0 x CE still gives it a zero gradient,
    # so weight decay reaches it: its buffer after one step is wd * w
    assert torch.allclose(opt.state[fc]["momentum_buffer"], 1e-4 * fc_before)
    before = [p.detach().clone() for p in params]
    step(task, batch, 1)  # CE phase, same optimizer
    for p, buf, w in zip(params, init_bufs, before):
        want = 0.9 * buf + p.grad + 1e-4 * w
        assert torch.allclose(opt.state[p]["momentum_buffer"], want, atol=1e-7)
    assert any(float(b.abs().sum()) > 0 for b in init_bufs)


def test_two_stage_separate_optimizers_setting(tmp_path, teacher):
    task, batch = two_stage_task(tmp_path, teacher, "fsp", init_optimizer="separate")
    assert set(task.optimizers) == {"student", "init"}
    step(task, batch, 0)
    params = [p for group in task.optimizers["student"].param_groups for p in group["params"]]
    assert all(p not in task.optimizers["student"].state for p in params)  # untouched by the init phase
    before = [p.detach().clone() for p in params]
    step(task, batch, 1)
    for p, w in zip(params, before):  # a fresh buffer: just this step's gradient plus weight decay
        assert torch.allclose(task.optimizers["student"].state[p]["momentum_buffer"], p.grad + 1e-4 * w, atol=1e-7)
    assert task.info()["init_optimizer"] == "separate"


@pytest.mark.parametrize("mode", ["fsp", "ab"])
def test_two_stage_repdistiller_init_features_constant_lr(tmp_path, teacher, mode):
    """RepDistiller's helper/pretrain.py: a fresh SGD over get_feat_modules() (and AB's connector) at the
    constant --learning_rate: the init phase leaves the classifier as it was, with no optimizer state."""
    task, batch = two_stage_task(tmp_path, teacher, mode, init_optimizer="features", init_schedule="constant")
    assert set(task.optimizers) == {"student", "init"}
    student = task.roles["student"]
    fc_before = [p.detach().clone() for p in student.fc.parameters()]
    conv_before = student.conv1.weight.detach().clone()
    task.on_epoch_start(0)
    assert task.current_lr() == pytest.approx(0.05)  # TINY's lr, not x0.1
    step(task, batch, 0)
    init_state = task.optimizers["init"].state
    assert all(torch.equal(p, b) for p, b in zip(student.fc.parameters(), fc_before))
    assert all(p not in init_state for p in student.fc.parameters())
    moved = [p for p in student.parameters() if p in init_state]
    assert moved and all(float(init_state[p]["momentum_buffer"].abs().sum()) > 0 for p in moved)
    assert not torch.equal(student.conv1.weight, conv_before)  # the features did train
    info = task.info()
    assert info["init_optimizer"] == "features" and info["init_schedule"] == "constant"
    assert task.method_settings()["init_schedule"] == "constant"


def test_init_features_leaves_wrns_head_alone_in_eval_mode(tmp_path, teacher):
    """RepDistiller's init phase (helper/pretrain.py): model_s.eval(), then train() and SGD over
    get_feat_modules() (WRN's conv1 and block1-3) and the connector: WRN's final BatchNorm, outside
    them, stays in eval mode at its initial statistics -- AB's last term reads block 3's output divided
    by sqrt(1 + eps) -- and is not trained; the CE phase trains it as usual."""
    task, batch = two_stage_task(tmp_path, teacher, "ab", s_name="wrn_16_1", init_optimizer="features")
    student = task.roles["student"]
    head = {"bn1": student.bn1, "fc": student.fc}
    before = {k: v.detach().clone() for name, m in head.items() for k, v in m.state_dict(prefix=name).items()}
    task.train(True)
    task.on_epoch_start(0)
    assert not student.bn1.training and student.stages[0].blocks[0].bn1.training
    x = batch[0]
    with torch.no_grad():
        taps = student(x)
        block3 = taps.stages[-1]  # the last stage's output, before the final BatchNorm
    torch.testing.assert_close(taps.stages_pre[-1], block3 / math.sqrt(1 + student.bn1.eps))
    held = {id(p) for m in head.values() for p in m.parameters()}
    init_params = [p for group in task.optimizers["init"].param_groups for p in group["params"]]
    assert not held & {id(p) for p in init_params} and len(init_params) > 0
    task.train_step(*batch, 0)
    task.on_epoch_end(0)
    after = {k: v for name, m in head.items() for k, v in m.state_dict(prefix=name).items()}
    assert [k for k in before if not torch.equal(after[k], before[k])] == []
    step(task, batch, 1)  # the CE phase: the head trains, in train mode
    assert student.bn1.training
    assert not torch.equal(student.bn1.weight, before["bn1weight"])
    assert not torch.equal(student.bn1.running_mean, before["bn1running_mean"])


def test_init_phase_factor_forms():
    from kdpipe.methods.kd import init_phase_factor

    assert [init_phase_factor(e, 10) for e in range(10)] == [0.1] * 6 + [0.01] * 2 + [0.001] * 2
    assert [init_phase_factor(e, 10, "constant") for e in range(10)] == [1.0] * 10


def test_two_stage_resume_across_the_phase_boundary_is_exact(tmp_path, teacher, monkeypatch):
    from kdpipe.methods.kd import DistillTask

    args = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", kd_mode="fsp", init_epochs=2)
    opts = {**TINY, "epochs": 2, "save_root": str(tmp_path)}
    kdpipe.train_kd(note="straight", **args, **opts)
    original = DistillTask.on_epoch_start

    def stop(self, epoch):
        if epoch == 2:  # the first CE epoch: the checkpoint holds the init phase's momentum
            raise RuntimeError("interrupted")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(DistillTask, "on_epoch_start", stop)
        with pytest.raises(RuntimeError, match="interrupted"):
            kdpipe.train_kd(note="resumed", **args, **opts)
    record = kdpipe.train_kd(note="resumed", **args, **opts)
    assert record["resumed_at_epochs"] == [2]
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["task"] for n in ("straight", "resumed"))
    assert all(torch.equal(v, b["roles"]["student"][k]) for k, v in a["roles"]["student"].items())
    sa, sb = a["optimizers"]["student"]["state"], b["optimizers"]["student"]["state"]
    assert set(sa) == set(sb) and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    rows = [list(csv.DictReader(open(tmp_path / n / "metrics.csv"))) for n in ("straight", "resumed")]
    assert [r["lr"] for r in rows[0]] == [r["lr"] for r in rows[1]]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]


def test_student_starts_from_baseline_init_or_s_init(tmp_path, teacher):
    from kdpipe.engine import seed_everything
    from kdpipe.models import build_model

    seed_everything(0)
    baseline_init = build_model("resnet8", 10).state_dict()
    kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="st",
        save_root=str(tmp_path),
        note="zero",
        **{**TINY, "lr": 1e-12, "weight_decay": 0.0},
    )
    trained = torch.load(tmp_path / "zero" / "model.pt", weights_only=True)
    assert torch.allclose(trained["conv1.weight"], baseline_init["conv1.weight"], atol=1e-6)
    torch.save(build_model("resnet8", 10).state_dict(), tmp_path / "init.pt")
    given = torch.load(tmp_path / "init.pt", weights_only=True)
    kdpipe.train_kd(
        t_model=str(teacher),
        t_name="resnet14",
        s_name="resnet8",
        kd_mode="st",
        s_init=str(tmp_path / "init.pt"),
        save_root=str(tmp_path),
        note="given",
        **{**TINY, "lr": 1e-12, "weight_decay": 0.0},
    )
    trained = torch.load(tmp_path / "given" / "model.pt", weights_only=True)
    assert torch.allclose(trained["conv1.weight"], given["conv1.weight"], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kd_mode="xx"), "kd_mode: got 'xx'; allowed: one of"),
        (dict(kd_mode="st", lambda_kd=-1), "lambda_kd: got -1.0; must be a number >= 0"),
        (dict(kd_mode="st", T=0), "T: got 0.0; must be a number > 0"),
        (dict(kd_mode="st", t_name="resnet20"), "t_model"),
        (dict(kd_mode="st", num_class=100), "num_class: got 100"),
    ],
)
def test_bad_kd_options(tmp_path, teacher, kwargs, message):
    args = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", save_root=str(tmp_path), note="bad", **TINY)
    args.update(kwargs)
    with pytest.raises(KdpipeError) as err:
        kdpipe.train_kd(**args)
    assert message in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_teacher_with_other_class_count_is_refused(tmp_path):
    from kdpipe.models import build_model

    torch.save(build_model("resnet8", 100).state_dict(), tmp_path / "t100.pt")
    with pytest.raises(KdpipeError, match=r"t_model .*t100.pt: does not fit resnet8 with 10 classes: fc.weight"):
        kdpipe.train_kd(
            t_model=str(tmp_path / "t100.pt"),
            t_name="resnet8",
            s_name="resnet8",
            kd_mode="st",
            save_root=str(tmp_path),
            **TINY,
        )


@pytest.mark.parametrize("mode", SEED_MODES + ["dkd"])  # the flags come from one declaration; one new mode suffices
def test_cli_kd(tmp_path, teacher, mode):
    # st through ``python -m kdpipe``, the other modes through the same parser and entry in this process
    # (a process each cost ~10 s of imports; the API test above trains every mode too)
    out = (cli if mode == "st" else cli_in_process)(
        "kd",
        *tiny_cli_flags(tmp_path),
        "--t_model",
        str(teacher),
        "--t_name",
        "resnet14",
        "--s_name",
        "resnet8",
        "--kd_mode",
        mode,
        "--lambda_kd",
        "0.5",
    )
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert record["info"]["lambda_kd"] == 0.5 and record["config"]["kd_mode"] == mode


def test_cli_kd_help_lists_seed_flags():
    out = cli("kd", "-h")
    for flag in (
        "--s_init",
        "--t_model",
        "--t_name",
        "--s_name",
        "--kd_mode",
        "--lambda_kd",
        "--T",
        "--p",
        "--w_dist",
        "--w_angle",
        "--m",
        "--gamma",
        "--P_order",
        "--w_irg_vert",
        "--w_irg_edge",
        "--w_irg_tran",
        "--sf",
        "--init_var",
        "--att_f",
    ):
        assert flag in out.stdout, flag


def test_a_revised_modes_runs_record_its_form_and_an_earlier_forms_run_is_another_run(tmp_path, teacher):
    """pkt's default changed (revision 2): its runs carry form 2; a finished run without it (an earlier kdpipe's)
    is refused as another run, or replaced (the workflow); an unrevised mode's runs carry no form; --form 1 is
    refused in one line; the workflow plans the form into a revised mode's params (so its runs are re-planned)."""
    from kdpipe.workflow import kd_options, load_config

    assert LOSSES["pkt"].revision() == 2 and LOSSES["st"].revision() == 1
    args = dict(t_model=str(teacher), t_name="resnet14", s_name="resnet8", save_root=str(tmp_path), **TINY)
    record = kdpipe.train_kd(kd_mode="pkt", note="pkt", **args)
    assert record["fingerprint"]["form"] == 2
    assert kdpipe.train_kd(kd_mode="st", note="st", **args)["fingerprint"]["form"] is None
    stored = json.loads((tmp_path / "pkt" / "run.json").read_text())
    del stored["fingerprint"]["form"]  # as an earlier kdpipe wrote it
    (tmp_path / "pkt" / "run.json").write_text(json.dumps(stored))
    with pytest.raises(KdpipeError, match=r"holds a finished run with other settings \(form\)"):
        kdpipe.train_kd(kd_mode="pkt", note="pkt", **args)
    again = kdpipe.train_kd(kd_mode="pkt", note="pkt", other_settings="replace", **args)
    (kept,) = (tmp_path / "pkt" / "replaced").iterdir()
    assert (
        "form" not in json.loads((kept / "run.json").read_text())["fingerprint"] and again["fingerprint"]["form"] == 2
    )
    with pytest.raises(KdpipeError, match=r"^form: got 1; kd_mode pkt computes revision 2 \(2026-11-28: eps 1e-6"):
        kdpipe.train_kd(kd_mode="pkt", note="old", form=1, **args)
    assert not (tmp_path / "old").exists()
    config = load_config({"pairs": [{"teacher": "resnet14", "student": "resnet8"}], "kd": {"modes": ["pkt", "st"]}})
    assert kd_options(config, "digits", "pkt", "resnet14", "resnet8", 0)["form"] == 2
    assert "form" not in kd_options(config, "digits", "st", "resnet14", "resnet8", 0)


def test_a_teacher_trained_on_other_data_is_recorded_and_warned(tmp_path, caplog):
    """The run.json beside a teacher's model.pt says which data it trained on: a student on other splits
    (the teacher may have trained on its test images) records teacher data 'other' and logs a warning;
    'same' for the same data; 'unknown' for a file with no run record beside it."""
    import shutil

    tiny = dict(data_name="digits", epochs=1, train_subset=64, batch_size=32, cuda=0, threads=1)
    kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="t7", split_seed=7, **tiny)
    kdpipe.train_base(net_name="resnet8", save_root=str(tmp_path), note="t0", **tiny)
    (tmp_path / "copied").mkdir()
    shutil.copy(tmp_path / "t0" / "model.pt", tmp_path / "copied" / "model.pt")
    student = dict(t_name="resnet8", s_name="resnet8", kd_mode="st", save_root=str(tmp_path), **tiny)
    seen = {}
    for teacher in ("t7", "t0", "copied"):
        caplog.clear()
        record = kdpipe.train_kd(t_model=str(tmp_path / teacher / "model.pt"), note=f"s-{teacher}", **student)
        seen[teacher] = (record["info"]["teacher"]["data"], "trained on other data" in caplog.text)
    assert seen == {"t7": ("other", True), "t0": ("same", False), "copied": ("unknown", False)}
