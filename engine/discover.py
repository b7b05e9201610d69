"""Find the files to screen: a streaming, deterministic walk of an archive (or a list of paths).

Discovery only lists and ``stat``s -- it never opens a file. The decoder reads every byte
anyway and recognises the format by its magic bytes there, and files already scored (the
state database matches on path, size and mtime) are never opened at all.

Rules, chosen so that a nightly run over millions of files is safe and repeatable:

- **Deterministic order**: entries sorted by name in each directory, depth first, so the
  same archive always lists in the same order (sharding and diffs rely on it).
- **Streaming**: a generator; memory holds the open directories' listings, not the archive.
- **Every candidate is yielded**, images or not: a text file gets its ``unsupported format``
  row from the decoder. Only hidden entries (name starting with ``.``), paths excluded by
  ``--exclude`` / not matched by ``--include``, and dcx's own outputs (``skip_paths``) are
  left out.
- **Nothing crashes the walk**: an unreadable directory, a broken symbolic link or a FIFO
  becomes a :class:`Candidate` with an ``error``, so it still gets a row; symbolic links to
  directories are followed, but each real directory (``st_dev``, ``st_ino``) is walked once,
  which makes symlink loops harmless.

Glob patterns follow .gitignore habits: a pattern without ``/`` matches the file (or
directory) name at any depth, one with ``/`` matches the path relative to the root; ``*``
also crosses ``/`` there. Matching is case-sensitive. ``--exclude`` on a directory prunes it.
"""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Iterable, Iterator, TextIO


#: The stat fields of a :class:`Candidate` (what the state key compares besides the path).
STAT_COLUMNS = ("size", "mtime_ns", "ctime_ns", "inode")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One input: its path as reported in the results, and the stat the state key uses."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    #: Why this entry cannot be scored (discovery already knows); None for a regular file.
    error: str | None = None
    #: Change detection beyond size and mtime (``touch -r`` restores an mtime, never a ctime):
    #: the inode change time and the inode number, see :mod:`dcx.engine.state`.
    ctime_ns: int = 0
    inode: int = 0


def discover(
    root: str | os.PathLike | None = None,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    files_from: str | os.PathLike | None = None,
    skip_paths: Iterable[str | os.PathLike] = (),
    stat_files: bool = True,
) -> Iterator[Candidate]:
    """Yield every input file under ``root`` (or listed in ``files_from``) in a stable order.

    ``files_from`` names a text file with one path per line (``-`` = standard input);
    relative lines are taken relative to ``root`` when one is given, directories listed there
    are walked, and listed files are kept even when hidden. ``skip_paths`` are dcx's own
    outputs (results, state database, heatmaps) that must never be scored. ``stat_files=False``
    only lists (size and mtime stay 0): enough to count the files, one syscall less per file.
    """
    walker = _Walker(list(include), list(exclude), skip_paths, stat_files)
    if files_from is None:
        if root is None:
            raise ValueError("discover() needs a root or files_from")
        yield from walker.walk(os.fspath(root), "")
        return
    root = None if root is None else os.fspath(root)
    with _open_list(files_from) as lines:
        for line in lines:
            entry = line.rstrip("\r\n")
            if entry:
                yield from walker.listed(entry, root)


class _open_list:
    """Open a --files-from list; ``-`` is standard input (left open afterwards)."""

    def __init__(self, files_from):
        self.name = os.fspath(files_from)

    def __enter__(self) -> TextIO:
        if self.name == "-":
            self.file = None
            return sys.stdin
        self.file = open(self.name, encoding="utf-8", errors="surrogateescape")
        return self.file

    def __exit__(self, *exc_info):
        if self.file is not None:
            self.file.close()


