"""A workflow config: validated against ``kdpipe/config.schema.yaml`` (JSON schema, defaults
filled in), plus the checks a schema cannot express, and the facts the rest reads from it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import yaml

from .errors import KdpipeError
from .plan import base_nets

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"
BUILTIN_DATASETS = ("cifar10", "cifar100", "digits")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML, and so Snakemake, keep
    the last silently: a config that sets ``epochs`` twice would train the second without a word)."""

    def flatten_mapping(self, node):
        # each mapping is checked as written, once, before merge keys ('<<: *anchor', whose keys the mapping may
        # override) add theirs: an anchored mapping is flattened where an alias first merges it
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
                if first is not None:
                    raise KdpipeError(
                        f"line {line}: key {key!r} is given twice in one mapping (first at line {first}); "
                        "give each key once"
                    )
                seen[key] = line
        super().flatten_mapping(node)


def _json_mapping(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise KdpipeError(f"key {key!r} is given twice in one mapping; give each key once")
    return dict(pairs)


def read_config_file(path) -> dict:
    """A config file (YAML, or JSON, which YAML reads) as a mapping; a file that is not one, or that gives
    a key twice, stops with one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        try:  # JSON first, as Snakemake reads a config (a JSON file indented by tabs is no YAML)
            data = json.loads(text, object_pairs_hook=_json_mapping)
        except ValueError:
            data = yaml.load(text, Loader=_StrictLoader) or {}
    except UnicodeDecodeError:
        raise KdpipeError(f"configfile {path}: not a text file (a config is YAML, in UTF-8)") from None
    except yaml.YAMLError as exc:
        raise KdpipeError(f"configfile {path}: not YAML ({str(exc).splitlines()[0]})") from None
    except KdpipeError as exc:
        raise KdpipeError(f"configfile {path}: {exc}") from None
    if not isinstance(data, dict):
        raise KdpipeError(f"configfile {path}: a config is a mapping of keys, got {type(data).__name__}")
    return data


def _schema() -> dict:
    """The config schema, with every ``option: <entry>.<name>`` key expanded from that option."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    _expand_options(schema)
    return schema


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}


def option_schema(opt, default: bool = True) -> dict:
    """JSON schema of an option (:class:`kdpipe.options.Option`): its type or choices, its bounds,
    its default and help -- so a config key that sets an option has exactly the option's default."""
    out: dict = {"description": opt.help}
    if opt.choices is not None:
        out["enum"] = list(opt._choices()) + ([None] if opt.nullable and default else [])
    else:
        nullable = (opt.nullable or opt.default is None) and default
        out["type"] = [_JSON_TYPES[opt.type], "null"] if nullable else _JSON_TYPES[opt.type]
        bounds = {}
        if opt.minimum is not None:
            bounds["exclusiveMinimum" if opt.exclusive_min else "minimum"] = opt.minimum
        if opt.maximum is not None:
            bounds["exclusiveMaximum" if opt.exclusive_max else "maximum"] = opt.maximum
        if opt.type is list:
            out["items"] = {"type": _JSON_TYPES[opt.item_type], **bounds}
        else:
            out.update(bounds)
    if default and not opt.required:
        out["default"] = copy.deepcopy(opt.default)
    return out


