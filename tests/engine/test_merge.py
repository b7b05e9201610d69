"""dcx-merge: parts in any format become one sorted table, and every file must appear exactly once."""
from __future__ import annotations

import pytest

from conftest import invoke
from dcx.engine.merge import find_parts, main, merge_parts, row_key
from dcx.engine.results import RowSchema, open_writer, partial_path, read_rows
from dcx.engine.shard import Shard
from dcx.core.errors import DcxError

SCHEMA = RowSchema(("covid", "normal"), "covid", 0.5, "model0000001")
PATHS = ["a-c.png", "a/b.png", "a/z/1.png", "b.png", "b/0.dcm", "broken.png", "c/d/e.jpg", "zz.png"]


def row(path, schema=SCHEMA):
    if path.startswith("broken"):
        return schema.row(path, 0, 0, status="error", reason="empty file")
    p = (sum(map(ord, path)) % 97) / 97
    return schema.row(path, 10, 1_700_000_000_000_000_000, status="ok", format="png", probs=[p, 1 - p])


def write_part(path, paths, schema=SCHEMA):
    with open_writer(path, schema.columns) as writer:
        writer.write(row(p, schema) for p in paths)
        writer.commit()
    return path


def sharded(tmp_path, count, suffixes=("csv",), paths=PATHS):
    """Parts of ``paths`` split by the real shard assignment, in the given formats (cycled)."""
    parts = []
    for i in range(count):
        s = Shard(i, count)
        mine = [p for p in paths if s.owns(p)]
        parts.append(write_part(s.part_path(tmp_path / f"results.{suffixes[i % len(suffixes)]}"), mine))
    return parts


def test_walk_order_puts_a_folder_before_a_sibling_with_a_longer_name():
    assert sorted(PATHS, key=lambda p: row_key({"path": p})) == \
        ["a/b.png", "a/z/1.png", "a-c.png", "b/0.dcm", "b.png", "broken.png", "c/d/e.jpg", "zz.png"]


@pytest.mark.parametrize("out_name", ["merged.csv", "merged.jsonl", "merged.parquet"])
def test_mixed_format_parts_merge_to_the_rows_of_one_table(tmp_path, out_name):
    parts = sharded(tmp_path, 3, ("csv", "jsonl", "parquet"))
    report = merge_parts(parts, tmp_path / out_name, expect_shards=3)
    merged = list(read_rows(tmp_path / out_name))
    expected = sorted((row(p) for p in PATHS), key=row_key)
    assert merged == expected
    assert report.rows == len(PATHS) and report.status == {"ok": 7, "error": 1}
    assert report.flagged == sum(bool(r["flagged"]) for r in expected)


def test_unsorted_part_is_sorted(tmp_path):
    part = write_part(tmp_path / "ray" / "part-00000.parquet", list(reversed(PATHS)))
    merge_parts(find_parts([tmp_path / "ray"]), tmp_path / "m.csv")
    assert [r["path"] for r in read_rows(tmp_path / "m.csv")] == \
        sorted(PATHS, key=lambda p: p.split("/"))
    assert part.exists()


def test_duplicate_path_is_named_and_nothing_is_written(tmp_path):
    a = write_part(tmp_path / "p1.csv", ["a/b.png", "b.png"])
    b = write_part(tmp_path / "p2.csv", ["b.png", "zz.png"])
    out = tmp_path / "m.csv"
    with pytest.raises(DcxError, match=r"1 path\(s\) appear in more than one row: b\.png \(in .*p1\.csv, .*p2\.csv\)"):
        merge_parts([a, b], out)
    assert not out.exists() and not partial_path(out).exists()


def test_duplicate_inside_one_part_is_caught(tmp_path):
    part = write_part(tmp_path / "p.jsonl", ["a/b.png", "zz.png", "a/b.png"])
    with pytest.raises(DcxError, match="a/b.png"):
        merge_parts([part], tmp_path / "m.csv")


def test_missing_shard_part_is_named(tmp_path):
    parts = sharded(tmp_path, 4)
    with pytest.raises(DcxError, match=r"missing shard part\(s\) 2/4 of 4 .*shard-0002-of-0004"):
        merge_parts(parts[:2] + parts[3:], tmp_path / "m.csv")


def test_parts_of_different_shard_counts_are_refused(tmp_path):
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    parts = sharded(tmp_path / "two", 2) + sharded(tmp_path / "three", 3)
    with pytest.raises(DcxError, match="different shard counts"):
        merge_parts(parts, tmp_path / "m.csv")


def test_same_shard_twice_is_refused(tmp_path):
    parts = sharded(tmp_path, 2, ("csv",))
    copy = write_part(tmp_path / "results.shard-0001-of-0002.jsonl", [])
    with pytest.raises(DcxError, match="more than one part for the same shard: shard 1/2"):
        merge_parts(parts + [copy], tmp_path / "m.csv")


def test_expect_shards_wants_tags_and_the_count(tmp_path):
    parts = sharded(tmp_path, 2)
    with pytest.raises(DcxError, match="different shard counts"):
        merge_parts(parts, tmp_path / "m.csv", expect_shards=3)
    plain = write_part(tmp_path / "plain.csv", ["x.png"])
    with pytest.raises(DcxError, match="carry no"):
        merge_parts(parts + [plain], tmp_path / "m.csv", expect_shards=2)


