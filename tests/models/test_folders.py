"""How pool folders are walked (``models/folders.py``): links followed, loops and dangling
links refused in one line, hidden files skipped; the image and text loaders use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError
from crowdloop.models.folders import list_files
from crowdloop.models.images import load_image_pool
from crowdloop.models.text_pools import load_text_folder_pool


def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)


def test_linked_folders_are_followed_and_hidden_names_skipped(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.txt").write_text("b")
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("x")
    (root / "a" / "._x.txt").write_text("resource fork")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert [p.relative_to(root).as_posix() for p in list_files(root)] == ["a/x.txt", "b/b.txt"]


def test_a_loop_is_refused_in_one_line_and_in_time(tmp_path: Path) -> None:
    """Two links back to the root made a walk that follows links list 2**40 paths: it never ended."""
    root = tmp_path / "images"
    for label in ("cat", "dog"):
        _png(root / label / "0.png")
        (root / label / "back").symlink_to("..", target_is_directory=True)
    code = ("import sys; from pathlib import Path; from crowdloop.config import PoolConfig; "
            "from crowdloop.errors import PoolError; from crowdloop.models.images import load_image_pool\n"
            "try:\n    load_image_pool(PoolConfig(source='images', path=sys.argv[1]))\n"
            "except PoolError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    line = done.stdout.strip()
    assert done.returncode == 0 and "\n" not in line, done.stderr
    assert line == (f"pool.path: '{root}/cat/back' links back to '{root}', a folder it sits in (a loop); "
                    "remove the link or point it at a folder outside it")


def test_a_dangling_link_is_refused_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "texts"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.txt").write_text("one")
    (root / "a" / "2.txt").symlink_to(tmp_path / "moved" / "2.txt")
    with pytest.raises(PoolError, match=r"^pool\.path: '.*/a/2\.txt' is a link to '.*/moved/2\.txt', which does not exist; "):
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(root)))


def test_image_classes_in_linked_folders_and_mac_resource_forks(tmp_path: Path) -> None:
    """A folder copied from a Mac has ``._x.png`` beside every image (not an image: decoding it
    failed the whole pool); class folders linked to data elsewhere are classes like the others."""
    _png(tmp_path / "data" / "dog" / "0.png", 200)
    root = tmp_path / "images"
    _png(root / "cat" / "0.png", 10)
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "dog").symlink_to(tmp_path / "data" / "dog", target_is_directory=True)
    pool = load_image_pool(PoolConfig(source="images", path=str(root), test_size=0.5, image_mode="gray"))
    assert sorted(pool.ids.tolist()) == ["cat/0.png", "dog/0.png"]
    assert dict(zip(pool.ids.tolist(), pool.y.tolist(), strict=True)) == {"cat/0.png": "cat", "dog/0.png": "dog"}


def test_an_image_beside_class_folders_is_refused(tmp_path: Path) -> None:
    """torchvision's ImageFolder left it out without a word: the item was never labeled."""
    root = tmp_path / "images"
    _png(root / "cat" / "0.png")
    _png(root / "dog" / "0.png")
    _png(root / "unsorted.png")
    with pytest.raises(PoolError, match=r"^pool\.path: '.*/unsorted\.png' sits beside class folders such as 'cat'; "):
        load_image_pool(PoolConfig(source="images", path=str(root), image_mode="gray"))


def test_text_classes_in_linked_folders(tmp_path: Path) -> None:
    (tmp_path / "data" / "spam").mkdir(parents=True)
    (tmp_path / "data" / "spam" / "1.txt").write_text("win money now")
    root = tmp_path / "texts"
    (root / "ham").mkdir(parents=True)
    (root / "ham" / "1.txt").write_text("see you at lunch")
    (root / "spam").symlink_to(tmp_path / "data" / "spam", target_is_directory=True)
    pool = load_text_folder_pool(PoolConfig(source="text_folder", path=str(root), test_size=0.5))
    assert sorted(zip(pool.ids.tolist(), pool.y.tolist(), strict=True)) == [("ham/1.txt", "ham"), ("spam/1.txt", "spam")]
