"""K-fold cross-validation: stratified, patient-grouped folds; K runs; mean and spread; resumable."""
import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import invoke
from dcx.train.data import Sample, assign_folds
from dcx.core.errors import DcxError
from dcx.train.train_cli import main


def test_folds_are_disjoint_stratified_and_keep_patients_together():
    samples = [Sample(Path(f"/x/{label}{i}.png"), label, None, f"p{label}{i // 2}")
               for label, n in (("covid", 20), ("normal", 40), ("pneumonia", 30)) for i in range(n)]
    folds = assign_folds(samples, 5, seed=3)
    assert sorted(s.path for f in folds for s in f) == sorted(s.path for s in samples)
    for label, n in (("covid", 20), ("normal", 40), ("pneumonia", 30)):
        per_fold = [Counter(s.label for s in f)[label] for f in folds]
        assert max(per_fold) - min(per_fold) <= 2 and sum(per_fold) == n
    fold_of = {s.path: i for i, f in enumerate(folds) for s in f}
    for s in samples:
        partner = [t for t in samples if t.patient_id == s.patient_id]
        assert {fold_of[t.path] for t in partner} == {fold_of[s.path]}
    assert assign_folds(samples, 5, seed=3) == folds
    with pytest.raises(DcxError, match="at least 2"):
        assign_folds(samples, 1)


FAST = ["--arch", "resnet18", "--weights", "none", "--img-size", 32, "--epochs", 1, "--batch-size", 16,
        "--workers", 0, "--seed", 0]


def test_three_folds_report_mean_and_spread_and_resume(synth_archive, tmp_path):
    out = tmp_path / "cv"
    result = invoke(main, ["--data", synth_archive, "--folds", 3, "--out", out, *FAST])
    assert "3-fold cross-validation" in result.output and "±" in result.output
    summary = json.loads((out / "folds.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    held_out = sum(f["n"] + f["unreadable"] for f in summary["per_fold"])
    assert held_out == sum(1 for line in (out / "folds.csv").read_text().splitlines()[1:] if line)
    for key in ("auc", "sensitivity", "specificity"):
        spread = summary["metrics_at_each_folds_threshold"][key]
        values = [f[key] for f in summary["per_fold"]]
        assert spread["mean"] == pytest.approx(sum(values) / 3)
        assert spread["std"] is not None and spread["std"] >= 0
    kept = summary["kept"]["fold"]
    assert (out / "best.pt").read_bytes() == (out / f"fold-{kept}" / "best.pt").read_bytes()
    aucs = {f["fold"]: f["validation_auc"] for f in summary["per_fold"]}
    assert aucs[kept] == max(aucs.values())

    # A fold that did not finish is trained again on --resume; finished folds are not.
    finished = (out / "fold-1" / "fold-metrics.json").stat().st_mtime_ns
    (out / "fold-3" / "fold-metrics.json").unlink()
    again = invoke(main, ["--out", out, "--resume", "--workers", 0])
    assert "fold 3/3" in again.output and "fold 1/3" not in again.output
    assert (out / "fold-1" / "fold-metrics.json").stat().st_mtime_ns == finished
    assert json.loads((out / "folds.json").read_text())["per_fold"][2]["fold"] == 3


def test_folds_refuse_a_manifest_with_its_own_splits(tmp_path, synth_archive):
    with open(synth_archive / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n" + "".join(
        f"{synth_archive / r['path']},{r['label']},train\n" for r in rows))
    result = invoke(main, ["--data", manifest, "--folds", 3, "--out", tmp_path / "cv", *FAST], expect_exit=1)
    assert result.output.startswith("Error:") and "split column" in result.output
