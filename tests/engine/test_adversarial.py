"""A real dcx-infer run over the adversarial corpus (tests/adversarial.py): every file gets
the status and reason class it must, and no cell carries a path, PHI or a live formula."""
from __future__ import annotations

import json
import re

import pytest

from adversarial import FORMULA, PHI_MARKER, build_corpus
from conftest import invoke
from dcx.engine.cli import main
from dcx.engine.results import display_path, read_rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial") / "corpus"
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def screened(trained_checkpoint, corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("adversarial-out") / "r.csv"
    result = invoke(main, ["--engine", trained_checkpoint, root, "--out", out, "--batch-size", 4, "--no-state"],
                    expect_exit=3)
    summary = json.loads(out.with_name("r.summary.json").read_text())
    return out, list(read_rows(out)), summary, result.output


def test_every_file_gets_its_expected_status_and_reason(corpus, screened):
    root, expect = corpus
    _, rows, summary, _ = screened
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == len(expect)
    wrong = []
    for rel, e in sorted(expect.items()):
        row = by_path.get(display_path(str(root / rel)))
        if row is None:
            wrong.append(f"{rel}: no row")
            continue
        reason = row["reason"]
        ok_reason = reason is None if e.reason is None else bool(reason and re.search(e.reason, reason))
        if row["status"] != e.status or not ok_reason:
            wrong.append(f"{rel}: {row['status']} {reason!r}, expected {e.status} {e.reason!r}")
    assert not wrong, "\n".join(wrong)
    assert summary["counts"] == {s: sum(e.status == s for e in expect.values()) for s in ("ok", "skipped", "error")}


def test_reasons_name_no_path_and_group_in_the_summary(corpus, screened):
    root, _ = corpus
    _, rows, summary, _ = screened
    assert not [r["reason"] for r in rows if r["reason"] and str(root.parent) in r["reason"]]
    assert not [k for k in summary["top_error_reasons"] if str(root.parent) in k]


def test_no_phi_in_any_cell_without_include_phi(screened):
    out, rows, _, _ = screened
    assert PHI_MARKER not in out.read_text(encoding="utf-8")
    assert "patient_name" not in rows[0]


def test_csv_cells_are_spreadsheet_safe_and_read_back_exactly(screened):
    out, rows, _, _ = screened
    text = out.read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and ',"=HYPERLINK' not in text and ",=HYPERLINK" not in text
    assert [r["accession"] for r in rows if r["accession"]] == [FORMULA]


def test_two_names_that_escape_alike_stay_two_paths(corpus, screened):
    root, _ = corpus
    _, rows, _, _ = screened
    names = {r["path"] for r in rows if "/names/" in r["path"]}
    assert len(names) == 2


def test_formula_cells_in_jsonl_are_left_as_they_are(trained_checkpoint, corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "r.jsonl"
    invoke(main, ["--engine", trained_checkpoint, root / "dicom", "--out", out, "--no-state"], expect_exit=3)
    assert [r["accession"] for r in read_rows(out) if r["accession"]] == [FORMULA]
    assert "'=HYPERLINK" not in out.read_text(encoding="utf-8")


def test_foreign_exception_texts_keep_their_cause_and_lose_paths_and_values():
    from dcx.core.reasons import exception_reason

    plugins = RuntimeError("Unable to decode the pixel data as none of the available plugins succeeded:\n"
                           "  pylibjpeg: libjpeg error code -1038 returned from Decode()\n"
                           "  pyjpegls: not installed")
    reason = exception_reason(plugins)
    assert "libjpeg error code -1038" in reason and "pyjpegls: not installed" in reason and "\n" not in reason
    assert exception_reason(OSError("cannot identify image file '/home/x/DOE_JOHN.png'")) == \
        "OSError: cannot identify image file '…'"
    assert PHI_MARKER not in exception_reason(ValueError(f"could not convert string to float: '{PHI_MARKER}'"))
    assert len(exception_reason(ValueError("x" * 5000))) <= 300
