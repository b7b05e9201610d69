"""The OpenVINO compiled-model cache is kept to its budget, least recently used blobs first."""
import os
import time

from dcx.engine.backends.openvino_backend import prune_cache

DAY = 86400


def blob(folder, name, size, *, written, read=None):
    path = folder / name
    path.write_bytes(b"\0" * size)
    os.utime(path, (read or written, written))
    return path


def test_least_recently_used_blobs_go_first_and_nothing_else(tmp_path):
    now = time.time()
    oldest = blob(tmp_path, "a.blob", 300, written=now - 30 * DAY)
    nightly = blob(tmp_path, "b.blob", 300, written=now - 60 * DAY, read=now - DAY)  # old, but read last night
    middle = blob(tmp_path, "c.blob", 300, written=now - 20 * DAY)
    newest = blob(tmp_path, "d.blob", 300, written=now)
    other = blob(tmp_path, "notes.txt", 5000, written=now - 90 * DAY)

    assert prune_cache(tmp_path, 1200) == []  # within budget: nothing to do
    assert prune_cache(tmp_path, 700) == [oldest, middle]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.blob", "d.blob", "notes.txt"]
    assert nightly.exists() and newest.exists() and other.exists()


def test_an_empty_or_missing_folder_is_fine(tmp_path):
    assert prune_cache(tmp_path, 0) == [] and prune_cache(tmp_path / "absent", 0) == []
