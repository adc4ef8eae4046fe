import json

import pytest
import torch

import kdpipe
from conftest import cli, cli_in_process
from kdpipe.errors import KdpipeError

SEED_FIG2_FLAGS = [
    "--save_root",
    "--img_root",
    "--print_freq",
    "--epochs",
    "--batch_size",
    "--lr",
    "--momentum",
    "--weight_decay",
    "--num_class",
    "--cuda",
    "--seed",
    "--note",
    "--data_name",
    "--net_name",
]


def test_help_lists_seed_flags():
    out = cli("base", "-h")
    assert out.returncode == 0
    for flag in SEED_FIG2_FLAGS:
        assert flag in out.stdout, flag


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--net_name", "resnet20"], "--data_name"),
        (["--data_name", "digits", "--net_name", "resnet21"], "net_name: got 'resnet21'; allowed: one of resnet8"),
        (["--data_name", "digits", "--net_name", "resnet20", "--lr", "-1"], "lr: got -1.0; must be a number > 0"),
        (["--data_name", "digits", "--net_name", "resnet20", "--epochs", "two"], "epochs: got 'two'"),
        (
            ["--data_name", "digits", "--net_name", "resnet20", "--num_class", "100"],
            "num_class: got 100, but data_name digits has 10",
        ),
        (["--data_name", "mnist", "--net_name", "resnet20"], "data_name: unknown dataset 'mnist'"),
        (["--data_name", "digits", "--net_name", "resnet20", "--cuda", "2"], "cuda: got 2"),
        (["--data_name", "digits", "--net_name", "resnet20", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (
            ["--data_name", "cifar10", "--img_root", "/nonexistent", "--net_name", "resnet20"],
            "/nonexistent/cifar-10-batches-py",
        ),
    ],
)
def test_bad_flags_one_line_nonzero_nothing_written(tmp_path, args, needle):
    # an option error and a flag error through ``python -m kdpipe``, the rest through the same parser, entry
    # and error path in this process (stderr with the log lines the CLI would print)
    in_process = needle not in ("net_name: got 'resnet21'; allowed: one of resnet8", "unrecognized arguments: --bogus")
    out = (cli_in_process if in_process else cli)("base", "--save_root", str(tmp_path), "--epochs", "1", *args)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run directory at all


