"""``dcx-train``: fine-tune a registry model on labelled chest X-rays; see :mod:`dcx.train.trainer`."""
from __future__ import annotations

import click

from dcx.core.devices import DEVICE_CHOICES, check_device
from dcx.core.errors import Command, DcxError
from dcx.core.registry import list_models

from .config import TrainConfig, default_workers

_DEFAULTS = TrainConfig(data="", out="")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", help="Class folders (DIR/<class>/<images>, or DIR/manifest.csv) or a CSV manifest "
                             "path,label[,split][,patient_id].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to create (or resume).")
@click.option("--arch", type=click.Choice(list_models()), default=_DEFAULTS.arch, show_default=True)
@click.option("--weights", default=_DEFAULTS.weights, show_default=True,
              help="imagenet (torchvision download or $TORCH_HOME cache), none (from scratch), "
                   "or PATH to a local torchvision weights file for air-gapped machines.")
@click.option("--freeze-backbone", is_flag=True, help="Train the classifier only (the Deep-COVID setting).")
@click.option("--epochs", type=int, default=_DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=float, default=None, help="Adam learning rate, cosine-decayed per step "
                                                     "[default: 1e-4 with pretrained weights, 1e-3 from scratch].")
@click.option("--img-size", type=int, default=_DEFAULTS.img_size, show_default=True,
              help="Square model input; films are letterboxed, never stretched.")
@click.option("--positive", default=_DEFAULTS.positive, show_default=True,
              help="Class the screening threshold is for; its probability is softmax[:, positive].")
@click.option("--threshold-policy", type=click.Choice(["sensitivity", "youden"]),
              default=_DEFAULTS.threshold_policy, show_default=True,
              help="How the operating threshold is chosen on the validation split.")
@click.option("--target-sensitivity", type=float, default=_DEFAULTS.target_sensitivity, show_default=True,
              help="For --threshold-policy sensitivity: the highest threshold reaching this sensitivity.")
@click.option("--ood-rejection-rate", type=float, default=_DEFAULTS.ood_rejection_rate, show_default=True,
              help="Share of validation images the out-of-distribution threshold marks unusual.")
@click.option("--val-fraction", type=float, default=_DEFAULTS.val_fraction, show_default=True)
@click.option("--test-fraction", type=float, default=_DEFAULTS.test_fraction, show_default=True,
              help="Held out for dcx-eval; never seen in training or threshold choice.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Splits, initialisation, shuffling.")
@click.option("--workers", type=int, default=None, help=f"Image loader processes [default: min(4, CPUs) = {default_workers()}].")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              callback=lambda ctx, param, value: check_device(value),
              help="gpu: an NVIDIA GPU through CUDA (cuda is the same); auto picks it when present (with bf16/fp16 mixed precision); CPU works, slowly.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt with its saved settings "
                                             "(only --workers and --device are taken from this command).")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="K-fold cross-validation: K runs, each holding one stratified, patient-grouped fold out "
                   "as its test set; OUT/folds.json has the mean and spread of AUC, sensitivity and "
                   "specificity, OUT/best.pt the fold with the best validation AUC.")
@click.option("--force", is_flag=True, help="Start over in an --out that already holds a run.")
def main(data, out, resume, force, folds, **options):
    """Train a classifier and choose its screening threshold.

    \b
    Examples:
      dcx-synth /tmp/s --n 240 --seed 1
      dcx-train --data /tmp/s --arch resnet18 --img-size 128 --epochs 3 --weights none --out /tmp/r
      dcx-train --data archive/manifest.csv --arch densenet121 --epochs 20 --out runs/dn121
      dcx-train --out runs/dn121 --resume          # after Ctrl-C or a crash
      dcx-train --data archive --arch mobilenet_v2 --folds 10 --out runs/mnv2-cv   # cross-validation

    \b
    Splits are stratified by label, grouped by patient_id when the manifest has one, and saved
    as OUT/splits/{train,val,test}.csv. Each epoch validates (AUC, sensitivity, specificity of
    --positive); best.pt keeps the best validation AUC, last.pt the latest state. At the end the
    threshold is chosen on the validation split and written into best.pt's model card (p >=
    threshold means positive). Class imbalance is handled with class-weighted cross-entropy.
    Augmentation: random crop (80-100% of the film, aspect kept), +-7 degree rotation, mild
    brightness/contrast; no flips. An unreadable or corrupt image is reported by name (on
    stderr and in OUT/train.log) and skipped; the run goes on. Ctrl-C saves last.pt.
    Progress goes to stderr; the summary to stdout.
    """
    if not resume and not data:
        raise DcxError("--data is required (or --resume to continue the run in --out)")
    config = TrainConfig(data=data or "", out=out, **options)
    # PyTorch: loaded once the command line is checked
    from dcx.core.checkpoint import load_checkpoint

    from . import folds as folds_mod
    from .trainer import TrainingInterrupted, train

    try:
        if folds or (resume and folds_mod.is_folds_run(out)):
            summary = folds_mod.train_folds(config, folds, resume=resume, force=force)
            click.echo(f"{out}/{folds_mod.SUMMARY}: {folds_mod.describe(summary)}")
            return
        best = train(config, resume=resume, force=force)
    except TrainingInterrupted:  # the trainer has said where the state is and how to resume
        raise SystemExit(130) from None
    card, _, _ = load_checkpoint(best)
    v = card.metrics["validation"]
    click.echo(f"{best}: {card.arch}, val AUC {v['auc']:.4f}, threshold {card.threshold:.4g} "
               f"({card.threshold_policy}): sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}")
