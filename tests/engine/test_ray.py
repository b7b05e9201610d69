"""dcx-infer --ray: one row per file and the local run's scores, on a small local Ray instance.

The Ray tests share one 2-CPU local cluster (module fixture) and skip when Ray, an extra
(``pip install 'dcx[ray]'``), is not installed. The tests above them need no Ray.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke
from dcx.engine.cli import parse_address
from dcx.engine.ray_runner import _ScoreFiles, _watch
from dcx.engine.results import read_rows
from dcx.engine.scoring import ScreenOptions
from dcx.core.errors import DcxError

CORRUPT = {"broken/empty.png": b"", "broken/garbage.dcm": bytes(range(256)) * 4}


def test_single_machine_path_never_imports_ray():
    code = ("import sys, dcx.engine.cli, dcx.engine.run, dcx.engine.merge, dcx.engine.shard, "
            "dcx.engine.ray_runner; loaded = [m for m in sys.modules if m.split('.')[0] == 'ray']; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("value", ["local", "auto", "10.0.0.7:6379", "head-node.cluster:6379",
                                   "ray://head:10001", "[::1]:6379"])
def test_addresses_accepted(value):
    assert parse_address(value) == value


@pytest.mark.parametrize("value", ["/data/archive", "archive", "ray://", "host:port"])
def test_a_swallowed_archive_path_gets_a_hint(value):
    with pytest.raises(DcxError, match="put --ray after ARCHIVE"):
        parse_address(value)


def test_watchdog_stops_a_silent_hang():
    def stuck():
        yield "first"
        time.sleep(30)
        yield "never"

    seen, t0 = [], time.perf_counter()
    with pytest.raises(DcxError, match=r"no result from Ray for 0\.5 s \(1 of 2 files scored\)"):
        for item in _watch(stuck(), 0.5, lambda: "1 of 2 files scored"):
            seen.append(item)
    assert seen == ["first"] and time.perf_counter() - t0 < 10


def test_watchdog_turns_a_ray_failure_into_one_line():
    def failing():
        yield 1
        raise RuntimeError("worker died\n  Traceback ...")

    with pytest.raises(DcxError, match=r"^the Ray run failed: RuntimeError: worker died$"):
        list(_watch(failing(), 5, lambda: ""))


# --------------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def archive(synth_archive, tmp_path_factory) -> Path:
    """12 files: 9 phantoms in two folders, 3 corrupt (empty, truncated PNG, garbage DICOM)."""
    root = tmp_path_factory.mktemp("ray") / "archive"
    phantoms = sorted(synth_archive.rglob("*.png"))[::11][:9]
    for i, src in enumerate(phantoms):
        dest = root / f"site{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    for name, data in {**CORRUPT, "broken/truncated.png": phantoms[0].read_bytes()[:150]}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def local_rows(trained_checkpoint, archive, tmp_path_factory) -> dict[str, dict]:
    from dcx.engine.cli import main

    out = tmp_path_factory.mktemp("ray-local") / "local.csv"
    invoke(main, ["--engine", trained_checkpoint, archive, "--out", out, "--batch-size", 4, "--no-state"],
           expect_exit=3)
    return {r["path"]: r for r in read_rows(out)}


def test_scorer_gives_a_failing_file_its_row_and_keeps_the_others(trained_checkpoint, archive, local_rows,
                                                                   tmp_path, monkeypatch):
    """A batch that raises (not a corrupt file: the decoder reports those) is retried file by file."""
    from dcx.engine import scoring
    from dcx.engine.discover import discover

    files = [c for c in discover(archive) if "broken" not in c.path][:4]
    poisoned = files[1].path
    built = []

    class Poisoned:  # the real decoder, failing on one file like a crashing library would
        def __init__(self, decoder):
            self.decoder = decoder
            built.append(self)

        def __enter__(self):
            self.decoder.__enter__()
            return self

        def __exit__(self, *exc_info):
            self.decoder.__exit__(*exc_info)

        def decode(self, paths):
            if poisoned in paths:
                raise MemoryError("simulated allocator failure")
            return self.decoder.decode(paths)

    real_open = scoring.open_decoder
    monkeypatch.setattr(scoring, "open_decoder", lambda *args: Poisoned(real_open(*args)))
    options = ScreenOptions(engine=trained_checkpoint, out=tmp_path / "x.parquet", device="cpu", decode_threads=1)
    rows = _ScoreFiles(options, str(Path.cwd()))._score(files)
    assert [r["path"] for r in rows] == [f.path for f in files]
    assert rows[1]["status"] == "error" and rows[1]["reason"] == "MemoryError: simulated allocator failure"
    for row in rows[:1] + rows[2:]:
        want = local_rows[row["path"]]
        assert row["status"] == want["status"] == "ok"
        assert abs(row["p_positive"] - want["p_positive"]) <= 2e-6
    assert len(built) == 3  # the batch's decoder, then a fresh one after each failure


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'dcx[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_run_gives_one_row_per_file_and_the_local_scores(ray_cluster, trained_checkpoint, archive,
                                                             local_rows, tmp_path):
    from dcx.engine.cli import main

    out = tmp_path / "ray.parquet"
    args = ["--engine", trained_checkpoint, archive, "--out", out, "--batch-size", 4, "--ray-timeout", 120, "--ray"]
    result = invoke(main, args, expect_exit=3)  # 3: finished, with error rows for the corrupt files
    assert f"results: {out}" in result.output
    parts = sorted(out.glob("part-*.parquet"))
    assert parts and not Path(f"{out}.partial").exists()
    rows = [r for p in parts for r in read_rows(p)]
    assert sorted(r["path"] for r in rows) == sorted(local_rows)  # each file exactly once
    assert list(rows[0]) == list(next(iter(local_rows.values())))  # the local run's columns
    assert {r["path"] for r in rows if r["status"] == "error"} == {str(archive / n) for n in
                                                                   [*CORRUPT, "broken/truncated.png"]}
    deltas = [abs(r["p_positive"] - local_rows[r["path"]]["p_positive"]) for r in rows if r["status"] == "ok"]
    assert len(deltas) == 9 and max(deltas) <= 2e-6
    for r in rows:
        assert (r["status"], r["reason"]) == (local_rows[r["path"]]["status"], local_rows[r["path"]]["reason"])

    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["completed"] and summary["files"] == 12 and summary["reused_from_state"] == 0
    assert summary["counts"] == {"ok": 9, "skipped": 0, "error": 3}
    assert summary["ray"]["actors"] == 1  # 2 CPUs: one actor, one CPU left for Ray's own stages
    assert summary["backend"] == "pytorch"

    from dcx.engine import merge

    invoke(merge.main, [out, "--out", tmp_path / "ray.csv"])  # the parts folder as one checked table
    assert [r["path"] for r in read_rows(tmp_path / "ray.csv")] == sorted(local_rows, key=lambda p: p.split("/"))

    # the rerun reuses every row from the state database and needs no worker at all
    invoke(main, args, expect_exit=3)
    again = json.loads((tmp_path / "ray.summary.json").read_text())
    assert again["scored_this_run"] == 0 and again["reused_from_state"] == 12
    assert sorted(r["path"] for p in out.glob("part-*.parquet") for r in read_rows(p)) == sorted(local_rows)


def test_ray_refuses_csv_output(trained_checkpoint, archive, tmp_path):
    from dcx.engine.cli import main

    result = invoke(main, ["--engine", trained_checkpoint, archive, "--out", tmp_path / "r.csv", "--ray"],
                    expect_exit=1)
    assert "folder of Parquet parts" in result.output