def _expand_options(node) -> None:
    """In place: ``{option: ft.lambda_kd, description: ...}`` -> the option's schema; keys written
    beside ``option`` (a description, a wider enum) take precedence."""
    from .options import (
        MODE_SETTINGS,
        OBJECTIVE_SETTINGS,
        SECTION_SETTINGS,
        SWEEP_SCHEDULE,
        TWO_STAGE_SETTINGS,
        find_option,
    )

    if isinstance(node, dict):
        names = ("lambda_kd", *MODE_SETTINGS, *OBJECTIVE_SETTINGS, *TWO_STAGE_SETTINGS)
        entry = node.pop("settings_of", None)
        if entry is not None:  # per-mode overrides: no defaults (the mode's own apply), no null
            node["properties"] = {name: option_schema(find_option(entry, name), default=False) for name in names}
        entry = node.pop("sweep_of", None)
        if entry is not None:  # sweeps: a list of distinct values of each setting, or of the schedule's lr
            swept = names if entry == "kd" else SECTION_SETTINGS[entry]
            node["properties"] = {name: _sweep_schema(find_option(entry, name)) for name in swept + SWEEP_SCHEDULE}
        ref = node.pop("override_of", None)
        if ref is not None:  # a per-stage override of an option: its type and bounds, no default, null if unset allowed
            opt = find_option(*ref.split(".", 1))
            schema = option_schema(opt, default=False)
            if "type" in schema and (opt.nullable or opt.default is None):
                schema["type"] = [schema["type"], "null"]
            for key, value in schema.items():
                node.setdefault(key, value)
        ref = node.pop("option", None)
        if ref is not None:
            entry, name = ref.split(".", 1)
            for key, value in option_schema(find_option(entry, name)).items():
                node.setdefault(key, value)
        for value in node.values():
            _expand_options(value)
    elif isinstance(node, list):
        for value in node:
            _expand_options(value)


def _sweep_schema(opt) -> dict:
    """A sweep of an option: one or more distinct values, each one the option accepts."""
    item = option_schema(opt, default=False)
    return {
        "description": f"values of: {item.pop('description')}",
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": item,
    }


def _validator(schema: dict):
    import jsonschema

    base = jsonschema.Draft7Validator
    # JSON schema's integer includes 1.0; a config's integers name run directories (seeds: [1.0] -> seed1.0/)
    # and count epochs, generations, images: only a YAML integer is one
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    base = jsonschema.validators.extend(base, type_checker=strict)

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(schema)


def _check_finite(node, path: str = "") -> None:
    """No NaN or infinity anywhere (YAML's .nan, .inf): every bound of the schema lets NaN through."""
    if isinstance(node, float) and not math.isfinite(node):
        raise KdpipeError(f"config {path or '(top level)'}: got {node!r}; must be a finite number")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        _check_finite(value, f"{path}.{key}" if path else str(key))


