"""Accuracy parity: does the engine make the screening decisions the PyTorch reference makes?

The claim users rely on is "what dcx-eval measured for this checkpoint is what dcx-infer
delivers". So the two sides are the two real paths, end to end:

- **reference**: the checkpoint in PyTorch eager FP32 through the evaluation path of
  training (the reference reader :func:`dcx.core.reader.read_unit_gray`, the
  preprocessing contract, :func:`dcx.train.trainer.predict`);
- **engine**: ``dcx-infer --engine E`` itself over the same files (DALI decoding, the backend
  at its precision), read back from its result table.

Any gap is the sum of two causes, so the checkpoint is also run through ``dcx-infer`` (the
engine's decoder with the PyTorch backend) unless the engine *is* the checkpoint: engine
vs that run isolates the backend's numerics (FP16/INT8 rounding; FP32 should agree to about
1e-6), reference vs that run isolates decoding and resizing.

The gate is on what a screening programme sees: sensitivity and specificity at each side's
own card threshold (they coincide for an export) and per-image agreement of the flag.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from dcx.core import compare, metrics
from dcx.core.errors import DcxError
from dcx.train.data import read_samples
from dcx.train.loading import ImageDataset, collate_skipping
from dcx.train.trainer import predict

from . import report as rep
from .engine_runs import read_results, run_infer
from .peer_baseline import load_reference


def measure_parity(reference: Path, engine: Path, data: Path, workdir: Path, *, tolerance: float = 0.01,
                   min_agreement: float = 0.99, max_delta_p: float | None = None, decompose: bool = True,
                   batch_size: int = 32, log=lambda message: None) -> tuple[dict, list[dict]]:
    """Score ``data`` both ways; (report, per-image rows)."""
    samples = read_samples(data)
    files = [os.path.abspath(s.path) for s in samples]
    listing = workdir / "files.txt"
    listing.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")

    log(f"engine: dcx-infer --engine {engine}")
    engine_run = run_infer(engine, workdir / "engine", files_from=listing, batch_size=batch_size)
    via_pt = None
    if decompose and engine.suffix.lower() != ".pt":
        log(f"decomposition: dcx-infer --engine {reference}")
        via_pt = run_infer(reference, workdir / "engine-pytorch", files_from=listing, batch_size=batch_size).out
    return gate_run(reference, samples, engine, engine_run, data, tolerance=tolerance, min_agreement=min_agreement,
                    max_delta_p=max_delta_p, via_pytorch=via_pt, batch_size=batch_size, log=log)


def gate_run(reference: Path, samples: list, engine: Path, engine_run, data: Path, *, tolerance: float = 0.01,
             min_agreement: float = 0.99, max_delta_p: float | None = None, via_pytorch: Path | None = None,
             batch_size: int = 32, log=lambda message: None) -> tuple[dict, list[dict]]:
    """The gates for a finished ``dcx-infer`` run (``engine_run``) over labelled ``samples``: the
    reference scores them now; (report, per-image rows). ``via_pytorch``: the result table of
    the checkpoint run through dcx-infer, to split the gap into backend and decoding."""
    log(f"reference: {reference} over {len(samples)} labelled files")
    card, ref_p = _reference_scores(reference, samples, batch_size)
    files = [os.path.abspath(s.path) for s in samples]
    engine_p, engine_threshold = _engine_scores(engine_run.out, card.positive, files)
    sides = {"reference": (ref_p, card.threshold), "engine": (engine_p, engine_threshold)}
    via_pt = None if via_pytorch is None else _engine_scores(via_pytorch, card.positive, files)[0]

    y = np.array([s.label == card.positive for s in samples])
    if y.all() or not y.any():
        raise DcxError(f"{data} needs images of the positive class {card.positive!r} and of other classes")
    both = ~np.isnan(ref_p) & ~np.isnan(engine_p)
    report = {
        "kind": "parity",
        "data": {"path": os.fspath(data), "files": len(files), "positives": int(y.sum()),
                 "negatives": int((~y).sum()), "scored_by_both": int(both.sum()),
                 "reference_failed": int(np.isnan(ref_p).sum()), "engine_failed": int(np.isnan(engine_p).sum())},
        "reference": {"checkpoint": os.fspath(reference), "path": "PyTorch eager FP32, reference reader",
                      **compare.screening(y[both], ref_p[both], card.threshold)},
        "engine": {"path": os.fspath(engine), "backend": engine_run.summary["backend"],
                   "precision": engine_run.summary["precision"], "device": engine_run.summary["device"],
                   **compare.screening(y[both], engine_p[both], engine_threshold)},
        "agreement": compare.agreement(ref_p, card.threshold, engine_p, engine_threshold),
    }
    if via_pt is not None:
        report["decomposition"] = {
            "backend_only": compare.delta_p(via_pt, engine_p),   # same decoder, PyTorch vs the engine's backend
            "decode_only": compare.delta_p(ref_p, via_pt),       # same PyTorch model, reference reader vs engine decoder
        }
    report["deltas"] = compare.deltas(report["reference"], report["engine"])
    report["gates"] = compare.gates(report["deltas"], report["agreement"], tolerance=tolerance,
                                    min_agreement=min_agreement, max_delta_p=max_delta_p)
    report["passed"] = all(g["passed"] for g in report["gates"])
    rows = [{"path": f, "label": s.label, "positive": int(t), "p_reference": _cell(r), "p_engine": _cell(e),
             **({"p_engine_pytorch": _cell(v)} if via_pt is not None else {}),
             "abs_delta_p": _cell(abs(r - e))}
            for f, s, t, r, e, v in zip(files, samples, y, ref_p, engine_p,
                                         via_pt if via_pt is not None else [None] * len(files))]
    report["roc"] = {name: _roc(y[both], p[both]) for name, (p, _) in sides.items()}
    return report, rows


def _reference_scores(checkpoint: Path, samples, batch_size: int):
    """Positive-class probability per sample (NaN where the reference reader refused the file)."""
    import torch
    from torch.utils.data import DataLoader

    card, model = load_reference(checkpoint)
    labels = sorted({s.label for s in samples})
    loader = DataLoader(ImageDataset(samples, labels, card.preprocess()), batch_size=batch_size,
                        collate_fn=collate_skipping)
    probs, _, _, bad = predict(model, loader, torch.device("cpu"), None)
    out = np.full(len(samples), np.nan)
    good = sorted(set(range(len(samples))) - {u.index for u in bad})
    if good:
        out[good] = probs[:, card.positive_index]
    return card, out


def _engine_scores(results: Path, positive: str, files: list[str]) -> tuple[np.ndarray, float]:
    """p_positive per file from a dcx-infer result table (NaN for error / skipped rows)."""
    by_path = {os.path.abspath(row["path"]): row for row in read_results(results)}
    missing = [f for f in files if f not in by_path]
    if missing:
        raise DcxError(f"dcx-infer wrote no row for {len(missing)} file(s), e.g. {missing[0]}")
    first = next(iter(by_path.values()))
    column = f"p_{positive}"  # the reference's positive class, whatever the engine's card calls positive
    if column not in first:
        raise DcxError(f"the engine's model has no class {positive!r}: it cannot be compared with the reference")
    p = np.array([float(by_path[f][column]) if by_path[f]["status"] == "ok" else np.nan for f in files])
    return p, float(first["threshold"])


def _roc(y: np.ndarray, p: np.ndarray) -> dict:
    fpr, tpr, _ = metrics.roc_curve(y, p)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _cell(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


def write_per_image(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_roc(report: dict, path: Path) -> None:
    """Both ROC curves on one plot, each with its operating point at its card threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, style in (("reference", "-"), ("engine", "--")):
        side, curve = report[name], report["roc"][name]
        label = "PyTorch reference" if name == "reference" else f"engine ({side['backend']} {side['precision']})"
        line, = ax.plot(curve["fpr"], curve["tpr"], style, label=f"{label}, AUC {side['auc']:.4f}")
        ax.plot(1 - side["specificity"], side["sensitivity"], "o", color=line.get_color(),
                label=f"{label} at threshold {side['threshold']:.3g}")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, positive class; {report['data']['scored_by_both']} images")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(report: dict) -> str:
    ref, eng, d = report["reference"], report["engine"], report["deltas"]
    pct = lambda v: rep.fmt(100 * v, 1) if v is not None else "–"  # noqa: E731
    rows = [[name, pct(side["sensitivity"]), pct(side["specificity"]), rep.fmt(side["auc"], 4),
             pct(side["accuracy"]), f"{side['threshold']:.4g}"]
            for name, side in (("PyTorch reference (FP32 eager)", ref),
                               (f"engine: {eng['backend']} {eng['precision']}", eng))]
    rows.append(["delta (engine - reference)", pct(d["sensitivity"]), pct(d["specificity"]),
                 rep.fmt(d["auc"], 4), pct(d["accuracy"]), ""])
    agree = report["agreement"]
    lines = [f"### Parity: {Path(eng['path']).name} vs {Path(ref['checkpoint']).name} on "
             f"{report['data']['scored_by_both']} images of {report['data']['path']}", "",
             rep.table(["", "sensitivity %", "specificity %", "AUC", "accuracy %", "threshold"], rows), "",
             f"- per-image flag agreement {agree['flag_agreement']:.2%} ({agree['disagreements']} disagreements); "
             f"|delta p| max {agree['max_abs_delta_p']:.2e}, mean {agree['mean_abs_delta_p']:.2e}"]
    if "decomposition" in report:
        dec = report["decomposition"]
        lines.append(f"- of which backend numerics (same decoder, PyTorch vs {eng['backend']} {eng['precision']}): "
                     f"max |delta p| {dec['backend_only']['max_abs_delta_p']:.2e}; decoding (reference reader vs "
                     f"engine decoder, same PyTorch model): max {dec['decode_only']['max_abs_delta_p']:.2e}")
    lines.append(f"- failed to score: reference {report['data']['reference_failed']}, engine "
                 f"{report['data']['engine_failed']}")
    lines += ["", "Gates: " + "; ".join(
        f"{g['name']} {g['value']:.4g} {'<=' if 'agreement' not in g['name'] else '>='} {g['limit']:g} "
        f"{'PASS' if g['passed'] else 'FAIL'}" for g in report["gates"]),
        "", f"**{'PASSED' if report['passed'] else 'FAILED'}**", ""]
    return "\n".join(lines)
