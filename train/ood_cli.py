"""``dcx-fit-ood``: fit the out-of-distribution score of an existing checkpoint (see :mod:`dcx.train.ood`)."""
from __future__ import annotations

from pathlib import Path

import click

from dcx.core.devices import DEVICE_CHOICES, check_device, torch_device
from dcx.core.errors import Command, DcxError
from dcx.core.files import write_json

from .config import DEFAULT_REJECTION_RATE
from .data import read_samples


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--train", "train_split", type=click.Path(dir_okay=False),
              help="Training split manifest [default: splits/train.csv beside CHECKPOINT].")
@click.option("--val", "val_split", type=click.Path(dir_okay=False),
              help="Validation split manifest [default: splits/val.csv beside CHECKPOINT].")
@click.option("--rejection-rate", type=float, default=DEFAULT_REJECTION_RATE, show_default=True,
              help="Share of validation images the threshold marks out of distribution.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the fitted checkpoint here [default: CHECKPOINT].")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              callback=lambda ctx, param, value: check_device(value))
def main(checkpoint, train_split, val_split, rejection_rate, out, batch_size, device):
    """Fit (or refit) the out-of-distribution score of CHECKPOINT on its training split and set
    its threshold on the validation split; the weights and the screening threshold are kept.

    \b
    Example (a run folder of dcx-train, made before the OOD score existed):
      dcx-fit-ood runs/dn121/best.pt && dcx-export runs/dn121/best.pt --out m.onnx
    """
    from dcx.core.checkpoint import build_model, load_checkpoint, save_checkpoint  # PyTorch: loaded for work

    from .ood import fit_ood

    checkpoint = Path(checkpoint)
    card, state_dict, _ = load_checkpoint(checkpoint)
    splits = checkpoint.parent / "splits"
    train = read_samples(train_split or splits / "train.csv")
    val = read_samples(val_split or splits / "val.csv")
    if not train or not val:
        raise DcxError("the OOD score needs training and validation images (--train / --val)")
    model = build_model(card, state_dict, checkpoint)
    target = torch_device(device)
    card.ood = fit_ood(model.to(target), train, val, card.classes, size=card.input_size, device=target,
                       batch_size=batch_size, rejection_rate=rejection_rate)
    out = Path(out) if out else checkpoint
    save_checkpoint(out, {k: v.detach().cpu() for k, v in model.state_dict().items()}, card)
    if (out.parent / "card.json").is_file() and out.name == "best.pt":
        write_json(out.parent / "card.json", card.to_dict())
    o = card.ood
    click.echo(f"fitted on {o['n_train']} training images; threshold {o['threshold']:.4g} marks "
               f"{o['val_rejected']:.1%} of {o['n_val']} validation images out of distribution; wrote {out}")
