"""Split one archive into N disjoint shards that any scheduler can run as independent jobs.

A file's shard is a hash of its path relative to the archive root, so it depends on nothing
else: not on the listing order, not on files added or removed elsewhere, not on the machine
or on where the archive is mounted. The shards are therefore disjoint and together cover the
archive, and a shard rerun over the same archive sees the same files, which lets each shard
keep its own state database and resume on its own.

Shard indices are **0-based**: ``--shard 0/8`` .. ``--shard 7/8``. Kubernetes indexed Jobs
(``JOB_COMPLETION_INDEX``) and Slurm arrays started with ``--array=0-7``
(``SLURM_ARRAY_TASK_ID``) count the same way, so the index passes through unchanged.

Every file a shard writes carries the shard in its name (:meth:`Shard.part_path`):
``results.csv`` -> ``results.shard-0003-of-0008.csv``; ``dcx-merge`` reads the tag back.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import click

from dcx.core.errors import DcxError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_TAG = re.compile(r"\.shard-(\d+)-of-(\d+)(?=\.|$)")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1:
            raise DcxError(f"shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise DcxError(
                f"shard index {self.index} is out of range for {self.count} shards: indices are "
                f"0-based, 0..{self.count - 1} (as Kubernetes JOB_COMPLETION_INDEX and "
                f"'sbatch --array=0-{self.count - 1}' number them)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """``shard-0003-of-0008``: zero-padded so parts sort in shard order."""
        width = max(4, len(str(self.count - 1)))
        return f"shard-{self.index:0{width}d}-of-{self.count:0{width}d}"

    def owns(self, key: str) -> bool:
        """Whether the file with this shard key (see :func:`shard_key`) belongs to this shard."""
        return shard_of(key, self.count) == self.index

    def part_path(self, path: str | os.PathLike) -> Path:
        """This shard's variant of an output, state or summary path.

        ``out/results.csv`` -> ``out/results.shard-0003-of-0008.csv``;
        a name without suffix gets the tag appended.
        """
        path = Path(path)
        return path.with_name(f"{path.stem}.{self.tag}{path.suffix}" if path.suffix
                              else f"{path.name}.{self.tag}")


def parse_shard(text: str) -> Shard:
    """``"3/8"`` -> ``Shard(3, 8)``; a clear DcxError for anything else."""
    match = _SPEC.match(str(text))
    if not match:
        raise DcxError(f"--shard wants INDEX/COUNT with a 0-based index, e.g. 0/8 .. 7/8; got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a shard key: first 8 bytes of SHA-1 mod count.

    The key is encoded with :func:`os.fsencode`, so names that are not valid UTF-8 hash to
    the same bytes the file system holds.
    """
    digest = hashlib.sha1(os.fsencode(key)).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """What is hashed: the path relative to the archive root, with ``/`` separators.

    Relative, so jobs that mount the archive at different places agree. A path outside
    ``root`` (or with no root, e.g. from ``--files-from``) is used as given.
    """
    path = os.fspath(path)
    if root is not None:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            path = rel
    return path.replace(os.sep, "/")


def select(paths: Iterable, shard: Shard, root: str | os.PathLike | None = None,
           key=None) -> Iterator:
    """Stream the items of ``paths`` that belong to ``shard`` (order kept, nothing buffered).

    Items are paths, or anything else when ``key(item)`` returns the item's path.
    """
    for item in paths:
        path = key(item) if key is not None else item
        if shard.owns(shard_key(path, root)):
            yield item


def shard_from_name(path: str | os.PathLike) -> Shard | None:
    """The shard a part file's name carries (``results.shard-0003-of-0008.csv``), or None."""
    match = _TAG.search(Path(path).name)
    if not match:
        return None
    return Shard(int(match.group(1)), int(match.group(2)))


class ShardParam(click.ParamType):
    """click type for ``--shard INDEX/COUNT``: bad values print one line, no stack trace."""

    name = "INDEX/COUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, Shard) or value is None:
            return value
        try:
            return parse_shard(value)
        except DcxError as exc:
            self.fail(exc.message, param, ctx)


SHARD = ShardParam()

#: Help text for the CLI option, kept beside the semantics it describes.
SHARD_HELP = ("Run only shard INDEX of COUNT (0-based: 0/8 .. 7/8). A file's shard is a hash of its "
              "path relative to the archive root, so shards are disjoint and stable across reruns. "
              "Outputs, summary and state database get a '.shard-0003-of-0008' tag; combine the "
              "parts with dcx-merge. Example: --shard \"$JOB_COMPLETION_INDEX/8\".")
