"""dcx-eval: the metrics dict, the plots, and the command on a trained checkpoint."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import invoke
from dcx.core import metrics
from dcx.core.card import ModelCard
from dcx.core.checkpoint import build_model
from dcx.core.errors import DcxError
from dcx.train.evaluate import summarize, sweep_markdown
from dcx.core.files import write_json
from dcx.train.plots import plot_confusion, plot_pr, plot_roc

CLASSES = ["covid", "normal", "pneumonia"]


def _card(threshold=0.4):
    return ModelCard(arch="resnet18", classes=CLASSES, positive="covid", threshold=threshold,
                     threshold_policy="test policy", input_size=64)


def _probs(rows):
    p = np.array(rows, dtype=float)
    return p / p.sum(axis=1, keepdims=True)


LABELS = ["covid", "covid", "covid", "normal", "normal", "pneumonia", "pneumonia", "pneumonia"]
PROBS = _probs([[0.9, 0.05, 0.05],   # covid -> covid
                [0.45, 0.1, 0.45],   # covid -> covid (tie resolved to the first arg-max), flagged
                [0.2, 0.7, 0.1],     # covid -> normal, not flagged
                [0.1, 0.8, 0.1],     # normal -> normal
                [0.5, 0.4, 0.1],     # normal -> covid, flagged
                [0.1, 0.1, 0.8],     # pneumonia -> pneumonia
                [0.3, 0.2, 0.5],     # pneumonia -> pneumonia, not flagged at 0.4
                [0.05, 0.9, 0.05]])  # pneumonia -> normal


def test_summary_counts_match_a_hand_worked_example():
    s = summarize(LABELS, PROBS, _card(0.4))
    assert s["n"] == 8 and s["class_counts"] == {"covid": 3, "normal": 2, "pneumonia": 3}
    assert s["confusion_matrix"]["counts"] == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert s["accuracy"] == pytest.approx(5 / 8)
    covid, normal, pneumonia = (s["per_class"][c] for c in CLASSES)
    assert (covid["precision"], covid["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert normal["precision"] == pytest.approx(1 / 3) and normal["recall"] == pytest.approx(1 / 2)
    assert pneumonia["precision"] == 1.0 and pneumonia["recall"] == pytest.approx(2 / 3)
    assert pneumonia["f1"] == pytest.approx(0.8) and normal["f1"] == pytest.approx(0.4)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0.8) / 3)
    point = s["operating_point"]
    assert (point["tp"], point["fn"], point["tn"], point["fp"]) == (2, 1, 4, 1)
    assert point["sensitivity"] == pytest.approx(2 / 3) and point["specificity"] == pytest.approx(0.8)
    low, high = point["sensitivity_ci95"]
    assert low < 2 / 3 < high
    y, p = np.array(LABELS) == "covid", PROBS[:, 0]
    assert s["auc"] == pytest.approx(metrics.roc_auc(y, p))
    assert s["average_precision"] == pytest.approx(metrics.average_precision(y, p))


def test_sweep_holds_the_paper_thresholds_and_the_cards():
    s = summarize(LABELS, PROBS, _card(0.37))
    thresholds = [row["threshold"] for row in s["threshold_sweep"]]
    assert thresholds == sorted(thresholds) and 0.37 in thresholds
    assert {0.1, 0.5, 0.9} <= set(thresholds) and len(thresholds) == 10
    sens = [row["sensitivity"] for row in s["threshold_sweep"]]
    assert sens == sorted(sens, reverse=True), "sensitivity can only fall as the threshold rises"
    table = sweep_markdown(s)
    assert "| 0.37 * |" in table and table.count("\n| ") == 11  # header + 10 rows


def test_summary_rejects_foreign_labels_and_wrong_shapes():
    with pytest.raises(DcxError, match="tuberculosis"):
        summarize(["covid", "tuberculosis"], _probs([[1, 1, 1], [1, 1, 1]]), _card())
    with pytest.raises(DcxError, match="shape"):
        summarize(["covid"], np.ones((1, 2)), _card())


def test_undefined_metrics_become_json_null(tmp_path):
    s = summarize(["normal", "pneumonia"], _probs([[1, 2, 1], [1, 1, 2]]), _card())
    assert math.isnan(s["auc"]) and math.isnan(s["operating_point"]["sensitivity"])
    text = write_json(tmp_path / "m.json", s).read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded["auc"] is None and loaded["operating_point"]["sensitivity_ci95"] == [None, None]
    assert loaded["operating_point"]["specificity"] == 1.0


def _is_real_plot(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300
        return np.asarray(im.convert("L")).std() > 10


def test_plots_are_written_as_png(tmp_path):
    y, p = np.array(LABELS) == "covid", PROBS[:, 0]
    assert _is_real_plot(plot_roc(tmp_path / "roc.png", y, p, threshold=0.4, positive="covid"))
    assert _is_real_plot(plot_pr(tmp_path / "pr.png", y, p, threshold=0.4, positive="covid"))
    counts = summarize(LABELS, PROBS, _card())["confusion_matrix"]["counts"]
    assert _is_real_plot(plot_confusion(tmp_path / "confusion.png", counts, CLASSES))
    # Degenerate input (one class only) still plots, without an operating point to mark.
    assert _is_real_plot(plot_roc(tmp_path / "one.png", np.zeros(3, bool), np.array([0.1, 0.5, 0.9]),
                                  threshold=0.5, positive="covid"))


# --------------------------------------------------------------------------- the command


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def test_eval(trained_run, tmp_path_factory):
    from dcx.train.eval_cli import main

    out = tmp_path_factory.mktemp("eval") / "test"
    result = invoke(main, [trained_run / "best.pt", "--data", trained_run / "splits" / "test.csv", "--out", out,
                           "--batch-size", 5, "--workers", 0])
    return out, result


def test_eval_writes_metrics_tables_and_plots(test_eval, trained_run):
    out, result = test_eval
    for name in ("metrics.json", "threshold_sweep.md", "predictions.csv", "roc.png", "pr.png", "confusion.png"):
        assert (out / name).is_file(), name
    for name in ("roc.png", "pr.png", "confusion.png"):
        assert _is_real_plot(out / name)
    m = json.loads((out / "metrics.json").read_text())
    test_rows = _rows(trained_run / "splits" / "test.csv")
    card = json.loads((trained_run / "card.json").read_text())
    assert m["n"] == len(test_rows) and m["unreadable"] == []
    assert m["threshold"] == card["threshold"] and m["classes"] == card["classes"]
    assert sum(map(sum, m["confusion_matrix"]["counts"])) == m["n"]
    assert "sensitivity" in result.output and "specificity" in result.output
    # The metrics are those of the per-image predictions written beside them.
    preds = _rows(out / "predictions.csv")
    assert [r["path"] for r in preds] == [r["path"] for r in test_rows]
    y = np.array([r["label"] == "covid" for r in preds])
    p = np.array([float(r["p_covid"]) for r in preds])
    assert m["auc"] == pytest.approx(metrics.roc_auc(y, p), abs=1e-4)
    flagged = np.array([r["flagged"] == "1" for r in preds])
    assert m["operating_point"]["tp"] == int((flagged & y).sum())
    assert m["operating_point"]["fp"] == int((flagged & ~y).sum())
    assert m["auc"] >= 0.8, "the conftest model separates covid on its held-out split"


def test_eval_probabilities_equal_the_model_on_the_contract(test_eval, trained_checkpoint):
    """Inference path check: same numbers as create_model + load_state_dict + the preprocessing contract."""
    import torch

    from dcx.core.checkpoint import load_checkpoint
    from dcx.core.models import create_model
    from dcx.core.reader import read_unit_gray

    out, _ = test_eval
    card, state, _ = load_checkpoint(trained_checkpoint)
    model = build_model(card, state)  # with the OOD score's buffers that dcx-train fitted
    model.eval()
    rows = _rows(out / "predictions.csv")[:3]
    x = torch.stack([card.preprocess()(read_unit_gray(r["path"])) for r in rows])
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    got = np.array([[float(r[f"p_{c}"]) for c in card.classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_eval_skips_unreadable_images_by_name(trained_run, tmp_path):
    from dcx.train.eval_cli import main

    rows = _rows(trained_run / "splits" / "test.csv")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([r["path"], r["label"]] for r in rows)
        writer.writerow([broken, "normal"])
    result = invoke(main, [trained_run / "best.pt", "--data", manifest, "--out", tmp_path / "e", "--workers", 0])
    assert "broken.png" in result.output and "unreadable" in result.output
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == len(rows) and [u["path"] for u in m["unreadable"]] == [str(broken)]
    preds = _rows(tmp_path / "e" / "predictions.csv")
    assert len(preds) == len(rows) + 1, "every input gets one row"
    assert [r["status"] for r in preds if r["path"] == str(broken)] == ["unreadable"]


def test_eval_user_mistakes_are_one_line_errors(trained_run, synth_archive, tmp_path):
    from dcx.train.eval_cli import main

    ckpt, test_csv = trained_run / "best.pt", trained_run / "splits" / "test.csv"
    foreign = tmp_path / "foreign.csv"
    row = _rows(test_csv)[0]
    foreign.write_text(f"path,label\n{row['path']},tuberculosis\n")
    cases = [
        ([ckpt, "--data", foreign, "--out", tmp_path / "a"], "tuberculosis"),
        ([ckpt, "--data", synth_archive, "--split", "test", "--out", tmp_path / "b"], "no split column"),
        ([ckpt, "--data", test_csv, "--split", "val", "--out", tmp_path / "c"], "no rows of that split"),
    ]
    missing = invoke(main, [tmp_path / "missing.pt", "--data", test_csv, "--out", tmp_path / "d"], expect_exit=2)
    assert "missing.pt' does not exist" in missing.output  # a usage error, before PyTorch loads
    for args, message in cases:
        result = invoke(main, args, expect_exit=1)
        assert result.output.startswith("Error:") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_eval_refuses_to_overwrite_without_force(test_eval, trained_run):
    from dcx.train.eval_cli import main

    out, _ = test_eval
    args = [trained_run / "best.pt", "--data", trained_run / "splits" / "test.csv", "--out", out, "--workers", 0]
    refused = invoke(main, args, expect_exit=1)
    assert "--force" in refused.output
    invoke(main, [*args, "--split", "test", "--force"])
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"
