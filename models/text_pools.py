"""Raw text pools: a folder of text files (optionally in class subfolders) and Debian's fortunes.

Items are texts; ``crowdloop.models.text`` turns them into features (``model.features``).
Every text passes :func:`clean_text` at load time, the one place hostile text is dealt with:

* invalid UTF-8 fails the load with one line naming the file and the byte offset;
* a text longer than ``pool.max_text_chars`` (a 1 MB string) fails the load with one line
  naming the item, before anything is dispatched or paid;
* control characters that no annotator can see and that XML forbids (NUL, backspace
  overstrikes as in the fortunes files, C1 controls) are removed, so the same text reaches
  every vendor (MTurk's question is XML);
* markup (``<script>``) and bidirectional overrides stay in the text: they are content, and
  every vendor shows them inert (escaped, in a direction-isolated box).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError
from crowdloop.models.datasets import Pool, _finish

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Six-plus categories with a few hundred items each (counts of the Debian 1.99 files).
DEFAULT_FORTUNE_CATEGORIES = ("computers", "definitions", "linux", "politics", "science", "songs-poems", "startrek",
                              "work")

_OVERSTRIKE = re.compile(r"[^\x08]\x08")  # "_\bx" (underline) and "x\bx" (bold) print as "x"
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 but tab/newline/CR, DEL, C1


def clean_text(text: str, *, item: str, max_chars: int) -> str:
    """The text annotators see for ``item``; refuses one over ``max_chars`` characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    while "\x08" in text:
        stripped = _OVERSTRIKE.sub("", text)
        if stripped == text:
            break
        text = stripped
    text = _INVISIBLE.sub("", text)
    if len(text) > max_chars:
        raise PoolError(f"pool: item {item[:80]!r} has {len(text):,} characters; expected at most {max_chars:,} "
                        "(pool.max_text_chars): shorten it or raise the limit")
    return text


def decode_utf8(data: bytes, *, where: str) -> str:
    """Strict UTF-8; invalid bytes fail with the offset, never silently replaced."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoolError(f"pool.path: {where}: not valid UTF-8 at byte {exc.start} ({exc.reason}); expected UTF-8 "
                        "text (convert it, e.g. iconv -f latin1 -t utf-8)") from None


def _subset(n: int, max_items: int | None) -> np.ndarray:
    """A fixed random subset (seed 0, sorted), so every run of a config sees the same items."""
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=max_items, replace=False))


def _text_pool(ids: list[str], texts: list[str], labels: list[str | None], cfg: PoolConfig) -> Pool:
    keep = _subset(len(ids), cfg.max_items)
    ids_a = np.array([ids[i] for i in keep], dtype=object)
    content = np.array([texts[i] for i in keep], dtype=object)
    y = np.array([labels[i] for i in keep], dtype=object) if any(v is not None for v in labels) else None
    # No features yet: model.features turns the texts into them (crowdloop.models.text.features_for).
    X = np.zeros((len(ids_a), 0))
    return _finish(ids_a, X, y, cfg, [], content_kind="text", content=content)


def load_text_folder_pool(cfg: PoolConfig) -> Pool:
    """One UTF-8 file per item: ``<path>/<file>`` (no ground truth) or ``<path>/<class>/<file>``.

    Item ids are the paths relative to ``path``; hidden files and folders are skipped.
    """
    root = Path(cfg.path or "")
    if not root.is_dir():
        raise PoolError(f"pool.path: folder {str(root)!r} not found; expected a folder of text files")
    from crowdloop.models.folders import list_files

    files = list_files(root)  # follows class folders that are links; hidden files skipped
    if not files:
        raise PoolError(f"pool.path: no files in {str(root)!r}; expected one text file per item")
    deep = [p for p in files if len(p.relative_to(root).parts) > 2]
    if deep:
        raise PoolError(f"pool.path: {str(deep[0])!r} is nested too deeply; expected <path>/<file> or <path>/<class>/<file>")
    ids, texts, labels = [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.stat().st_size > 4 * cfg.max_text_chars:  # more bytes than max_text_chars characters can take
            raise PoolError(f"pool: item {rel!r} is {path.stat().st_size:,} bytes; expected at most {cfg.max_text_chars:,} "
                            "characters (pool.max_text_chars): shorten it or raise the limit")
        text = decode_utf8(path.read_bytes(), where=str(path))
        ids.append(rel)
        texts.append(clean_text(text, item=rel, max_chars=cfg.max_text_chars))
        labels.append(rel.split("/", 1)[0] if "/" in rel else None)
    return _text_pool(ids, texts, labels, cfg)


def read_fortunes(path: Path, *, max_chars: int) -> list[str]:
    """The fortunes of one file: items separated by lines holding just ``%``; empty ones dropped."""
    text = decode_utf8(path.read_bytes(), where=str(path))
    items = re.split(r"(?m)^%[ \t]*\n?", text.replace("\r\n", "\n"))
    out = []
    for n, raw in enumerate(items):
        cleaned = clean_text(raw.strip("\n"), item=f"{path.name}#{n}", max_chars=max_chars).rstrip()
        if cleaned.strip():
            out.append(cleaned)
    return out


def load_fortunes_pool(cfg: PoolConfig) -> Pool:
    """Debian's ``fortunes`` package as a text classification set: the class is the category
    file (``pool.classes``, default :data:`DEFAULT_FORTUNE_CATEGORIES`).

    A text found in two categories is dropped from both (its label would be noise); a repeat
    within one category is kept once. Ids are ``<category>-<position in the file>``.
    """
    root = Path(cfg.path) if cfg.path else FORTUNES_DIR
    if not root.is_dir():
        hint = " (install Debian's fortunes package: apt-get install -y fortunes)" if root == FORTUNES_DIR else ""
        raise PoolError(f"pool.path: fortunes folder {str(root)!r} not found{hint}")
    categories = list(cfg.classes or DEFAULT_FORTUNE_CATEGORIES)
    missing = [c for c in categories if not (root / c).is_file()]
    if missing:
        available = sorted(p.name for p in root.iterdir() if p.is_file() and "." not in p.name)
        raise PoolError(f"pool.classes: fortune categories {missing} not found in {str(root)!r}; available: {available}")
    seen: dict[str, set[str]] = {}
    rows: list[tuple[str, str, str]] = []
    for category in categories:
        for n, text in enumerate(read_fortunes(root / category, max_chars=cfg.max_text_chars)):
            if category in seen.setdefault(text, set()):
                continue
            seen[text].add(category)
            rows.append((f"{category}-{n:05d}", text, category))
    rows = [r for r in rows if len(seen[r[1]]) == 1]
    return _text_pool([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], cfg)
