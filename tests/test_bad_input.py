"""Bad input is refused in one line naming the flag, key or file, before a run directory exists."""

import pickle

import numpy as np
import pytest
import yaml

from conftest import cli, cli_in_process, write_cifar
from kdpipe.config import load_config
from kdpipe.data import load_data
from kdpipe.errors import KdpipeError
from kdpipe.options import resolve


def refused_in_one_line(result, message: str) -> str:
    """The CLI's answer: exit 2, no traceback, its last line the error, which holds ``message``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kdpipe ") and ": error: " in last and message in last, result.stderr
    return last


# ---------------------------------------------------------------- 1. CIFAR files


def _rewrite(path, change):
    entry = pickle.loads(path.read_bytes())
    change(entry)
    path.write_bytes(pickle.dumps(entry))


def _set(key, value):
    return lambda entry: entry.__setitem__(key, value)


@pytest.mark.parametrize(
    "file, change, message",
    [
        (
            "data_batch_1",
            lambda e: e.__setitem__("labels", e["labels"][:-1]),
            "data_batch_1: 7 labels ('labels') for 8 images ('data'); a CIFAR batch has one label per image",
        ),
        ("test_batch", lambda e: e["labels"].__setitem__(3, 99), "test_batch: label 99 in 'labels' is outside 0..9"),
        ("test_batch", lambda e: e["labels"].__setitem__(0, -1), "test_batch: label -1 in 'labels' is outside 0..9"),
        ("data_batch_2", _set("labels", [0.5] * 8), "data_batch_2: 'labels' is float64 of shape (8,)"),
        ("data_batch_3", _set("data", np.zeros((8, 100), np.uint8)), "data_batch_3: 'data' is uint8 of shape (8, 100)"),
        ("data_batch_4", lambda e: e.pop("labels"), "data_batch_4: no 'labels' key"),
        (
            "batches.meta",
            _set("label_names", 5),
            "batches.meta: 'label_names' is int 5; it must be a list of 10 class names (strings)",
        ),
        ("batches.meta", _set("label_names", ["a", "b"]), "batches.meta: 'label_names' lists 2 class names; the"),
    ],
)
def test_bad_cifar_files_are_refused_at_load_naming_the_file(tmp_path, file, change, message):
    write_cifar(tmp_path / "data")
    _rewrite(tmp_path / "data" / "cifar-10-batches-py" / file, change)
    runs = tmp_path / "runs"
    result = cli_in_process(
        *("base", "--net_name", "resnet8", "--data_name", "cifar10", "--img_root", tmp_path / "data"),
        *("--epochs", "1", "--batch_size", "8", "--cuda", "0", "--save_root", runs, "--note", "r"),
    )
    last = refused_in_one_line(result, message)
    assert str(tmp_path / "data" / "cifar-10-batches-py" / file) in last
    assert not runs.exists()  # refused before the run directory (run.lock, train.log) is made


class _HugeArray:
    def __reduce__(self):  # an array asking numpy for exabytes: not a call a CIFAR batch makes
        return (np.ndarray, ((2**31, 2**31), "u1"))


class _HugeShape:
    def __reduce__(self):  # an array state claiming exabytes with one byte behind it: nothing is allocated
        state = (1, (2**31, 2**31), np.dtype("u1"), False, b"\x00")
        return (np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, (0,), b"b"), state)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            pickle.dumps({"data": _HugeArray(), "labels": [0]}, protocol=2),
            "refused to call numpy.ndarray",
        ),
        (
            pickle.dumps({"data": _HugeShape(), "labels": [0]}, protocol=2),
            "unreadable CIFAR pickle (cannot reshape array of size 1 into shape (2147483648,2147483648))",
        ),
        (  # a persistent id, whose error message spans two lines
            b"(dp0\nS'data'\np1\nPabc\nsb.",
            "unreadable CIFAR pickle (A load persistent id instruction was encountered, but no persistent_load",
        ),
    ],
)
def test_crafted_cifar_pickles_are_refused_in_one_line(tmp_path, content, message):
    write_cifar(tmp_path / "data")
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(KdpipeError) as err:
        load_data("cifar10", tmp_path / "data")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"dataset file {tmp_path / 'data' / 'cifar-10-batches-py' / 'data_batch_2'}: ")


# ---------------------------------------------------------------- 2. val_size


def test_val_size_is_a_fraction_below_1_or_a_whole_count():
    allowed = "must be a fraction below 1 (e.g. 0.1) or a whole number of images (e.g. 5000)"
    with pytest.raises(KdpipeError) as err:
        resolve("base", {"net_name": "resnet8", "data_name": "digits", "val_size": "1.5"})
    assert str(err.value) == f"val_size: got 1.5; {allowed}"
    for fine in ("0", "0.5", "1", "10", "5000.0"):
        resolve("base", {"net_name": "resnet8", "data_name": "digits", "val_size": fine})
    with pytest.raises(KdpipeError, match=r"^config data\.val_size: got 1\.5; must be a fraction below 1"):
        load_config({"data": {"val_size": 1.5}}, check_pairs=False)
    config = load_config({"data": {"val_size": 5000}, "base": {"nets": ["resnet8"]}}, check_pairs=False)
    assert config["data"]["val_size"] == 5000
    with pytest.raises(KdpipeError, match=r"^val_size: got 2\.5; must be a fraction below 1"):
        load_data("digits", val_size=2.5)  # the data API itself, too


# ---------------------------------------------------------------- 3. image folders


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    with pytest.raises(KdpipeError, match=rf"class folder {tmp_path / 'b'} holds no images \(\.bmp, "):
        load_data(f"imagefolder:{tmp_path}")


# ---------------------------------------------------------------- 4. DML cohorts


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--peers", "resnet8w8"], "peers: got ['resnet8w8']; a DML cohort has 2 or more peers"),
        (
            ["--peers", "resnet8,resnet8", "--net1_name", "resnet20"],
            "peers: given together with net1_name (resnet20); use one or the other: --peers for the whole cohort, "
            "or --net1_name and --net2_name",
        ),
        (
            ["--net1_name", "resnet8", "--net2_name", "resnet8", "--peer_inits", "x.pt", "--net2_init", "y.pt"],
            "peer_inits: given together with net2_init (y.pt); use one or the other",
        ),
        (
            ["--peers", "resnet8,resnet8", "--peer_inits", "a.pt,b.pt,c.pt"],
            "peer_inits: got 3 files for 2 peers (resnet8, resnet8); at most one per peer",
        ),
    ],
)
def test_dml_cohort_is_two_or_more_peers_named_one_way(tmp_path, flags, message):
    runs = tmp_path / "runs"
    result = cli_in_process("dml", "--data_name", "digits", "--epochs", "1", "--save_root", runs, *flags)
    refused_in_one_line(result, message)
    assert not runs.exists()


# ---------------------------------------------------------------- 5. threads


def test_threads_have_a_maximum_for_the_cli_and_the_config(tmp_path):
    for value in ("99999", "2147483648"):
        with pytest.raises(KdpipeError, match=rf"^threads: got {value}; must be an integer >= 1 and <= 1024$"):
            resolve("base", {"net_name": "resnet8", "data_name": "digits", "threads": value})
    with pytest.raises(KdpipeError, match=r"^config resources\.threads: got 99999; must be an integer >= 1 and <="):
        load_config({"resources": {"threads": 99999}}, check_pairs=False)
    # a real process: 99999 threads used to crash torch (rc 139, no output)
    runs = tmp_path / "runs"
    result = cli("base", "--net_name", "resnet8", "--data_name", "digits", "--save_root", runs, "--threads", "99999")
    refused_in_one_line(result, "threads: got 99999; must be an integer >= 1 and <= 1024")
    assert not runs.exists()


# ---------------------------------------------------------------- 6. NaN and infinity in a config


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": {"lr": float("nan")}}, "config train.lr: got nan; must be a finite number"),
        ({"train": {"lr": float("inf")}}, "config train.lr: got inf; must be a finite number"),
        ({"kd": {"st_weight": float("-inf")}}, "config kd.st_weight: got -inf; must be a finite number"),
        ({"seeds": [0, float("nan")]}, "config seeds.1: got nan; must be a finite number"),
        (
            {"pairs": [{"teacher": "resnet8", "student": "resnet8"}], "kd": {"settings": {"st": {"T": float("inf")}}}},
            "config kd.settings.st.T: got inf; must be a finite number",
        ),
    ],
)
def test_non_finite_numbers_anywhere_in_a_config_are_refused(config, message):
    with pytest.raises(KdpipeError) as err:
        load_config(config, check_pairs=False)
    assert str(err.value) == message


def test_plan_refuses_a_nan_config_in_one_line(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("train: {lr: .nan}\n")
    refused_in_one_line(cli_in_process("plan", "--configfile", path), "config train.lr: got nan; must be a finite")


# ---------------------------------------------------------------- 7. integers are integers


@pytest.mark.parametrize(
    "config, message",
    [
        ({"seeds": [0, 1.0]}, "config seeds.1: 1.0 is not of type 'integer'"),
        ({"teacher_seed": 0.0}, "config teacher_seed: 0.0 is not of type 'integer', 'null'"),
        ({"train": {"epochs": 2.0}}, "config train.epochs: 2.0 is not of type 'integer'"),
        ({"bss": {"nets": ["resnet8"], "generations": 2.0}}, "config bss.generations: 2.0 is not of type 'integer'"),
        ({"data": {"train_subset": 100.0}}, "config data.train_subset: 100.0 is not of type 'integer'"),
        ({"report": {"period_ms": 500.0}}, "config report.period_ms: 500.0 is not of type 'integer'"),
        ({"resources": {"threads": 2.0}}, "config resources.threads: 2.0 is not of type 'integer'"),
        ({"train": {"milestones": [1.0]}}, "config train.milestones.0: 1.0 is not of type 'integer'"),
    ],
)
def test_integer_keys_refuse_floats(config, message):
    with pytest.raises(KdpipeError) as err:
        load_config(config, check_pairs=False)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {lr: 1e-3}", "config train.lr: '1e-3' is not of type 'number'; YAML reads 1e-3 as text: write 1.0e-3"),
        (
            "train: {epochs: 2E2}",
            "config train.epochs: '2E2' is not of type 'integer'; YAML reads 2E2 as text: write 200",
        ),
        (
            "kd: {modes: [st], sweep: {st: {lr: [0.1, 5e-2]}}}",
            "config kd.sweep.st.lr.1: '5e-2' is not of type 'number'; YAML reads 5e-2 as text: write 5.0e-2",
        ),
        (
            "ft: {lambda_kd: 5e2}",
            "config ft.lambda_kd: '5e2' is not of type 'number'; YAML reads 5e2 as text: write 5.0e+2",
        ),
        (
            "ft: {lambda_kd: 1.0e2}",
            "config ft.lambda_kd: '1.0e2' is not of type 'number'; YAML reads 1.0e2 as text: write 1.0e+2",
        ),
        (
            "train: {lr: -.5e-3}",
            "config train.lr: '-.5e-3' is not of type 'number'; YAML reads -.5e-3 as text: write -0.5e-3",
        ),
        ("train: {lr: fast}", "config train.lr: 'fast' is not of type 'number'"),
    ],
)
def test_a_number_yaml_reads_as_text_is_refused_saying_how_to_write_it(text, message):
    with pytest.raises(KdpipeError) as err:
        load_config(yaml.safe_load(text), check_pairs=False)
    assert str(err.value) == message


@pytest.mark.parametrize("text", ["train: {epochs:40}", "train: {lr:0.05, epochs: 3}"])
def test_a_key_glued_to_its_value_says_yaml_needs_a_space(text):
    """--config 'train={epochs:40}' (no space after the colon): YAML reads one key 'epochs:40' without a value;
    the line says how to write it."""
    with pytest.raises(KdpipeError) as err:
        load_config(yaml.safe_load(text), check_pairs=False)
    key, value = text.split("{")[1].split(",")[0].rstrip("}").split(":")
    assert str(err.value).startswith(f"config train: Additional properties are not allowed ('{key}:{value}'")
    assert str(err.value).endswith(f"; YAML needs a space after a colon: write {key}: {value}")


def test_a_glued_key_this_section_does_not_take_gets_no_space_hint():
    """'epoch:40' with a space would be 'epoch', which train does not take either: the allowed keys say it all."""
    with pytest.raises(KdpipeError) as err:
        load_config(yaml.safe_load("train: {epoch:40}"), check_pairs=False)
    assert "YAML needs a space" not in str(err.value) and str(err.value).endswith("warmup_epochs, weight_decay")


def test_bare_on_and_off_are_the_words_where_a_key_takes_them():
    """YAML 1.1 reads a bare on/off as a boolean: keys whose values are the words get the words back."""
    text = (
        "pairs: [{teacher: resnet20, student: resnet8, settings: {st: {logit_stand: on}}}]\n"
        "kd: {modes: [st], settings: {st: {logit_stand: off}}, sweep: {st: {logit_stand: [off, on]}}}\n"
        "ft: {enabled: true, bn: off}\nteacher_cache: on\nresources: {amp: off, seeds_together: on, cuda: 0}\n"
    )
    config = load_config(yaml.safe_load(text), check_pairs=False)
    assert config["pairs"][0]["settings"] == {"st": {"logit_stand": "on"}}
    assert config["kd"]["settings"] == {"st": {"logit_stand": "off"}}
    assert config["kd"]["sweep"] == {"st": {"logit_stand": ["off", "on"]}}
    assert (config["ft"]["bn"], config["teacher_cache"], config["resources"]["amp"]) == ("off", "on", "off")
    assert config["resources"]["seeds_together"] is True and config["ft"]["enabled"] is True  # booleans stay
    assert config["resources"]["cuda"] == 0  # a number in a choice that allows null stays the number
    with pytest.raises(KdpipeError) as err:  # amp has no 'on': the boolean stays, and the line says why
        load_config(yaml.safe_load("resources: {amp: on}"), check_pairs=False)
    assert str(err.value) == (
        "config resources.amp: got true; YAML reads a bare on, off, yes or no as a boolean; allowed: auto, off"
    )
    with pytest.raises(KdpipeError) as err:  # a choice of numbers and null, in YAML's words
        load_config(yaml.safe_load("resources: {cuda: yes}"), check_pairs=False)
    assert str(err.value) == (
        "config resources.cuda: got true; YAML reads a bare on, off, yes or no as a boolean; allowed: null, 0, 1"
    )


# ---------------------------------------------------------------- 8. plan's files


def test_plan_refuses_a_binary_config_file_in_one_line(tmp_path):
    path = tmp_path / "config.bin"
    path.write_bytes(bytes(range(128, 256)) * 4)
    refused_in_one_line(
        cli_in_process("plan", "--configfile", path), f"configfile {path}: not a text file (a config is YAML, in UTF-8)"
    )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.yaml", "seeds: [0]\nseeds: [1]\n", "line 2: key 'seeds' is given twice in one mapping (first at line 1)"),
        (
            "b.yaml",
            "kd:\n  settings:\n    st: {T: 4, T: 2}\n",
            "line 3: key 'T' is given twice in one mapping (first at line 3)",
        ),
        ("c.json", '{"train": {"lr": 0.1, "lr": 0.05}}', "key 'lr' is given twice in one mapping; give each key once"),
    ],
)
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, name, text, message):
    """YAML and JSON keep the last of two equal keys; a config that sets a key twice is refused, naming both lines."""
    path = tmp_path / name
    path.write_text(text)
    refused_in_one_line(cli_in_process("plan", "--configfile", path), f"configfile {path}: {message}")


def test_config_files_read_as_snakemake_reads_them(tmp_path):
    """A YAML merge key may be overridden (not a repeat); a JSON config indented by tabs (no YAML) reads."""
    from kdpipe.config import read_config_file

    (tmp_path / "m.yaml").write_text("short: &s {epochs: 2, lr: 0.1}\ntrain:\n  <<: *s\n  epochs: 3\n")
    assert read_config_file(tmp_path / "m.yaml")["train"] == {"epochs": 3, "lr": 0.1}
    nested = "a: &fast\n  <<: {epochs: 4, lr: 0.05}\n  epochs: 2\nb:\n  <<: *fast\n"  # merged where first used
    (tmp_path / "n.yaml").write_text(nested)
    assert read_config_file(tmp_path / "n.yaml") == {"a": {"epochs": 2, "lr": 0.05}, "b": {"epochs": 2, "lr": 0.05}}
    (tmp_path / "t.json").write_text('{\n\t"seeds": [1],\n\t"train": {"epochs": 2}\n}\n')
    assert read_config_file(tmp_path / "t.json") == {"seeds": [1], "train": {"epochs": 2}}


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello world\n", "its first line: hello world"),
        (b"", "its first line: empty"),
        (bytes(range(128, 256)), "reading it: UnicodeDecodeError"),
        (b"device,quantity,subject,value,image_size,batch,source,date\n", "it has a header but no rows"),
    ],
)
def test_plan_says_a_calibration_file_is_not_a_calibration_table(tmp_path, content, reason):
    path = tmp_path / "table.txt"
    path.write_bytes(content)
    last = refused_in_one_line(
        cli_in_process("plan", "--configfile", "config/config.yaml", "--calibration", path),
        f"calibration {path}: not a calibration table, a CSV file with columns device, quantity, subject, value,",
    )
    assert last.endswith(reason)


# ---------------------------------------------------------------- a kd flag the mode does not read


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--kd_mode", "st", "--p", "2"], "p: not a setting of kd_mode st, which reads lambda_kd, T, logit_stand"),
        (
            ["--kd_mode", "at", "--T", "2"],
            "T: not a setting of kd_mode at, which reads lambda_kd, p, stage_reduce (T also sets the temperature "
            "of an --st_weight term)",
        ),
        (["--kd_mode", "st", "--init_epochs", "5"], "init_epochs: not a setting of kd_mode st, which reads"),
        (
            ["--kd_mode", "st", "--init_optimizer", "features"],
            "init_optimizer: not a setting of kd_mode st, which reads lambda_kd, T, logit_stand",
        ),
    ],
)
def test_a_kd_flag_the_mode_does_not_read_is_refused(tmp_path, flags, message):
    # it used to be accepted and ignored: the run trained at the mode's default, recorded as if set
    runs = tmp_path / "runs"
    teacher = ["--t_model", tmp_path / "t.pt", "--t_name", "resnet8", "--s_name", "resnet8"]
    result = cli_in_process("kd", "--data_name", "digits", "--epochs", "1", "--save_root", runs, *teacher, *flags)
    refused_in_one_line(result, message)
    assert not runs.exists()


@pytest.mark.parametrize("entry", ["crd", "ft"])
def test_crd_and_ft_refuse_a_temperature_without_the_term_it_serves(tmp_path, entry):
    """crd's and ft's --T is the temperature of their --st_weight term alone: without the term it was ignored."""
    from kdpipe.methods.common import check_st_temperature

    runs = tmp_path / "runs"
    teacher = ["--t_model", tmp_path / "t.pt", "--t_name", "resnet8", "--s_name", "resnet8"]
    result = cli_in_process(entry, "--data_name", "digits", "--epochs", "1", "--save_root", runs, *teacher, "--T", "2")
    refused_in_one_line(result, "T: 2 is the temperature of the --st_weight term, which is 0 (off); set --st_weight")
    assert not runs.exists()  # ft: no paraphraser trained either
    common = dict(data_name="digits", t_model="t.pt", t_name="resnet8", s_name="resnet8")
    for flags in (dict(T=2.0, st_weight=0.1), dict(T=4.0), {}):
        check_st_temperature(entry)(resolve(entry, {**common, **flags}))


def test_kd_flags_a_mode_reads_pass():
    from kdpipe.methods.kd import check_mode_flags

    common = dict(data_name="digits", t_model="t.pt", t_name="resnet8", s_name="resnet8")
    for flags in (
        dict(kd_mode="at", p=4.0),
        dict(kd_mode="at", T=2.0, st_weight=1.0),
        dict(kd_mode="fsp", init_epochs=5, init_optimizer="features", init_schedule="constant"),
        dict(kd_mode="st", init_optimizer="shared"),  # its default: nothing said, nothing ignored
    ):
        check_mode_flags(resolve("kd", {**common, **flags}))


def test_every_kd_job_the_shipped_configs_plan_passes_the_mode_flag_check():
    """The workflow hands a kd job only what its mode reads (kd.settings are checked per mode at load)."""
    import yaml

    from conftest import ROOT
    from kdpipe.costplan import merge_config
    from kdpipe.methods.kd import check_mode_flags
    from kdpipe.workflow import SEEDED_RULES, plan, run_options

    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    checked = 0
    for path in sorted((ROOT / "config").glob("*.yaml")):
        overlay = yaml.safe_load(path.read_text())
        config = load_config(merge_config(default, overlay) if "seeds" not in overlay else overlay, check_pairs=False)
        for run in plan(config):
            if run.rule in SEEDED_RULES and SEEDED_RULES[run.rule].entry == "kd":
                check_mode_flags(resolve("kd", {"t_model": "t.pt", **run_options(config, run)}))
                checked += 1
    assert checked > 600
