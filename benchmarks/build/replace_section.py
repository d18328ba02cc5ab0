"""Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in BENCHMARKS.md.

    python benchmarks/build/replace_section.py NAME SECTION_FILE [PLACEHOLDER=FILE ...]

Placeholders in the section file are replaced by the contents of the named files first.
"""

import sys
from pathlib import Path

name, section_file, *pairs = sys.argv[1:]
section = Path(section_file).read_text()
for pair in pairs:
    placeholder, _, path = pair.partition("=")
    section = section.replace(placeholder, Path(path).read_text().strip())
text = Path("BENCHMARKS.md").read_text()
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
head, _, rest = text.partition(start)
_, _, tail = rest.partition(end)
Path("BENCHMARKS.md").write_text(f"{head}{start}\n{section.rstrip()}\n{end}{tail}")
