"""A large benchmark archive made from a small one: N files replicated from a source folder.

Memory that grows with archive size only shows over many files, and 10,000 real radiographs
are not at hand. Replicating real files keeps the decode cost real; hard links (the default)
cost no disk and look to dcx like independent regular files (own path, own row, own state
entry). Symbolic links or copies are there for file systems without hard links.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from dcx.core.errors import DcxError
from dcx.core.formats import sniff
from dcx.engine.discover import discover

FILES_PER_FOLDER = 1000
MODES = ("hardlink", "symlink", "copy")


def replicate(source: Path, out: Path, n: int, *, mode: str = "hardlink", force: bool = False) -> int:
    """Fill ``out`` with ``n`` files taken round-robin from the images under ``source``."""
    if out.exists() and any(out.iterdir()) and not force:
        raise DcxError(f"{out} exists and is not empty; pass --force to add to it")
    images = [c.path for c in discover(source) if c.error is None and sniff(c.path) is not None]
    if not images:
        raise DcxError(f"no images under {source}")
    for i in range(n):
        src = Path(images[i % len(images)])
        dst = out / f"{i // FILES_PER_FOLDER:04d}" / f"{i:06d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if mode == "hardlink":
            try:
                os.link(src, dst)
                continue
            except OSError:
                mode = "copy"  # another file system, or links not allowed: fall back for all
        if mode == "symlink":
            dst.symlink_to(src.resolve())
        else:
            shutil.copyfile(src, dst)
    return len(images)
