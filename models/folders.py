"""The files of a local pool folder, walked the way a team lays such folders out.

* Folders that are symbolic links are followed: class folders linked to data kept elsewhere
  are common, and torchvision's ``ImageFolder`` follows them too. A walk that does not (as
  ``os.walk``'s default and ``Path.rglob`` before Python 3.13) silently leaves their files out.
* A link back to a folder it sits in (``cats/back -> ..``) is a loop: a walk that follows links
  would list the same files again at every level (with two such links, exponentially many
  times), so it is refused in one line naming the link.
* Hidden names (``.git``, ``.DS_Store``, macOS's ``._photo.jpg`` resource forks that copies
  from a Mac leave beside every file) are skipped, files and folders alike.
* A link that points nowhere is refused in one line: the item it stood for would be missing.

One listing serves the loaders and the pool digest (``models/digest.py``), so a file the model
trains on is a file the resume check hashes.
"""

from __future__ import annotations

import os
from pathlib import Path

from crowdloop.errors import PoolError


def list_files(root: Path, *, field: str = "pool.path") -> list[Path]:
    """Every non-hidden file under ``root`` (following folder links), sorted by relative path.

    The paths are spelled through ``root`` (``root/cats/x.png`` even when ``cats`` is a link),
    so ``path.relative_to(root)`` is the item's id."""
    files: list[Path] = []
    stack: list[tuple[Path, dict[tuple[int, int], Path]]] = [(root, {})]
    while stack:
        folder, ancestors = stack.pop()
        try:
            st = folder.stat()
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise PoolError(f"{field}: cannot read folder {str(folder)!r}: {exc.strerror}") from None
        inside = {**ancestors, (st.st_dev, st.st_ino): folder}
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir():  # follows a link
                target = path.stat()
                loop = inside.get((target.st_dev, target.st_ino))
                if loop is not None:
                    raise PoolError(f"{field}: {str(path)!r} links back to {str(loop)!r}, a folder it sits in (a loop); "
                                    "remove the link or point it at a folder outside it")
                subfolders.append((path, inside))
            elif entry.is_file():
                files.append(path)
            elif entry.is_symlink():
                raise PoolError(f"{field}: {str(path)!r} is a link to {os.readlink(path)!r}, which does not exist; "
                                "restore the target or remove the link")
        stack += reversed(subfolders)  # walked in name order, so the first problem named is the first listed
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