def test_api_rejects_unknown_and_mistyped_options(tmp_path):
    with pytest.raises(KdpipeError, match="unknown option 'net'"):
        kdpipe.train_base(data_name="digits", net="resnet20", save_root=str(tmp_path))
    with pytest.raises(KdpipeError, match="batch_size: got True"):
        kdpipe.train_base(data_name="digits", net_name="resnet20", batch_size=True, save_root=str(tmp_path))
    with pytest.raises(KdpipeError, match="momentum: got 1.0"):
        kdpipe.train_base(data_name="digits", net_name="resnet20", momentum=1.0, save_root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_cli_trains_and_writes_artefacts(tmp_path):
    out = cli(
        "base",
        "--data_name",
        "digits",
        "--net_name",
        "resnet8",
        "--epochs",
        "2",
        "--batch_size",
        "64",
        "--save_root",
        str(tmp_path),
        "--note",
        "cli",
        "--cuda",
        "0",
        "--seed",
        "3",
        "--print_freq",
        "5",
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "cli"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["seed"] == 3 and record["config"]["net_name"] == "resnet8"
    assert record["device"] == "cpu"
    assert "step 5/" in out.stderr  # --print_freq honoured
    assert sum("epoch" in line and "test acc" in line for line in out.stderr.splitlines()) == 2
    state = torch.load(run / "model.pt", weights_only=True)
    assert "fc.weight" in state


@pytest.mark.parametrize("words", [["100", "150"], ["100,150"], ["100, 150"]])
def test_list_flags_take_separate_words_or_one_comma_list(words):
    from kdpipe.cli import make_parser
    from kdpipe.options import resolve

    flags = ["base", "--data_name", "digits", "--net_name", "resnet8", "--milestones", *words, "--epochs", "200"]
    args = vars(make_parser("kdpipe").parse_args(flags))
    given = {k: v for k, v in args.items() if k != "entry" and v is not None}
    assert resolve("base", given)["milestones"] == [100, 150]


@pytest.mark.parametrize(
    "words, nesterov",
    [([], None), (["--nesterov"], True), (["--nesterov", "false"], False), (["--nesterov", "0"], False)],
)
def test_a_switch_that_defaults_on_can_be_turned_off(words, nesterov):
    """--nesterov (on by default with momentum) and --embeddings (default true) take false, as the API and the
    config do: RepDistiller's plain-momentum recipe is reachable from the command line; a bare flag is true."""
    from kdpipe.cli import make_parser
    from kdpipe.options import resolve

    flags = ["base", "--data_name", "digits", "--net_name", "resnet8", *words, "--epochs", "2"]
    args = vars(make_parser("kdpipe").parse_args(flags))
    given = {k: v for k, v in args.items() if k != "entry" and v is not None}
    assert resolve("base", given)["nesterov"] is nesterov  # None: on with momentum, off without
    cache = ["teacher_cache", "--data_name", "digits", "--t_model", "t.pt", "--t_name", "resnet8", "--embeddings", "0"]
    assert vars(make_parser("kdpipe").parse_args(cache))["embeddings"] == "0"  # Option.check reads it as false
    with pytest.raises(KdpipeError, match="nesterov: got 'maybe'"):
        resolve("base", {"data_name": "digits", "net_name": "resnet8", "nesterov": "maybe"})


def test_list_flags_of_names_and_paths_keep_spaces_and_split_commas(tmp_path):
    """A path with a space is one item (plan --configfile, as Snakemake's); names split on commas."""
    from kdpipe.cli import make_parser

    spaced = tmp_path / "my configs" / "c.yaml"
    spaced.parent.mkdir()
    spaced.write_text("seeds: [0]\nbase: {nets: [resnet8]}\n")
    args = vars(make_parser("kdpipe").parse_args(["plan", "--configfile", str(spaced), "config/config.yaml"]))
    assert args["configfile"] == [str(spaced), "config/config.yaml"]
    assert kdpipe.plan_cost(configfile=str(spaced), device="cpu")["table"].startswith(f"kdpipe plan of {spaced} ")
    for words in (["resnet8,resnet20"], ["resnet8", "resnet20"], ["resnet8, resnet20"]):
        args = vars(make_parser("kdpipe").parse_args(["dml", "--data_name", "digits", "--peers", *words]))
        from kdpipe.options import resolve

        assert resolve("dml", {"data_name": "digits", "peers": args["peers"]})["peers"] == ["resnet8", "resnet20"]


def test_printed_table_to_a_closed_pipe_is_not_an_error():
    """``python -m kdpipe plan ... | head -1``: the reader goes away; no traceback, exit status 0."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    read, write = os.pipe()
    os.close(read)  # as head after its first line
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kdpipe", "plan", "--configfile", "config/config.yaml", "--device", "cpu"],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_refused_write_or_an_interrupt_is_one_line(tmp_path, monkeypatch):
    """The system refusing a write (a file where the run directory's parent should be; a full disk at the
    first checkpoint) or Ctrl-C: one line, a non-zero exit, and nothing that looks finished."""
    base = ["base", "--data_name", "digits", "--net_name", "resnet8w8", "--epochs", "2", "--train_subset", "64"]
    (tmp_path / "afile").write_text("")
    out = cli_in_process(*base, "--save_root", tmp_path / "afile")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"kdpipe base: error: Not a directory: {tmp_path / 'afile' / 'base-digits-resnet8w8-seed0'}"
    )

    def full(obj, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", full)
    out = cli_in_process(*base, "--save_root", tmp_path / "runs")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("kdpipe base: error: No space left on device: ") and "Traceback" not in out.stderr
    assert not list((tmp_path / "runs").rglob("run.json"))

    def interrupt(obj, path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupt)
    out = cli_in_process(*base, "--save_root", tmp_path / "runs")
    assert out.returncode == 130
    assert out.stderr.strip().splitlines()[-1] == (
        "kdpipe base: interrupted; a training run resumes from its last checkpoint when run again"
    )
    assert not list((tmp_path / "runs").rglob("run.json"))


def test_a_workflow_job_ends_bad_input_and_refused_writes_with_one_line(tmp_path, capsys):
    """scripts/*.py run inside ``rule_logging``: a KdpipeError or an OSError becomes one line on stderr and
    in the rule's log, and the job exits 1 (Snakemake then marks it failed and keeps other jobs going)."""
    from types import SimpleNamespace

    from kdpipe.jobs import rule_logging

    job = SimpleNamespace(log=[str(tmp_path / "logs" / "job.log")], rule="train_base")
    for exc, line in (
        (KdpipeError("lr: got nan; a finite number"), "lr: got nan; a finite number"),
        (
            OSError(28, "No space left on device", "results/x/checkpoint.pt"),
            "No space left on device: results/x/checkpoint.pt",
        ),
    ):
        with pytest.raises(SystemExit) as stop:
            with rule_logging(job):
                raise exc
        assert stop.value.code == 1
        assert capsys.readouterr().err == f"kdpipe train_base: error: {line}\n"
        assert (tmp_path / "logs" / "job.log").read_text().endswith(f"error: {line}\n")


def test_ctrl_c_is_recorded_in_train_log_and_the_run_resumes(tmp_path, monkeypatch):
    from kdpipe.engine import Training

    step = Training.step

    def interrupted(self, i):
        if self.epoch == 1 and i == 1:
            raise KeyboardInterrupt
        step(self, i)

    monkeypatch.setattr(Training, "step", interrupted)
    flags = ["base", "--data_name", "digits", "--net_name", "resnet8", "--epochs", "3", "--train_subset", "64"]
    flags += ["--batch_size", "32", "--save_root", tmp_path, "--note", "r"]
    assert cli_in_process(*flags).returncode == 130
    log = (tmp_path / "r" / "train.log").read_text()
    assert log.splitlines()[-1].endswith(
        "interrupted in epoch 2/3; its checkpoint after epoch 1 resumes it when run again"
    )
    assert not (tmp_path / "r" / "run.json").exists()
    monkeypatch.setattr(Training, "step", step)
    assert cli_in_process(*flags).returncode == 0
    assert "resuming" in (tmp_path / "r" / "train.log").read_text() and (tmp_path / "r" / "run.json").is_file()


def test_ctrl_c_while_seeds_train_together_is_recorded_in_each_train_log(tmp_path, monkeypatch):
    from kdpipe.engine import Training
    from kdpipe.runner import run_together

    step = Training.step

    def interrupted(self, i):
        if self.epoch == 1 and i == 0 and self.ctx.opts["seed"] == 1:
            raise KeyboardInterrupt
        step(self, i)

    monkeypatch.setattr(Training, "step", interrupted)
    common = dict(data_name="digits", net_name="resnet8", epochs=2, train_subset=64, batch_size=32)
    calls = [
        (lambda s=s: kdpipe.train_base(**common, seed=s, save_root=str(tmp_path), note=f"s{s}"), None) for s in (0, 1)
    ]
    with pytest.raises(KeyboardInterrupt):
        run_together(calls, together=lambda task: True)
    for s, at in ((0, "epoch 2/2"), (1, "epoch 2/2")):
        last = (tmp_path / f"s{s}" / "train.log").read_text().splitlines()[-1]
        assert last.endswith(f"interrupted in {at}; its checkpoint after epoch 1 resumes it when run again"), last
