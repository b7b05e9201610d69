"""``dcx-eval``: score a checkpoint on labelled images and write metrics, tables and plots."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from dcx.core.errors import Command, DcxError
from dcx.core.files import write_json

from .data import SPLITS, read_samples

OUTPUTS = ("metrics.json", "threshold_sweep.md", "predictions.csv", "roc.png", "pr.png", "confusion.png")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, help="Class folders, a CSV manifest (path,label[,split][,patient_id]) "
                                            "or a training run's splits/test.csv.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
@click.option("--split", type=click.Choice([*SPLITS, "all"]), default="all", show_default=True,
              help="Evaluate only the rows of this split (needs a split column); all = every row.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Image-loading processes (default: up to 4).")
@click.option("--force", is_flag=True, help="Overwrite results already in --out.")
def main(checkpoint, data, out, split, batch_size, workers, force):
    """Evaluate CHECKPOINT (a dcx-train best.pt) on labelled images.

    Writes to --out: metrics.json (AUC, average precision, sensitivity and specificity at the
    model card's threshold with 95% Wilson intervals, the threshold sweep, the confusion
    matrix, per-class precision/recall/F1), threshold_sweep.md (the sweep as a table like the
    Deep-COVID paper's), predictions.csv (one row per image, unreadable ones included), and
    roc.png, pr.png, confusion.png. An image counts as positive when p(positive) >= threshold;
    the confusion matrix uses the arg-max class, as the engine's ``predicted`` column does.
    Unreadable images are reported by name and left out of the metrics.

    \b
    Examples:
      dcx-eval runs/r18/best.pt --data runs/r18/splits/test.csv --out runs/r18/eval
      dcx-eval best.pt --data /archive/labelled --out eval/site-b
      dcx-eval best.pt --data labels.csv --split test --out eval/test --force
    """
    if batch_size < 1:
        raise DcxError("--batch-size must be at least 1")
    # PyTorch and matplotlib: loaded once the command line is checked
    from dcx.core.checkpoint import load_checkpoint

    from .evaluate import format_ci, format_metric, predict_samples, summarize, sweep_markdown, write_predictions
    from .plots import plot_confusion, plot_pr, plot_roc

    card, state_dict, _ = load_checkpoint(checkpoint)
    samples = _select(read_samples(data), split, data)
    unknown = sorted({s.label for s in samples} - set(card.classes))
    if unknown:
        raise DcxError(f"{data}: label(s) {', '.join(unknown)} are not classes of this model "
                       f"({', '.join(card.classes)}); relabel or drop those rows")
    out = _prepare_out(Path(out), force)

    result = predict_samples(card, state_dict, samples, batch_size=batch_size, workers=workers)
    for reason in result.reasons.values():
        click.echo(f"skipped unreadable image: {reason}", err=True)
    if not result.readable.any():
        raise DcxError(f"none of the {len(samples)} image(s) in {data} could be read")
    labels = [s.label for s, ok in zip(samples, result.readable) if ok]
    summary = summarize(labels, result.probs, card)
    payload = {"checkpoint": str(Path(checkpoint).resolve()), "model_id": card.model_id, "arch": card.arch,
               "input_size": card.input_size, "data": str(data), "split": split,
               **summary,
               "unreadable": [{"path": str(samples[i].path), "reason": r} for i, r in sorted(result.reasons.items())]}

    write_json(out / "metrics.json", payload)
    (out / "threshold_sweep.md").write_text(sweep_markdown(summary), encoding="utf-8")
    write_predictions(out / "predictions.csv", result, card)
    is_positive = np.array(labels) == card.positive
    p_positive = result.probs[:, card.positive_index]
    plot_roc(out / "roc.png", is_positive, p_positive, threshold=card.threshold, positive=card.positive)
    plot_pr(out / "pr.png", is_positive, p_positive, threshold=card.threshold, positive=card.positive)
    plot_confusion(out / "confusion.png", summary["confusion_matrix"]["counts"], card.classes)

    point = summary["operating_point"]
    click.echo(f"{summary['n']} image(s){f' ({len(result.reasons)} unreadable, skipped)' if result.reasons else ''}: "
               f"{card.positive} AUC {format_metric(summary['auc'])}, AP {format_metric(summary['average_precision'])}, "
               f"accuracy {format_metric(summary['accuracy'])}")
    click.echo(f"at threshold {card.threshold:.4g}: sensitivity {format_metric(point['sensitivity'])} "
               f"{format_ci(point['sensitivity_ci95'])}, specificity {format_metric(point['specificity'])} "
               f"{format_ci(point['specificity_ci95'])}")
    click.echo(f"wrote {', '.join(OUTPUTS)} to {out}")


def _select(samples, split: str, data) -> list:
    if split == "all":
        return samples
    if all(s.split is None for s in samples):
        raise DcxError(f"--split {split}: {data} has no split column; pass a manifest with one "
                       "(a run's splits/<split>.csv) or use --split all")
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise DcxError(f"--split {split}: no rows of that split in {data}")
    return chosen


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise DcxError(f"--out {out} exists and is not a folder")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise DcxError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out
