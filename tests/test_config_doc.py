"""config/README.md: generated from the config schema, complete, and current."""

import copy

import yaml

from conftest import ROOT
from kdpipe.config import _schema, _validator
from kdpipe.config_doc import COMMAND, config_doc, main


def doc_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """key -> (type / allowed, default, meaning), from the document's tables."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") and line.count(" | ") == 3:
            key, allowed, default, meaning = (cell.strip() for cell in line.strip("| ").split(" | "))
            if "/" not in key:  # the table of shipped configs: `config/<file>` | what it runs
                rows[key.strip("`")] = (allowed, default, meaning)
    return rows


def schema_keys(schema: dict) -> set[str]:
    """Every key a config may set, walked from the expanded schema independently of the generator."""
    keys = set()
    for name, node in schema["properties"].items():
        if node.get("type") == "object" and "properties" in node:
            keys |= {f"{name}.{sub}" for sub in node["properties"]}
        else:
            keys.add(name)
    keys |= {f"pairs[].{sub}" for sub in schema["properties"]["pairs"]["items"]["properties"]}
    return keys


def test_committed_config_readme_is_the_generated_text():
    committed = (ROOT / "config" / "README.md").read_text()
    assert committed == config_doc(), f"config/README.md is out of date: run {COMMAND}"


def test_every_key_is_documented_with_its_default():
    rows = doc_rows(config_doc())
    schema = _schema()
    assert set(rows) == schema_keys(schema)
    missing = sorted(key for key, (_, _, meaning) in rows.items() if not meaning)
    assert not missing, f"keys without a description in kdpipe/config.schema.yaml: {missing}"
    filled: dict = {}
    _validator(copy.deepcopy(schema)).validate(filled)  # fills every default, as load_config does
    for key, (_, default, _) in rows.items():
        section, _, sub = key.partition(".")
        if key.startswith("pairs[]."):
            assert default == "—", key
            continue
        expected = filled[section][sub] if sub else filled[section]
        assert yaml.safe_load(default.strip("`")) == expected, key  # as it would be written in a config


def test_allowed_values_come_from_the_schema_and_the_options():
    rows = doc_rows(config_doc())
    assert rows["teacher_cache"][0] == "one of `auto`, `'on'`, `'off'`"  # a bare on, which YAML reads as true, too
    assert rows["train.epochs"][:2] == ("integer ≥ 1", "`200`")  # kdpipe/options.py's epochs option
    assert rows["train.lr"][0] == "number > 0"
    assert rows["ft.paraphraser_epochs"][0] == "integer ≥ 1 or null or `scaled`"
    assert rows["crd.sampler"][0] == "one of `other_class`, `uniform`"
    assert "ce_weight" in rows["kd.settings"][0] and "init_epochs" in rows["kd.settings"][0]


def test_main_prints_the_document(capsys):
    assert main() == 0  # what `python -m kdpipe.config_doc` runs
    assert capsys.readouterr().out == config_doc()