def _on_off(node, schema: dict, root: dict) -> None:
    """In place: YAML 1.1 reads a bare ``on``/``off`` as a boolean; where the schema allows that word and no
    boolean, the boolean becomes the word written (``logit_stand: on``, ``ft.bn: off``, ``resources.amp: off``)."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/"):  # '#/properties/kd/properties/settings'
        schema = root
        for part in ref[2:].split("/"):
            schema = schema.get(part, {})

    def item_schema(key):
        if isinstance(node, list):
            return schema.get("items")
        sub = schema.get("properties", {}).get(key)
        return sub if sub is not None else schema.get("additionalProperties")

    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        sub = item_schema(key)
        if not isinstance(sub, dict):
            continue
        enum = sub.get("enum", [])
        word = {True: "on", False: "off"}.get(value) if isinstance(value, bool) else None
        if word is not None and word in enum and not any(isinstance(v, bool) for v in enum):
            node[key] = word
        elif isinstance(value, (dict, list)):
            _on_off(value, sub, root)


def _number_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _dotted(text: str) -> str:
    """'1e-3' as YAML 1.1 reads a number: digits before a dot, a signed exponent ('1.0e-3', '5e2' -> '5.0e+2',
    '-.5e-3' -> '-0.5e-3')."""
    mantissa, e, exponent = text.lower().replace("_", "").partition("e")
    sign, digits = (mantissa[0], mantissa[1:]) if mantissa[:1] in "+-" else ("", mantissa)
    digits = digits if "." in digits else digits + ".0"
    digits = "0" + digits if digits.startswith(".") else digits
    return f"{sign}{digits}e{exponent if exponent[:1] in '+-' else '+' + exponent}" if e else sign + digits


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def typed_overrides(overrides) -> dict:
    """Snakemake's ``--config key=value`` overrides with their numbers, booleans and nulls read as in a
    config file.

    Snakemake parses a top-level value as int, float or ``True``/``False``, but reads a mapping or list
    with YAML's BaseLoader, which keeps every scalar in it as text (``--config 'train={epochs: 3}'`` gives
    ``{'epochs': '3'}``; ``teacher_cache=false`` stays ``'false'``), and passes them on to cluster jobs so.
    Each text is read as a YAML file would read it; one that stays text (``resnet20``, ``1e-3``) is kept."""

    def typed(value):
        if isinstance(value, dict):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if isinstance(value, str):
            try:
                read = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            if read is None or isinstance(read, (bool, int, float)):
                return read
        return value

    return {key: typed(value) for key, value in dict(overrides or {}).items()}


def apply_overrides(config: dict, overrides) -> dict:
    """``config`` with :func:`typed_overrides` merged in key by key, as Snakemake merges ``--config``."""
    for key, value in typed_overrides(overrides).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            apply_overrides(config[key], value)
        else:
            config[key] = value
    return config


def load_config(config: dict, check_pairs: bool = True) -> dict:
    """Validate ``config`` in place (filling defaults) and return it; one-line errors.

    ``check_pairs``: also refuse a method that cannot distil one of the pairs
    (:func:`kdpipe.compat.check_pairs`: each distinct loss built once on probed shapes); the
    Snakefile skips it inside cluster jobs, whose submitting process checked the same config."""
    _check_finite(config)
    schema = _schema()
    _on_off(config, schema, schema)
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            keys = err.schema.get("properties", {})
            # --config 'train={epochs:3}': YAML reads 'epochs:3' as one key without a value; hinted only where the
            # space makes a key this section takes (not 'epoch:40', whose key is unknown too)
            glued = [k.split(":", 1) for k in err.instance if isinstance(k, str) and k not in keys and ":" in k]
            hint = next((f"; YAML needs a space after a colon: write {k}: {v}" for k, v in glued if k in keys), "")
            raise KdpipeError(f"config {_path(err)}: {err.message}; allowed keys: {allowed}{hint}")
        if err.validator in ("oneOf", "anyOf") and err.schema.get("description"):
            raise KdpipeError(f"config {_path(err)}: {err.message}; allowed: {err.schema['description']}")
        if err.validator == "type" and isinstance(err.instance, str) and _number_text(err.instance):
            whole = "integer" in err.validator_value and float(err.instance).is_integer()
            raise KdpipeError(  # YAML 1.1 reads a number without a dot in its mantissa (1e-3) as text
                f"config {_path(err)}: {err.message}; YAML reads {err.instance} as text: "
                f"write {int(float(err.instance)) if whole else _dotted(err.instance)}"
            )
        if err.validator == "enum" and any(  # in YAML's words, not Python's (null, not None; true, not True)
            v is None or isinstance(v, bool) for v in [err.instance, *err.validator_value]
        ):
            allowed = ", ".join(_yaml_word(v) for v in err.validator_value)
            bare = (  # a bare on/off/yes/no the key does not take as a boolean (amp: on, cuda: yes)
                "; YAML reads a bare on, off, yes or no as a boolean" if isinstance(err.instance, bool) else ""
            )
            raise KdpipeError(f"config {_path(err)}: got {_yaml_word(err.instance)}{bare}; allowed: {allowed}")
        raise KdpipeError(f"config {_path(err)}: {err.message}")
    _check_semantics(config)
    if check_pairs:
        from .compat import check_pairs as check

        check(config)
    return config


def _yaml_word(value) -> str:
    """A config value as YAML writes it: null, true, false, or the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_semantics(config: dict) -> None:
    from .models import MODELS
    from .options import find_option

    # keys that set a common option by a rule the schema does not state (val_size: a fraction or a whole
    # count; resources.threads, declared apart in the schema: the option's maximum), checked by the option
    for section, key in (("data", "val_size"), ("resources", "threads")):
        find_option("base", key).check(config[section][key], f"config {section}.")
    if len(set(config["seeds"])) != len(config["seeds"]):
        raise KdpipeError(f"config seeds: {config['seeds']} repeats a seed")
    repeated = [name for i, name in enumerate(config["datasets"]) if name in config["datasets"][:i]]
    if repeated:  # each dataset's runs would be planned twice and counted twice in its table
        raise KdpipeError(
            f"config datasets: [{', '.join(config['datasets'])}] repeats {repeated[0]}; list each dataset once"
        )
    for name in config["datasets"]:
        if name not in BUILTIN_DATASETS and name not in config["imagefolders"]:
            raise KdpipeError(
                f"config datasets: unknown dataset {name!r}; choose from {', '.join(BUILTIN_DATASETS)} "
                "or a name defined under imagefolders"
            )
    for name in config["imagefolders"]:
        if name in BUILTIN_DATASETS:
            raise KdpipeError(f"config imagefolders.{name}: the name is taken by a built-in dataset")
    named = [("base.nets", net) for net in config["base"]["nets"]]
    named += [
        (f"pairs.{i}.{role}", pair[role]) for i, pair in enumerate(config["pairs"]) for role in ("teacher", "student")
    ]
    for key, net in named:
        if net not in MODELS:
            raise KdpipeError(f"config {key}: unknown network {net!r}; choose from {', '.join(MODELS)}")
    from .losses import LOSSES

    for key in ("modes", "with_st", "with_dot"):
        for mode in config["kd"][key]:
            if mode not in LOSSES:
                raise KdpipeError(f"config kd.{key}: unknown mode {mode!r}; choose from {', '.join(LOSSES)}")
    _check_mode_settings("kd.settings", config["kd"]["settings"])
    _check_sweeps(config)
    planned = set(config["kd"]["modes"]) | set(config["kd"]["with_st"]) | set(config["kd"]["with_dot"])
    seen: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(config["pairs"]):
        first = seen.setdefault((pair["teacher"], pair["student"]), i)
        if first != i:
            raise KdpipeError(f"config pairs.{i}: repeats pairs.{first} ({pair['teacher']} -> {pair['student']})")
        _check_mode_settings(f"pairs.{i}.settings", pair.get("settings", {}))
        for mode in pair.get("skip", []):
            if mode not in planned:
                raise KdpipeError(
                    f"config pairs.{i}.skip: {mode!r} is not a planned kd mode; "
                    f"kd.modes, kd.with_st and kd.with_dot list: {', '.join(sorted(planned)) or 'none'}"
                )
        for mode in pair.get("with_dot", []):
            if mode not in LOSSES:
                raise KdpipeError(f"config pairs.{i}.with_dot: unknown mode {mode!r}; choose from {', '.join(LOSSES)}")
    _check_teacher_checkpoints(config)
    teachers = {pair["teacher"] for pair in config["pairs"]}
    for net in config["ft"]["paraphraser_lr_by_teacher"]:
        if net not in teachers:
            raise KdpipeError(
                f"config ft.paraphraser_lr_by_teacher: {net!r} teaches no pair; teachers: {', '.join(sorted(teachers))}"
            )
    for net in config["train"]["by_net"]:
        if net not in MODELS:
            raise KdpipeError(f"config train.by_net: unknown network {net!r}; choose from {', '.join(MODELS)}")
    cohorts: dict[tuple[str, ...], int] = {}
    for i, cohort in enumerate(config["dml"]["cohorts"]):
        for net in cohort:
            if net not in MODELS:
                raise KdpipeError(f"config dml.cohorts.{i}: unknown network {net!r}; choose from {', '.join(MODELS)}")
        # a cohort is its peers in role order (net1, net2, ...): its run directory and report group;
        # the same peers in another order are another cohort, the same order its runs twice
        earlier = cohorts.setdefault(tuple(cohort), i)
        if earlier != i:
            raise KdpipeError(
                f"config dml.cohorts.{i}: [{', '.join(cohort)}] repeats dml.cohorts.{earlier}; list each cohort once "
                "(the same peers in another order are another cohort)"
            )
        first = training(config, "dml", cohort[0])
        for net in cohort[1:]:
            other = training(config, "dml", net)
            differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            if differ:
                key = differ[0]
                raise KdpipeError(
                    f"config dml.cohorts.{i}: peers {cohort[0]} and {net} get different {key} ({first.get(key)} and "
                    f"{other.get(key)}) from train.by_net; the peers of a cohort train on one schedule"
                )
    for net in config["bss"]["nets"]:
        if net not in MODELS:
            raise KdpipeError(f"config bss.nets: unknown network {net!r}; choose from {', '.join(MODELS)}")
    _check_bss_chains(config)
    for section in ("ft", "crd"):
        if config[section]["enabled"] and not config["pairs"]:
            raise KdpipeError(f"config {section}.enabled: true, but there are no teacher/student pairs")
    if config["bss"]["pairs"] and not config["pairs"]:
        raise KdpipeError("config bss.pairs: true, but there are no teacher/student pairs")
    if (config["kd"]["modes"] or config["kd"]["with_st"] or config["kd"]["with_dot"]) and not config["pairs"]:
        raise KdpipeError("config pairs: kd modes are listed but no teacher/student pairs")
    if not base_nets(config):
        raise KdpipeError("config base.nets: nothing to train; list networks in base.nets or pairs")


