"""Throw-away distributions for plug-in tests: a ``*.dist-info`` folder on a temporary path entry.

importlib.metadata finds a distribution by its ``*.dist-info`` folder on ``sys.path`` (or
``PYTHONPATH`` in a subprocess), exactly as it finds a pip-installed one, so a test can add
plug-ins, duplicates and broken ones without installing anything into the venv.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_dist(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
               modules: dict[str, str] | None = None) -> Path:
    """Write distribution ``name`` with ``entry_points`` ({group: {name: "module:attr"}}) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [f"[{group}]\n" + "".join(f"{ep} = {target}\n" for ep, target in eps.items())
                for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(sections))
    for filename, source in (modules or {}).items():
        (root / filename).write_text(textwrap.dedent(source))
    return root
