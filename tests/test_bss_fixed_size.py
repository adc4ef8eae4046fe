"""The fixed-size BSS step (kdpipe.methods.bss, what a CUDA graph replays) against the variable-size one.

On the CPU a task takes the variable-size step (attack and distil on the valid candidates only); here the
same task state takes one step each way, with ``attack_class runner_up`` so that both attack the same
targets, and the two must give the same loss, weights and batch norm statistics.  The student's teacher is
made to agree with it on the batch, so that the labels decide which samples are attack candidates."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import kdpipe.methods.bss as bss_method
from kdpipe.data import Normalizer, load_data
from kdpipe.engine import Context, seed_everything
from kdpipe.methods.bss import BoundarySampleTask
from kdpipe.models import build_model
from kdpipe.objectives.bss import bss_lambda
from kdpipe.options import resolve

DIGITS = {"data_name": "digits", "batch_size": 32, "epochs": 20, "train_subset": 300}
PAIR = {"t_name": "resnet8", "s_name": "resnet8", "attack_size": 16, "attack_class": "runner_up"}
EPOCH = 1  # 0-based: lambda_e = 2 (1 - 1.25 / 20) after the one warm-up epoch
BATCH = 32


@pytest.fixture(scope="module")
def data():
    return load_data("digits", train_subset=300)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.manual_seed(1)
    torch.save(build_model("resnet8", 10).state_dict(), path)
    return str(path)


def bss_task(data, run_dir, teacher_file, cuda_graphs=None, **opts):
    seed_everything(0)
    ctx = Context(
        resolve("bss", {**DIGITS, **PAIR, "t_model": teacher_file, **opts}),
        data,
        torch.device("cpu"),
        run_dir,
        cuda_graphs=cuda_graphs,
    )
    return BoundarySampleTask(ctx)


@pytest.fixture(scope="module")
def setup(data, teacher_file, tmp_path_factory):
    """A task whose teacher is its student with 4x its logits and the batch's statistics as running statistics
    (so the eval-mode teacher predicts what the training-mode student does on the batch), the batch, the
    student's and the teacher's predictions, and the task's initial state."""
    task = bss_task(data, tmp_path_factory.mktemp("run"), teacher_file)
    student, teacher = task.roles["student"], task.teacher
    x = Normalizer(data.mean, data.std, "cpu")(data.train_x[:BATCH])
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():  # sharper logits, the same predictions: a teacher the student does not match yet
        teacher.fc.weight.mul_(4.0)
        teacher.fc.bias.mul_(4.0)
    norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.momentum = 1.0
        teacher.train()(x)
        teacher.eval()
        for m in norms:
            m.momentum = 0.1
        s_pred = copy.deepcopy(student)(x).logits.argmax(1)
        t_pred = teacher(x).logits.argmax(1)
    state = copy.deepcopy((student.state_dict(), task.optimizers["student"].state_dict()))
    return task, x, s_pred, t_pred, state


def step(task, state, x, y, fixed: bool):
    """One train_step from ``state`` with the fixed- or the variable-size BSS term: (loss, the student's state)."""
    student, opt = task.roles["student"], task.optimizers["student"]
    student.load_state_dict(state[0])
    opt.load_state_dict(state[1])
    task.fixed_size = fixed
    index, views = torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long)
    loss = task.train_step(x, y, index, views, EPOCH)["student"].loss.detach().clone()
    return loss, copy.deepcopy(student.state_dict())


def terms(task, state, x, y, fixed: bool):
    """The objective's term values from ``state`` (ce, bss)."""
    task.roles["student"].load_state_dict(state[0])
    task.fixed_size = fixed
    _, parts = task.terms(x, y, torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long), EPOCH)
    return [(t.name, t.weight, t.value.detach()) for t in parts]


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest |a - b| / max|b| over the float entries of two state dicts (weights, running statistics)."""
    return max(
        float((a[name] - want).abs().max() / want.abs().max().clamp_min(1e-6))
        for name, want in b.items()
        if want.is_floating_point()
    )


def counters(state: dict) -> dict:
    """The batch norm layers' num_batches_tracked."""
    return {name: int(value) for name, value in state.items() if not value.is_floating_point()}


def labels(s_pred, first_correct: int):
    """The student's predictions as labels for the first ``first_correct`` samples, a wrong class for the rest."""
    y = (s_pred + 1) % 10
    y[:first_correct] = s_pred[:first_correct]
    return y