def _check_bss_chains(config: dict) -> None:
    """With ``bss.pairs``, a pair of a network with itself plans that network's born-again chain (gen1
    learns from its base model, as the ``bss.nets`` chain's does, with the same options): listing the
    network in ``bss.nets`` too would train the same generations twice and report them in one cell."""
    if not config["bss"]["pairs"]:
        return
    for i, pair in enumerate(config["pairs"]):
        net = pair["teacher"]
        if pair["student"] == net and net in config["bss"]["nets"]:
            raise KdpipeError(
                f"config bss.nets: {net} is also the born-again chain that bss.pairs plans for pairs.{i} "
                f"({net} -> {net}), the same runs twice; drop {net} from bss.nets, the pair's chain already trains it"
            )


def _check_teacher_checkpoints(config: dict) -> None:
    """A pair's ``teacher_checkpoint``: an existing file, the same for every pair of that teacher network,
    which then trains nowhere (its base runs would share the imported teacher's run directories)."""
    source: dict[str, tuple[int, str | None]] = {}
    for i, pair in enumerate(config["pairs"]):
        path = pair.get("teacher_checkpoint")
        if path is not None and not Path(path).is_file():
            raise KdpipeError(f"config pairs.{i}.teacher_checkpoint: {path}: no such file")
        first, first_path = source.setdefault(pair["teacher"], (i, path))
        if path != first_path:
            raise KdpipeError(
                f"config pairs.{i}.teacher_checkpoint: {path or 'none'}, but pairs.{first} takes {pair['teacher']} "
                f"from {first_path or 'a train_base run'}; every pair of one teacher network takes it from one place"
            )
    imported = {t for t, (_, path) in source.items() if path}
    trained = [("base.nets", net) for net in config["base"]["nets"]]
    trained += [(f"pairs.{i}.student", p["student"]) for i, p in enumerate(config["pairs"])]
    trained += [(f"dml.cohorts.{i}", net) for i, cohort in enumerate(config["dml"]["cohorts"]) for net in cohort]
    trained += [("bss.nets", net) for net in config["bss"]["nets"]]
    for key, net in trained:
        if net in imported:
            i = source[net][0]
            raise KdpipeError(
                f"config {key}: {net} is also trained here, but pairs.{i}.teacher_checkpoint imports it; "
                "a network comes either from a checkpoint or from train_base"
            )


