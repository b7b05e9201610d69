"""Discovery: order, hidden entries, globs, symlink loops, unreadable parts, --files-from."""
from __future__ import annotations

import io
import os
import sys

import pytest

from dcx.engine.discover import Candidate, discover


def make_tree(root, names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(name.encode())
    return root


def rels(root, candidates):
    return [os.path.relpath(c.path, root).replace(os.sep, "/") for c in candidates]


TREE = ["b.png", "a/2.dcm", "a/10.dcm", "a/sub/x.jpg", "c/notes.txt", "A.png", "a.png"]


def test_order_is_sorted_depth_first_and_stable(tmp_path):
    make_tree(tmp_path, TREE)
    first = list(discover(tmp_path))
    # codepoint order per directory, each directory's files before its later siblings
    assert rels(tmp_path, first) == ["A.png", "a/10.dcm", "a/2.dcm", "a/sub/x.jpg", "a.png", "b.png", "c/notes.txt"]
    assert list(discover(tmp_path)) == first
    c = first[-1]
    st = os.stat(tmp_path / "c/notes.txt")
    assert (c.size, c.mtime_ns, c.error) == (st.st_size, st.st_mtime_ns, None)


def test_discovery_is_a_lazy_generator(tmp_path):
    make_tree(tmp_path, TREE)
    it = discover(tmp_path)
    assert iter(it) is it
    assert next(it).path.endswith("A.png")


def test_hidden_files_and_directories_are_skipped(tmp_path):
    make_tree(tmp_path, ["ok.png", ".hidden.png", ".git/objects/x.png", "d/.DS_Store", "d/y.png"])
    assert rels(tmp_path, discover(tmp_path)) == ["d/y.png", "ok.png"]


def test_hidden_root_is_still_walked(tmp_path):
    root = make_tree(tmp_path / ".archive", ["x.png"])
    assert rels(root, discover(root)) == ["x.png"]


@pytest.mark.parametrize("include, exclude, expected", [
    (["*.dcm"], [], ["a/10.dcm", "a/2.dcm"]),                          # name pattern at any depth
    (["a/*"], [], ["a/10.dcm", "a/2.dcm", "a/sub/x.jpg"]),             # path pattern, * crosses /
    ([], ["sub"], ["A.png", "a/10.dcm", "a/2.dcm", "a.png", "b.png", "c/notes.txt"]),  # prunes dir
    ([], ["*.txt", "a/*"], ["A.png", "a.png", "b.png"]),
    (["*.png"], ["A.*"], ["a.png", "b.png"]),                          # case-sensitive
])
def test_include_and_exclude_globs(tmp_path, include, exclude, expected):
    make_tree(tmp_path, TREE)
    assert rels(tmp_path, discover(tmp_path, include=include, exclude=exclude)) == expected


def test_symlink_loop_is_walked_once(tmp_path):
    make_tree(tmp_path, ["d/x.png", "e/y.png"])
    os.symlink(tmp_path, tmp_path / "d" / "loop")          # back to the root
    os.symlink(tmp_path / "e", tmp_path / "d" / "alias")   # a second way into e/
    found = rels(tmp_path, discover(tmp_path))
    # each real directory is walked once: through d/alias (first in order), never again via e/
    assert found == ["d/alias/y.png", "d/x.png"]


def test_symlinked_file_is_an_input_and_broken_link_an_error(tmp_path):
    make_tree(tmp_path, ["real.png"])
    os.symlink(tmp_path / "real.png", tmp_path / "link.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    found = {os.path.basename(c.path): c for c in discover(tmp_path)}
    assert found["link.png"].size == found["real.png"].size > 0
    assert found["broken.png"].error == "broken symbolic link"


def test_fifo_is_reported_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (c,) = discover(tmp_path)
    assert c.error == "not a regular file"


def test_unreadable_directory_is_reported_and_the_walk_goes_on(tmp_path, monkeypatch):
    make_tree(tmp_path, ["locked/x.png", "z.png"])
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 does not stop root, so refuse the way the kernel would
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = list(discover(tmp_path))
    assert [os.path.basename(c.path) for c in found] == ["locked", "z.png"]
    assert found[0].error == "cannot list directory: Permission denied"


def test_skip_paths_exclude_our_own_outputs_however_the_root_is_spelled(tmp_path, monkeypatch):
    make_tree(tmp_path, ["x.png", "results.csv", "results.state.sqlite", "heat/abc.png"])
    monkeypatch.chdir(tmp_path)
    skip = [tmp_path / "results.csv", tmp_path / "results.state.sqlite", tmp_path / "heat"]
    assert rels(".", discover(".", skip_paths=skip)) == ["x.png"]


def test_root_may_be_a_single_file(tmp_path):
    make_tree(tmp_path, ["one.dcm"])
    (c,) = discover(tmp_path / "one.dcm")
    assert c.path == str(tmp_path / "one.dcm") and c.error is None


def test_missing_root_is_an_error_candidate(tmp_path):
    (c,) = discover(tmp_path / "nope")
    assert c.error.startswith("cannot read")


def test_files_from_keeps_list_order_and_resolves_against_root(tmp_path):
    make_tree(tmp_path, TREE + [".hidden.png"])
    listing = tmp_path / "list.txt"
    listing.write_text(f"b.png\n\n{tmp_path / 'A.png'}\n.hidden.png\nmissing.png\na/sub\n", encoding="utf-8")
    found = list(discover(tmp_path, files_from=listing))
    assert rels(tmp_path, found) == ["b.png", "A.png", ".hidden.png", "missing.png", "a/sub/x.jpg"]
    assert found[3].error == "file not found"
    assert [c.error for c in found if c.error] == ["file not found"]


def test_files_from_applies_globs_and_reads_stdin(tmp_path, monkeypatch):
    make_tree(tmp_path, TREE)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a/2.dcm\nb.png\nc/notes.txt\n"))
    found = discover(tmp_path, files_from="-", exclude=["*.txt"])
    assert rels(tmp_path, found) == ["a/2.dcm", "b.png"]


def test_deep_nesting_does_not_hit_the_recursion_limit(tmp_path):
    levels = sys.getrecursionlimit() + 50  # a recursive walk would fail here
    chain = [tmp_path]
    for _ in range(levels):  # os.makedirs and shutil.rmtree recurse themselves: build by hand
        chain.append(chain[-1] / "d")
        chain[-1].mkdir()
    (chain[-1] / "x.png").write_bytes(b"x")
    try:
        (c,) = discover(tmp_path)
        assert c.path.endswith("x.png") and c.error is None
    finally:  # remove bottom-up, or pytest's own tmp cleanup would hit the recursion limit
        (chain[-1] / "x.png").unlink()
        for d in reversed(chain[1:]):
            d.rmdir()


def test_candidate_is_light():
    assert not hasattr(Candidate("x"), "__dict__")  # slots: millions of them pass through


def test_listing_without_stat_finds_the_same_files(tmp_path):
    make_tree(tmp_path, TREE + [".hidden"])
    listed = list(discover(tmp_path, stat_files=False))
    assert [c.path for c in listed] == [c.path for c in discover(tmp_path)]
    assert all(c.size == 0 for c in listed)