def test_fixed_size_step_equals_the_variable_size_step(setup):
    task, x, s_pred, t_pred, state = setup
    assert task.fixed_size is False  # the CPU takes the variable-size step
    y = labels(s_pred, 10)
    n_valid = int(((s_pred == y) & (t_pred == y)).sum())
    assert 0 < n_valid <= 10 < PAIR["attack_size"]  # some, not all, of the 16 attacked rows are candidates
    assert bss_lambda(EPOCH + 1, DIGITS["epochs"], 2.0) > 0

    fixed_terms, var_terms = terms(task, state, x, y, True), terms(task, state, x, y, False)
    assert [(n, w) for n, w, _ in fixed_terms] == [(n, w) for n, w, _ in var_terms] == [("ce", 1.0), ("bss", 1.875)]
    assert torch.equal(fixed_terms[0][2], var_terms[0][2])  # the clean forward is the same
    assert float(var_terms[1][2]) > 1e-4  # a real BSS term
    assert float(fixed_terms[1][2]) == pytest.approx(float(var_terms[1][2]), rel=1e-5)

    loss_f, after_f = step(task, state, x, y, fixed=True)
    loss_v, after_v = step(task, state, x, y, fixed=False)
    assert float(loss_f) == pytest.approx(float(loss_v), rel=1e-6)
    assert float(loss_v) == pytest.approx(float(var_terms[0][2] + 1.875 * var_terms[1][2]), rel=1e-6)
    assert max_rel_diff(after_f, after_v) < 1e-5
    assert max_rel_diff(after_v, state[0]) > 1e-3  # the step moved weights and statistics: the comparison has teeth
    # two counted forwards per layer, the clean batch and the adversarial one
    assert counters(after_f) == counters(after_v) == {name: n + 2 for name, n in counters(state[0]).items()}


def test_without_the_subset_batch_norm_the_statistics_differ(setup, monkeypatch):
    """The padding does reach the student's batch norm if nothing keeps it out: the fixed-size step then differs
    from the variable-size one (what the equality above rests on)."""
    task, x, s_pred, _, state = setup
    y = labels(s_pred, 10)
    monkeypatch.setattr(bss_method, "subset_batch_norm", lambda model, keep: contextlib.nullcontext())
    _, plain = step(task, state, x, y, fixed=True)
    monkeypatch.undo()
    _, after_v = step(task, state, x, y, fixed=False)
    assert max_rel_diff(plain, after_v) > 1e-3


def test_fixed_size_step_without_boundary_samples(setup):
    """No candidate (the student gets every label wrong): the variable-size step runs no adversarial forward, the
    fixed-size one a forward whose statistics count for nothing and whose term is 0 with zero gradients."""
    task, x, s_pred, _, state = setup
    y = labels(s_pred, 0)
    fixed_terms, var_terms = terms(task, state, x, y, True), terms(task, state, x, y, False)
    assert float(fixed_terms[1][2]) == float(var_terms[1][2]) == 0.0
    loss_f, after_f = step(task, state, x, y, fixed=True)
    loss_v, after_v = step(task, state, x, y, fixed=False)
    assert torch.equal(loss_f, loss_v)
    assert max_rel_diff(after_f, after_v) < 1e-6
    assert counters(after_f) == counters(after_v) == {name: n + 1 for name, n in counters(state[0]).items()}


def test_fixed_size_terms_do_not_sync_the_host(setup, monkeypatch):
    """The fixed-size term and its backward read nothing back to the host (what a CUDA graph needs); the
    variable-size term does (the number of boundary samples)."""
    task, x, s_pred, _, state = setup
    y = labels(s_pred, 10)
    task.roles["student"].load_state_dict(state[0])

    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation")

    for name in ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "nonzero", boom)
    task.fixed_size = True
    _, parts = task.terms(x, y, torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long), EPOCH)
    sum(t.weight * t.value for t in parts).backward()
    task.fixed_size = False
    with pytest.raises(AssertionError, match="host synchronisation"):
        task.terms(x, y, torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long), EPOCH)
    monkeypatch.undo()
    task.roles["student"].zero_grad(set_to_none=True)


def test_capture_key_is_the_epochs_weight(data, teacher_file, tmp_path):
    """None where the step cannot be captured (DOT; boundary samples in the variable-size step); else the epoch's
    BSS weight, which changes with the schedule.  fixed_size: with CUDA graphs on, except with DOT."""
    graphs = bss_task(data, tmp_path / "a", teacher_file, cuda_graphs=True)
    assert graphs.fixed_size is True
    want = [0.0] + [max(2.0 * (1 - 1.25 * e / 20), 0.0) for e in range(1, 20)]  # 1 warm-up epoch of 20
    keys = [graphs.capture_key(e) for e in range(20)]
    assert keys == [("student", pytest.approx(w)) for w in want]
    assert keys[1] != keys[2] and keys[16] == keys[19] == ("student", 0.0)
    eager = bss_task(data, tmp_path / "b", teacher_file, cuda_graphs=False)  # the CPU, or --cuda_graphs 0
    assert eager.fixed_size is False and eager.capture_key(3) is None
    born_again = bss_task(data, tmp_path / "c", teacher_file, cuda_graphs=False, attack_size=0)
    assert born_again.capture_key(3) == ("student", pytest.approx(want[3]))  # no boundary samples: no sync
    dot = bss_task(data, tmp_path / "d", teacher_file, cuda_graphs=True, dot_delta=0.075)
    assert dot.fixed_size is False and dot.capture_key(3) is None