def mode_settings(mode: str) -> tuple[str, ...]:
    """The keys ``kd.settings.<mode>`` accepts: the loss's own settings (its ``defaults``), the
    objective's, and the two-stage schedule's for a two-stage mode."""
    from .losses import LOSSES
    from .options import OBJECTIVE_SETTINGS, TWO_STAGE_SETTINGS

    keys = (*LOSSES[mode].defaults, *OBJECTIVE_SETTINGS, *(TWO_STAGE_SETTINGS if LOSSES[mode].two_stage else ()))
    return tuple(dict.fromkeys(keys))


def sweep_keys(mode: str) -> tuple[str, ...]:
    """The keys ``kd.sweep.<mode>`` accepts: the mode's settings and the schedule's lr."""
    from .options import SWEEP_SCHEDULE

    return (*mode_settings(mode), *SWEEP_SCHEDULE)


def _check_mode_settings(where: str, settings: dict, keys=mode_settings) -> None:
    """Per-mode overrides (``kd.settings``, a pair's ``settings``) or sweeps: known modes, and only their
    own settings (``keys`` of the mode)."""
    from .losses import LOSSES

    for mode, values in settings.items():
        if mode not in LOSSES:
            raise KdpipeError(f"config {where}: unknown mode {mode!r}; choose from {', '.join(LOSSES)}")
        allowed = keys(mode)
        for key, value in values.items():
            if key not in allowed:
                raise KdpipeError(
                    f"config {where}.{mode}.{key}: not a setting of {mode}; allowed: {', '.join(sorted(allowed))}"
                )
            # a setting several modes share (stages, reduction, regressor) has each mode's own values
            choices = LOSSES[mode].setting_choices.get(key)
            for item in value if isinstance(value, list) else [value]:  # a sweep lists values
                if choices is not None and item not in choices:
                    raise KdpipeError(
                        f"config {where}.{mode}.{key}: {item!r} is not a form of {mode}; allowed: {', '.join(choices)}"
                    )


