"""docs/configuration.md lists every configuration field as the models define it, and cannot drift.

The table is written from ``crowdloop/config.py`` by ``python scripts/config_reference.py``; these
tests run its ``--check`` against the committed page, and check that the check itself catches a
stale page, a field without a description, and built-in plug-ins a description forgets.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Literal

import pytest

from crowdloop import registry
from crowdloop.config import LoopConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "config_reference.py"
_spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
config_reference = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("config_reference", config_reference)
_spec.loader.exec_module(config_reference)


def test_the_committed_page_is_the_one_the_models_write(capsys) -> None:
    assert config_reference.main(["--check"]) == 0, capsys.readouterr().err


def test_every_field_has_a_description_or_a_section_docstring() -> None:
    assert config_reference.undocumented() == []


def test_the_table_has_one_row_per_field_with_its_default() -> None:
    table = config_reference.markdown()
    paths = [path for path, _, _ in config_reference.fields()]
    assert len(paths) == len(set(paths))
    for path in paths:
        assert f"| `{path}` |" in table, path
    rows = {line.split(" | ")[0][3:-1]: line for line in table.splitlines()[2:]}
    assert "`20`" in rows["sampler.batch_size"] and ">= 1" in rows["sampler.batch_size"]
    assert "*required*" in rows["project"]
    # a section's own default wins over its model's: the audit's surrogate is extra trees, not logistic regression
    assert "ExtraTreesClassifier" in rows["evaluation.surrogate.estimator"]
    assert "LogisticRegression" in rows["model.estimator"]
    assert r'"wait" \| "defer"' in rows["collect.mode"]  # a pipe inside a cell is escaped
    assert "pay.vendor_fees.<name>.rate" in rows


def test_a_stale_page_fails_the_check_and_is_rewritten(tmp_path, monkeypatch, capsys) -> None:
    page = tmp_path / "configuration.md"
    current = config_reference.DOC.read_text(encoding="utf-8")
    stale = current.replace("| `sampler.batch_size` |", "| `sampler.batch_sizes` |")
    assert stale != current
    page.write_text(stale, encoding="utf-8")
    monkeypatch.setattr(config_reference, "DOC", page)
    assert config_reference.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert config_reference.main([]) == 0
    assert page.read_text(encoding="utf-8") == current


def test_a_page_without_the_markers_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="expected the markers"):
        config_reference.render("# Configuration\n")


def test_a_field_without_a_description_is_named() -> None:
    from pydantic import BaseModel, Field

    class Section(BaseModel):
        """A section."""

        kept: int = Field(1, description="said")
        silent: int = 2

    class Config(BaseModel):
        part: Section = Section()

    assert config_reference.undocumented(Config) == ["part.silent"]


@pytest.mark.parametrize("annotation, expected", [
    (int | None, "int or null"),
    (Literal["a", "b"], '"a" | "b"'),
    (list[str] | None, "list of str or null"),
    (dict[str, int], "mapping of name to int"),
])
def test_type_names_read_as_a_user_writes_yaml(annotation, expected) -> None:
    assert config_reference.type_name(annotation) == expected


@pytest.mark.parametrize("dotted, plugins", [
    ("sampler.name", registry.samplers),
    ("vendor.name", registry.vendors),
    ("consensus.method", registry.aggregators),
    ("pool.source", registry.pools),
])
def test_plugin_fields_name_every_built_in(dotted, plugins) -> None:
    """crowdloop's own entry points, not the registry's names: other tests register plug-ins of their own."""
    from importlib.metadata import entry_points

    builtins = [ep.name for ep in entry_points(group=plugins.group) if ep.dist is not None and ep.dist.name == "crowdloop"]
    section, name = dotted.split(".")
    description = LoopConfig.model_fields[section].annotation.model_fields[name].description
    assert len(builtins) >= 5
    for builtin in builtins:
        assert builtin in description, f"{dotted}: {builtin}"