class _Walker:
    def __init__(self, include: list[str], exclude: list[str], skip_paths, stat_files: bool):
        self.include = include
        self.exclude = exclude
        self.stat_files = stat_files
        self.visited: set[tuple[int, int]] = set()
        self.skip = _skip_set(skip_paths)

    def listed(self, entry: str, root: str | None) -> Iterator[Candidate]:
        """One line of a --files-from list."""
        path = os.path.join(root, entry) if root is not None and not os.path.isabs(entry) else entry
        rel = _relative(path, root)
        if os.path.isdir(path):
            if not _matches(self.exclude, rel):
                yield from self.walk(path, rel)
            return
        if self._wanted(rel):
            yield self._candidate(path)

    def walk(self, top: str, top_rel: str) -> Iterator[Candidate]:
        """Depth-first over ``top``; an explicit stack, so hostile nesting depth cannot crash it."""
        try:
            st = os.stat(top)
        except OSError as exc:
            yield Candidate(top, error=_os_reason("cannot read", exc))
            return
        if not stat.S_ISDIR(st.st_mode):
            if self._wanted(top_rel or os.path.basename(top)):
                yield self._candidate(top)
            return
        self.visited.add((st.st_dev, st.st_ino))
        listing = self._list(top, st)
        if isinstance(listing, Candidate):
            yield listing
            return
        stack = [(top, top_rel, (st.st_dev, st.st_ino), iter(listing))]
        while stack:
            dir_path, dir_rel, dir_id, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name = entry.name
            if name.startswith(".") or (*dir_id, name) in self.skip:
                continue
            path = os.path.join(dir_path, name)
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if _is_dir(entry):
                if _matches(self.exclude, rel):
                    continue
                sub = self._enter(path)
                if isinstance(sub, Candidate):
                    yield sub
                elif sub is not None:
                    sub_id, listing = sub
                    stack.append((path, rel, sub_id, iter(listing)))
            elif self._wanted(rel):
                yield self._candidate(path, entry)

    def _enter(self, path: str):
        """(dir id, sorted listing) of a directory not walked yet; None when already walked."""
        try:
            st = os.stat(path)
        except OSError as exc:
            return Candidate(path, error=_os_reason("cannot read directory", exc))
        dir_id = (st.st_dev, st.st_ino)
        if dir_id in self.visited:
            return None
        self.visited.add(dir_id)
        listing = self._list(path, st)
        return listing if isinstance(listing, Candidate) else (dir_id, listing)

    @staticmethod
    def _list(path: str, st: os.stat_result):
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            return Candidate(path, 0, st.st_mtime_ns, error=_os_reason("cannot list directory", exc))

    def _candidate(self, path: str, entry: os.DirEntry | None = None) -> Candidate:
        return _candidate(path, entry) if self.stat_files else Candidate(path)

    def _wanted(self, rel: str) -> bool:
        if self.include and not _matches(self.include, rel):
            return False
        return not _matches(self.exclude, rel)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _candidate(path: str, entry: os.DirEntry | None = None) -> Candidate:
    try:
        st = entry.stat() if entry is not None else os.stat(path)
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "file not found"
        return Candidate(path, error=reason)
    except OSError as exc:
        return Candidate(path, error=_os_reason("cannot read", exc))
    if not stat.S_ISREG(st.st_mode):
        return Candidate(path, 0, st.st_mtime_ns, error="not a regular file")
    return Candidate(path, st.st_size, st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino)


def _matches(patterns: list[str], rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def _relative(path: str, root: str | None) -> str:
    """Path relative to ``root`` for glob matching (the path itself when outside the root)."""
    if root is not None:
        rel = os.path.relpath(path, root)
        if not rel.startswith(os.pardir):
            return rel.replace(os.sep, "/")
    return path.replace(os.sep, "/")


def _skip_set(paths) -> set[tuple[int, int, str]]:
    """(st_dev, st_ino of the parent directory, name) of each path: robust to how the
    archive root is spelled (relative, absolute, through a symbolic link)."""
    skip = set()
    for p in paths:
        parent, name = os.path.split(os.path.abspath(os.fspath(p)))
        try:
            st = os.stat(parent)
        except OSError:
            continue
        skip.add((st.st_dev, st.st_ino, name))
    return skip


def _os_reason(what: str, exc: OSError) -> str:
    return f"{what}: {exc.strerror or type(exc).__name__}"
