"""K-fold cross-validation (the protocol of Apostolopoulos & Mpesiana): K ordinary runs.

The labelled images are dealt once into K stratified, patient-grouped folds (``folds.csv``).
Run ``i`` holds fold ``i`` out as its test split and trains on the rest, which it splits into
train and validation as a single run would (validation chooses the best epoch and the
threshold). Fold ``i``'s metrics are measured on the held-out fold at that run's own threshold,
so no fold is scored by a model that saw it or chose its threshold on it.

The checkpoint kept as ``OUT/best.pt`` is the run with the best *validation* AUC (ties: the
lower fold number): choosing by the held-out folds would make their mean optimistic. Every
fold's own ``best.pt`` stays in ``fold-<i>/``.
Each fold is resumable; a finished fold is never trained again.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import click

from dcx.core.checkpoint import load_checkpoint
from dcx.core.errors import DcxError
from dcx.core.files import atomic_path, write_json

from .data import Sample, assign_folds, read_samples, write_manifest
from .evaluate import predict_samples, summarize
from .config import TrainConfig
from .trainer import BEST, LAST, train

PLAN, CONFIG, SUMMARY, FOLD_METRICS = "folds.csv", "folds-config.json", "folds.json", "fold-metrics.json"
REPORTED = ("auc", "sensitivity", "specificity")


def is_folds_run(out: str | Path) -> bool:
    return (Path(out) / PLAN).is_file()


def train_folds(config: TrainConfig, k: int | None, *, resume: bool = False, force: bool = False) -> dict:
    """Train (or continue) all K folds; returns the summary also written to ``OUT/folds.json``."""
    out = Path(config.out)
    if resume:
        config, folds = _load_plan(out, config)
    else:
        folds = _start(config, k, force)
    results = []
    for index, held_out in enumerate(folds, start=1):
        results.append(_fold(config, index, len(folds), held_out))
    summary = _summarize(config, results)
    shutil.copyfile(out / f"fold-{summary['kept']['fold']}" / BEST, out / BEST)
    write_json(out / SUMMARY, summary)
    return summary


def _start(config: TrainConfig, k: int, force: bool) -> list[list]:
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not force:
        raise DcxError(f"{out} is not empty; --resume continues a cross-validation there, --force starts over")
    if force and out.exists():
        shutil.rmtree(out)
    samples = read_samples(config.data)
    if any(s.split for s in samples):
        raise DcxError(f"{config.data} assigns splits; --folds makes its own (drop the split column)")
    folds = assign_folds(samples, k, seed=config.seed)
    out.mkdir(parents=True)
    _write_plan(folds, out / PLAN)
    write_json(out / CONFIG, {**asdict(config), "folds": k})
    return folds


def _load_plan(out: Path, given: TrainConfig) -> tuple[TrainConfig, list[list]]:
    if not is_folds_run(out):
        raise DcxError(f"{out} holds no cross-validation ({PLAN} is missing)")
    saved = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    k = saved.pop("folds")
    config = replace(TrainConfig(**saved), workers=given.workers, device=given.device)
    folds = _read_plan(out / PLAN, k)
    return config, folds


def _write_plan(folds: list[list], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "fold"])
        for index, fold in enumerate(folds, start=1):
            writer.writerows([str(s.path), s.label, s.patient_id or "", index] for s in fold)


def _read_plan(path: Path, k: int | None = None) -> list[list]:
    folds: dict[int, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            sample = Sample(Path(row["path"]), row["label"], None, row["patient_id"] or None)
            folds.setdefault(int(row["fold"]), []).append(sample)
    return [folds.get(i, []) for i in range(1, (k or max(folds)) + 1)]


def _fold(config: TrainConfig, index: int, k: int, held_out: list) -> dict:
    """Run fold ``index`` to its end (or reuse its finished result) and score its held-out fold."""
    fold_out = Path(config.out) / f"fold-{index}"
    done = fold_out / FOLD_METRICS
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    click.echo(f"fold {index}/{k}: {len(held_out)} images held out", err=True)
    manifest = fold_out.parent / f"fold-{index}.csv"
    if not manifest.is_file():
        held = set(held_out)
        others = [s for fold in _read_plan(fold_out.parent / PLAN) for s in fold if s not in held]
        write_manifest(others + [replace(s, split="test") for s in held_out], manifest)
    fold_config = replace(config, data=str(manifest), out=str(fold_out), test_fraction=0.0)
    best = train(fold_config, resume=(fold_out / LAST).is_file(), force=True)
    card, state_dict, _ = load_checkpoint(best)
    predictions = predict_samples(card, state_dict, held_out, workers=config.workers)
    labels = [s.label for s, ok in zip(held_out, predictions.readable) if ok]
    test = summarize(labels, predictions.probs, card)
    result = {"fold": index, "n": test["n"], "unreadable": len(predictions.reasons),
              "threshold": card.threshold, "threshold_policy": card.threshold_policy,
              "validation_auc": card.metrics["validation"]["auc"], "auc": test["auc"],
              "sensitivity": test["operating_point"]["sensitivity"],
              "specificity": test["operating_point"]["specificity"], "operating_point": test["operating_point"]}
    write_json(done, result)
    return result


def _summarize(config: TrainConfig, results: list[dict]) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in results if r[key] is not None and not math.isnan(r[key])]
        return {"mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None, "n_folds": len(values)}

    kept = max(results, key=lambda r: (_finite(r["validation_auc"]), -r["fold"]))
    return {"folds": len(results), "arch": config.arch, "seed": config.seed,
            "metrics_at_each_folds_threshold": {key: spread(key) for key in REPORTED},
            "std": "sample standard deviation over folds (n-1)",
            "per_fold": results,
            "kept": {"fold": kept["fold"], "checkpoint": BEST,
                     "rule": "highest validation AUC of its own run (held-out folds are not used to choose)"}}


def _finite(x) -> float:
    return x if x is not None and not math.isnan(x) else -math.inf


def describe(summary: dict) -> str:
    m = summary["metrics_at_each_folds_threshold"]

    def fmt(key: str) -> str:
        mean, std = m[key]["mean"], m[key]["std"]
        return f"{key} {mean:.3f} ± {std:.3f}" if mean is not None and std is not None else f"{key} n/a"

    return (f"{summary['folds']}-fold cross-validation ({summary['arch']}): "
            f"{', '.join(fmt(k) for k in REPORTED)} (mean ± sd); kept fold {summary['kept']['fold']} as best.pt")
