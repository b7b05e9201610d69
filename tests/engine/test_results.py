"""Result rows and writers: schema, PHI columns, CSV / JSONL / Parquet round trips, atomic commit."""
from __future__ import annotations

import json

import pytest

from dcx.engine.results import RowSchema, column_type, format_for, open_writer, partial_path, read_rows
from dcx.core.errors import DcxError
from dcx.core.files import write_json

SCHEMA = RowSchema(("covid", "normal", "pneumonia"), "covid", 0.3, "abc123def456")


def sample_rows(schema=SCHEMA):
    meta = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5", "accession": "A77",
            "patient_name": "Doe^Jane", "patient_id": "P-1"}
    return [
        schema.row("a/x.dcm", 1234, 1_700_000_000_123_456_789, status="ok", format="dicom", meta=meta,
                   probs=[0.31234567, 0.6, 0.08765433]),
        schema.row("a/y.png", 99, 1_700_000_000_000_000_000, status="ok", format="png", probs=[0.1, 0.2, 0.7]),
        schema.row("a/z.png", 0, 1_700_000_000_000_000_000, status="error", reason="empty file"),
        schema.row("a/sr.dcm", 5, 1_700_000_000_000_000_000, status="skipped", format="dicom",
                   reason="not an image (Basic Text SR)"),
    ]


def test_row_scores_flag_and_prediction():
    ok, other, err, skipped = sample_rows()
    assert ok["p_covid"] == 0.312346 and ok["p_positive"] == ok["p_covid"]
    assert ok["predicted"] == "normal" and ok["flagged"] is True  # 0.312346 >= 0.3
    assert other["flagged"] is False and other["predicted"] == "pneumonia"
    assert ok["mtime"] == "2023-11-14T22:13:20Z" and ok["model_id"] == "abc123def456"
    assert err["status"] == "error" and err["p_positive"] is None and err["flagged"] is None
    assert skipped["reason"].startswith("not an image")


def test_flag_uses_greater_or_equal():
    row = SCHEMA.row("t", 1, 1, status="ok", probs=[0.3, 0.7, 0.0])
    assert row["flagged"] is True


def test_patient_columns_only_with_include_phi():
    plain = sample_rows()[0]
    assert "patient_name" not in plain and "patient_id" not in plain
    assert "Doe" not in json.dumps(plain)
    phi = RowSchema(SCHEMA.classes, "covid", 0.3, "m", include_phi=True)
    row = sample_rows(phi)[0]
    assert (row["patient_name"], row["patient_id"]) == ("Doe^Jane", "P-1")
    assert list(row) == phi.columns


def test_column_order():
    assert SCHEMA.columns[:4] == ["path", "size", "mtime", "format"]
    assert SCHEMA.columns[8:11] == ["p_covid", "p_normal", "p_pneumonia"]
    assert SCHEMA.columns[-3:] == ["status", "reason", "heatmap"]


def test_class_named_positive_must_be_the_positive_class():
    with pytest.raises(DcxError, match="collides"):
        RowSchema(("positive", "negative"), "negative", 0.5, "m")
    schema = RowSchema(("negative", "positive"), "positive", 0.5, "m")
    row = schema.row("x", 1, 1, status="ok", probs=[0.2, 0.8])
    assert schema.columns.count("p_positive") == 1 and row["p_positive"] == 0.8


def test_non_utf8_path_becomes_escaped_text():
    path = b"dir/bad\xff.png".decode("utf-8", "surrogateescape")
    assert SCHEMA.row(path, 1, 1, status="error", reason="x")["path"] == "dir/bad\\xff.png"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_round_trip_in_batches(tmp_path, fmt):
    out = tmp_path / f"results.{fmt}"
    rows = sample_rows()
    with open_writer(out, SCHEMA.columns) as writer:
        writer.write(rows[:1])
        writer.write([])
        writer.write(rows[1:])
        assert not out.exists() and partial_path(out).exists()  # published only on commit
        writer.commit()
    assert out.exists() and not partial_path(out).exists()
    back = list(read_rows(out))
    assert back == rows
    assert list(back[0]) == SCHEMA.columns


def test_csv_rows_are_flushed_per_batch(tmp_path):
    out = tmp_path / "r.csv"
    writer = open_writer(out, SCHEMA.columns)
    writer.write(sample_rows()[:2])
    lines = partial_path(out).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[0].startswith("path,size,mtime")  # header + 2 rows, readable now
    writer.close()  # interrupted: the partial file stays, the output name is never half-written
    assert not out.exists() and partial_path(out).exists()


def test_format_from_option_or_suffix():
    assert format_for("r.parquet") == "parquet" and format_for("r.jsonl") == "jsonl"
    assert format_for("r.txt") == "csv" and format_for("r.csv", "jsonl") == "jsonl"
    with pytest.raises(DcxError, match="unknown output format"):
        format_for("r.csv", "xlsx")


def test_missing_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DcxError, match=r"pip install 'dcx\[parquet\]'"):
        open_writer(tmp_path / "r.parquet", SCHEMA.columns)


def test_column_types():
    assert [column_type(c) for c in ("size", "p_covid", "threshold", "flagged", "path")] == [int, float, float, bool, str]


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "s" / "summary.json", {"counts": {"ok": 3}})
    assert json.loads(path.read_text()) == {"counts": {"ok": 3}}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DcxError, match="cannot write"):
        open_writer(tmp_path / "afile" / "r.csv", SCHEMA.columns)


def test_out_of_distribution_rows_are_never_flagged(tmp_path):
    """flagged: true/false only in distribution; empty when out of distribution or unscored."""
    schema = RowSchema(("covid", "normal", "pneumonia"), "covid", 0.3, "abc123def456", ood_threshold=2.0)
    usual = schema.row("a.png", 1, 1, status="ok", probs=[0.9, 0.05, 0.05], ood_score=1.2)
    unusual = schema.row("b.png", 1, 1, status="ok", probs=[0.9, 0.05, 0.05], ood_score=7.5)
    edge = schema.row("c.png", 1, 1, status="ok", probs=[0.1, 0.8, 0.1], ood_score=2.0)
    assert usual["in_distribution"] is True and usual["flagged"] is True
    assert unusual["in_distribution"] is False and unusual["flagged"] is None
    assert unusual["p_covid"] == 0.9 and unusual["predicted"] == "covid"  # kept for inspection
    assert edge["in_distribution"] is True and edge["flagged"] is False
    out = tmp_path / "r.csv"
    with open_writer(out, schema.columns) as writer:
        writer.write([usual, unusual])
        writer.commit()
    back = list(read_rows(out))
    assert back[1]["in_distribution"] is False and back[1]["ood_score"] == 7.5 and back[1]["flagged"] is None


def test_a_model_without_ood_score_leaves_the_columns_empty():
    row = SCHEMA.row("a.png", 1, 1, status="ok", probs=[0.9, 0.05, 0.05])
    assert row["ood_score"] is None and row["in_distribution"] is None and row["flagged"] is True
