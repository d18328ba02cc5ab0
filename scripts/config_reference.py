"""Every configuration field as a markdown table, written from the pydantic models themselves.

``docs/configuration.md`` holds the table between two markers; ``python scripts/config_reference.py``
rewrites it, ``--check`` fails (exit 1) when it is out of date, and a test runs the check, so the
reference cannot drift from ``crowdloop/config.py``: a new field without a description, or one the
table does not show, fails the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from crowdloop.config import LoopConfig

START = "<!-- config-fields:start (written by python scripts/config_reference.py; do not edit) -->"
END = "<!-- config-fields:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# pydantic's constraint metadata (annotated_types.Ge, ..., its general metadata for patterns), by attribute
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
          ("max_length", "length <="), ("pattern", ""))


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The sub-model a field holds (directly, optionally, or as a mapping's values), if any."""
    candidates = list(_args(annotation)) if _is_union(annotation) or typing.get_origin(annotation) is dict else [annotation]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int or null``, ``"wait" | "defer"``, ``list of str``."""
    if annotation is type(None):
        return "null"
    if _is_union(annotation):
        return " or ".join(type_name(a) for a in _args(annotation))
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(v) for v in _args(annotation))
    if origin is list:
        return f"list of {type_name(_args(annotation)[0])}"
    if origin is dict:
        value = _args(annotation)[1]
        return "mapping" if value is Any else f"mapping of name to {type_name(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> Any:
    """The field's default (its factory's product), or PydanticUndefined for a required field."""
    if info.is_required():
        return PydanticUndefined
    return info.default_factory() if info.default is PydanticUndefined else info.default


def default_text(info: FieldInfo, inherited: Any = PydanticUndefined) -> str:
    """The default as it would be written in YAML, or *required*. ``inherited``: the value the
    field has in its section's own default, when that differs from a bare section's
    (``evaluation.surrogate`` defaults to extra trees, not ``model``'s logistic regression)."""
    value = inherited if inherited is not PydanticUndefined else _default(info)
    if value is PydanticUndefined:
        return "*required*"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    return f"`{json.dumps(value)}`"


def bounds_text(info: FieldInfo) -> str:
    """The field's constraints: ``>= 1``, ``< 0.5``, a pattern, a length."""
    words = []
    for m in info.metadata:
        for attr, symbol in BOUNDS:
            value = getattr(m, attr, None)
            if value is not None:
                words.append(f"matches `{value}`" if attr == "pattern" else f"{symbol} {value}")
    return ", ".join(words)


def fields(model: type[BaseModel] = LoopConfig, prefix: str = "",
           defaults: BaseModel | None = None) -> Iterator[tuple[str, FieldInfo, Any]]:
    """Every field of ``model`` and of the sections it holds, depth first, as (dotted path, info,
    inherited default). ``defaults``: the section's own default instance, whose values win over
    the fields' (PydanticUndefined where there is none).

    A mapping of sections (``pay.vendor_fees``) contributes its entries' fields under ``<name>``.
    """
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        inherited = getattr(defaults, name) if defaults is not None else PydanticUndefined
        yield path, info, inherited
        section = _section(info.annotation)
        if section is not None:
            if typing.get_origin(info.annotation) is dict:
                yield from fields(section, f"{path}.<name>.")
                continue
            own = inherited if inherited is not PydanticUndefined else _default(info)
            yield from fields(section, f"{path}.", own if isinstance(own, BaseModel) else None)


def _cell(text: str) -> str:
    """One table cell: on one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _doc_line(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def markdown() -> str:
    """The table: one row per field, each section introduced by its docstring."""
    lines = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for path, info, inherited in fields():
        section = _section(info.annotation)
        meaning = info.description or (_doc_line(section) if section is not None else "")
        lines.append(f"| `{path}` | {_cell(type_name(info.annotation))} | {_cell(default_text(info, inherited))} | "
                     f"{_cell(bounds_text(info))} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def undocumented(model: type[BaseModel] = LoopConfig) -> list[str]:
    """Fields of ``model`` with neither a description nor (for a section) a class docstring."""
    missing = []
    for path, info, _ in fields(model):
        section = _section(info.annotation)
        if not info.description and not (section is not None and _doc_line(section)):
            missing.append(path)
    return missing


def render(doc_text: str) -> str:
    """``doc_text`` with the part between the markers replaced by the current table."""
    if START not in doc_text or END not in doc_text:
        raise ValueError(f"{DOC}: expected the markers {START!r} and {END!r}")
    head, rest = doc_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = ap.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"crowdloop/config.py: fields without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{DOC}: the field table is out of date; run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
