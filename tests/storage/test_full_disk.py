"""A full disk: one line, and no temporary file left behind (issue 19, point 12).

The store lives on a real 256 KiB tmpfs, mounted in a private mount namespace (``unshare``,
util-linux), so the write fails with the kernel's own ENOSPC.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_WRITER = """
import os, sys
from crowdloop.errors import StoreError
from crowdloop.storage.local import LocalStore
root = sys.argv[1]
store = LocalStore(os.path.join(root, "project"))
store.write_bytes("project.json", b"{}", create_only=True)
with open(os.path.join(root, "filler"), "wb", buffering=0) as fh:  # someone else fills the disk
    try:
        while True:
            fh.write(b"x" * 4096)
    except OSError:
        pass
for key, create_only in (("rounds/0000/model.pkl", True), ("metrics.json", False)):
    try:
        store.write_bytes(key, b"m" * 65536, create_only=create_only)
        print("wrote", key)
    except StoreError as exc:
        print("refused:", exc)
for dirpath, dirnames, filenames in os.walk(store.root):
    for name in filenames:
        print("file:", os.path.relpath(os.path.join(dirpath, name), store.root))
"""


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "needs unshare from util-linux: apt-get install util-linux"
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {disk} && "
              f"exec {sys.executable} -c '{_WRITER}' {disk}")
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    refused = [line for line in lines if line.startswith("refused:")]
    assert len(refused) == 2, lines
    for line in refused:
        assert "No space left on device" in line and "\n" not in line
    assert [line for line in lines if line.startswith("file:")] == ["file: project.json"], lines  # no .tmp-* file
