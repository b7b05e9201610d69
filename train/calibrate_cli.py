"""``dcx-calibrate``: a site's own operating threshold for a model, from its labelled sample."""
from __future__ import annotations

from pathlib import Path

import click

from dcx.core.errors import Command, DcxError
from dcx.core.site import write_site

from .calibrate import INTERVAL, calibrate
from .data import data_fingerprint, read_samples


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, help="The site's labelled images: class folders or a CSV manifest "
                                            "(path,label[,split][,patient_id]), as dcx-eval takes.")
@click.option("--target-sensitivity", type=float, help="Highest threshold whose sensitivity on the sample is "
                                                       "at least this (the paper's operating point: 0.98).")
@click.option("--youden", is_flag=True, help="Threshold maximising sensitivity + specificity - 1 instead.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Site file to write.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Image-loading processes (default: up to 4).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
def main(model, data, target_sensitivity, youden, out, batch_size, workers, force):
    """Choose the operating threshold of MODEL (a dcx-train checkpoint) on a site's own
    labelled images and write a site file that `dcx-infer --site` applies.

    The site file names the model id; dcx-infer refuses it for another model. Every artefact
    exported from the checkpoint (ONNX, FP16, INT8, TensorRT plan) carries the same model
    card and id, so one site file serves them all. Sensitivity and specificity at the new
    threshold (and at the card's, for comparison) come with 95% Wilson score intervals; they
    are in-sample, so hold the lower bound against the target. Default rule:
    --target-sensitivity 0.98.

    \b
    Examples:
      dcx-calibrate runs/r18/best.pt --data /site/labelled --out site.json
      dcx-calibrate best.pt --data site-labels.csv --youden --out site.json --force
      dcx-infer --engine densenet.plan /archive --site site.json
    """
    if youden and target_sensitivity is not None:
        raise click.UsageError("--target-sensitivity and --youden contradict each other")
    if not youden and target_sensitivity is None:
        target_sensitivity = 0.98
    if out.exists() and not force:
        raise DcxError(f"{out} exists; pass --force to overwrite it")
    from dcx.core.checkpoint import load_checkpoint  # PyTorch: loaded once the command line is checked

    from .evaluate import format_ci, format_metric, predict_samples

    card, state_dict, _ = load_checkpoint(model)
    samples = read_samples(data)
    unknown = sorted({s.label for s in samples} - set(card.classes))
    if unknown:
        raise DcxError(f"{data}: label(s) {', '.join(unknown)} are not classes of this model "
                       f"({', '.join(card.classes)}); relabel or drop those rows")

    result = predict_samples(card, state_dict, samples, batch_size=batch_size, workers=workers)
    for reason in result.reasons.values():
        click.echo(f"skipped unreadable image: {reason}", err=True)
    labels = [s.label for s, ok in zip(samples, result.readable) if ok]
    source = {"data": str(data), "data_fingerprint": data_fingerprint(samples), "unreadable": len(result.reasons),
              "checkpoint": str(Path(model).resolve())}
    site = calibrate(card, labels, result.probs[:, card.positive_index], target_sensitivity=target_sensitivity,
                     youden=youden, source=source)
    write_site(out, site)

    c = site.calibration
    click.echo(f"{c['n']} image(s) ({c['positives']} {card.positive}, {c['negatives']} other); "
               f"intervals: {INTERVAL}, in-sample")
    for name, threshold, point in (("site", site.threshold, c["site_threshold"]),
                                   ("card", card.threshold, c["card_threshold"])):
        click.echo(f"{name} threshold {threshold:.4g}: sensitivity {format_metric(point['sensitivity'])} "
                   f"{format_ci(point['sensitivity_ci95'])}, specificity {format_metric(point['specificity'])} "
                   f"{format_ci(point['specificity_ci95'])}")
    click.echo(f"wrote {out} for model {site.model_id} ({site.policy}); use: dcx-infer --site {out} ...")