def test_parts_of_different_models_are_refused(tmp_path):
    other = RowSchema(SCHEMA.classes, "covid", 0.5, "model0000002")
    a = write_part(tmp_path / "a.csv", ["a/b.png"])
    b = write_part(tmp_path / "b.csv", ["zz.png"], other)
    with pytest.raises(DcxError, match="different models"):
        merge_parts([a, b], tmp_path / "m.csv")


def test_parts_with_other_columns_are_refused(tmp_path):
    other = RowSchema(("covid", "normal", "pneumonia"), "covid", 0.5, SCHEMA.model_id)
    a = write_part(tmp_path / "a.csv", ["a/b.png"])
    with open_writer(tmp_path / "b.csv", other.columns) as w:
        w.write([other.row("zz.png", 1, 1, status="error", reason="x")])
        w.commit()
    with pytest.raises(DcxError, match="other columns.*p_pneumonia"):
        merge_parts([a, tmp_path / "b.csv"], tmp_path / "m.csv")


def test_unfinished_and_missing_parts_are_refused(tmp_path):
    with pytest.raises(DcxError, match="unfinished"):
        find_parts([tmp_path / "results.shard-0000-of-0002.csv.partial"])
    with pytest.raises(DcxError, match="part not found"):
        find_parts([tmp_path / "nope.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DcxError, match="holds no result parts"):
        find_parts([tmp_path / "empty"])


def test_folder_of_parts_skips_summaries_state_and_the_output(tmp_path):
    parts = sharded(tmp_path, 2)
    (tmp_path / "results.shard-0000-of-0002.summary.json").write_text("{}")
    (tmp_path / "results.shard-0000-of-0002.state.sqlite").write_bytes(b"")
    (tmp_path / ".hidden.csv").write_text("path\n")
    assert find_parts([tmp_path], out=tmp_path / "merged.csv") == sorted(parts)


def test_cli_merges_refuses_to_overwrite_and_exits_non_zero_on_a_gap(tmp_path):
    parts = sharded(tmp_path / "parts", 3, ("csv", "parquet"))
    out = tmp_path / "merged.parquet"
    result = invoke(main, [*parts, "--out", out, "--expect-shards", 3])
    assert f"merged 3 parts: {len(PATHS)} files (7 ok, 0 skipped, 1 error)" in result.output
    assert len(list(read_rows(out))) == len(PATHS)
    assert "exists" in invoke(main, [*parts, "--out", out], expect_exit=1).output
    invoke(main, [*parts, "--out", out, "--force"])
    gap = invoke(main, [parts[0], parts[2], "--out", tmp_path / "gap.csv"], expect_exit=1)
    assert "missing shard part(s) 1/3" in gap.output and "Traceback" not in gap.output
    assert not (tmp_path / "gap.csv").exists()


@pytest.mark.parametrize("content", ["", "header"])
def test_empty_or_header_only_part_is_refused_by_name(tmp_path, content):
    parts = sharded(tmp_path, 3)
    victim = parts[1]
    header = victim.read_text().splitlines()[0] + "\n"
    victim.write_text(header if content == "header" else "")
    with pytest.raises(DcxError, match=f"no rows.*{victim.name}|{victim.name}.*no rows"):
        merge_parts(parts, tmp_path / "merged.csv")
    assert not (tmp_path / "merged.csv").exists()


def test_rowless_part_of_a_shard_that_owned_no_files_is_accepted(tmp_path):
    import json

    parts = sharded(tmp_path, 3)
    victim = parts[2]
    victim.write_text(victim.read_text().splitlines()[0] + "\n")
    summary = victim.with_name(f"{victim.stem}.summary.json")
    summary.write_text(json.dumps({"completed": False, "files": 0}))
    with pytest.raises(DcxError, match="no rows"):  # an unfinished job is no proof
        merge_parts(parts, tmp_path / "merged.csv")
    summary.write_text(json.dumps({"completed": True, "files": 0}))
    report = merge_parts(parts, tmp_path / "merged.csv")
    assert report.rows == sum(1 for p in parts for _ in read_rows(p))


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage\n", b'"unterminated\n' * 3, b"\x00" * 64])
def test_corrupt_part_is_one_error_naming_the_part(tmp_path, damage):
    parts = sharded(tmp_path, 2)
    with open(parts[0], "ab") as f:
        f.write(damage)
    result = invoke(main, [*parts, "--out", tmp_path / "merged.csv"], expect_exit=None)
    assert result.exit_code != 0 and parts[0].name in result.output
    assert "Traceback" not in result.output


def test_corrupt_parquet_and_jsonl_parts_name_the_part(tmp_path):
    parts = sharded(tmp_path, 2, suffixes=("parquet", "jsonl"))
    for part in parts:
        part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2] + b"{]")
        with pytest.raises(DcxError, match=part.name):
            merge_parts(parts, tmp_path / "merged.csv")
        break