def _check_sweeps(config: dict) -> None:
    """``kd.sweep``: each swept mode is a mode of ``kd.modes`` (a sweep varies the plain mode's runs) and
    each key one of :func:`sweep_keys`; ``crd.sweep`` and ``ft.sweep`` need their section enabled; every
    value is one its option accepts, and no two values name the same run directory."""
    sweeps = config["kd"]["sweep"]
    _check_mode_settings("kd.sweep", sweeps, keys=sweep_keys)
    for mode, grid in sweeps.items():
        if mode not in config["kd"]["modes"]:
            raise KdpipeError(
                f"config kd.sweep.{mode}: {mode} is not in kd.modes; a sweep varies the plain {mode} students, "
                f"so list {mode} under kd.modes (kd.modes lists: {', '.join(config['kd']['modes']) or 'none'})"
            )
        _check_grid(f"kd.sweep.{mode}", "kd", grid)
    for section in ("crd", "ft"):
        grid = config[section]["sweep"]
        if grid and not config[section]["enabled"]:
            raise KdpipeError(
                f"config {section}.sweep: {section}.enabled is false; a sweep varies the {section} students"
            )
        _check_grid(f"{section}.sweep", section, grid)


def _check_grid(where: str, entry: str, grid: dict) -> None:
    """Every value of a sweep's grid through its option's own check (one line naming the key), and no two
    values of a key that name the same run directory (500 and 500.0)."""
    from .options import find_option
    from .plan import sweep_value_text

    for key, values in grid.items():
        seen: dict[str, object] = {}
        for value in values:
            find_option(entry, key).check(value, f"config {where}.")
            text = sweep_value_text(value)
            if text in seen:
                raise KdpipeError(
                    f"config {where}.{key}: {seen[text]!r} and {value!r} are the same value ({key}~{text})"
                )
            seen[text] = value


def data_name(config: dict, dataset: str) -> str:
    if dataset in config["imagefolders"]:
        entry = config["imagefolders"][dataset]
        return f"imagefolder:{entry['path'] if isinstance(entry, dict) else entry}"
    return dataset


def image_size(config: dict, dataset: str) -> int | None:
    """The resize of an image-folder dataset (None: built-in datasets, or the default 32)."""
    entry = config["imagefolders"].get(dataset)
    return entry.get("image_size") if isinstance(entry, dict) else None


def training(config: dict, stage: str, net: str | None = None) -> dict:
    """The training schedule of a stage (``base``, ``kd``, ...) for a run that trains ``net``: ``train``,
    then the stage's overrides (``<stage>.train``), then the network's (``train.by_net.<net>``)."""
    train = {k: v for k, v in config["train"].items() if k != "by_net"}
    train.update(config[stage].get("train", {}))
    if net is not None:
        train.update(config["train"]["by_net"].get(net, {}))
    return train
