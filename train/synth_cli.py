"""``dcx-synth``: write a labelled archive of synthetic chest radiographs."""
from __future__ import annotations

import sys
import time

import click

from dcx.core.errors import Command

from .synth import FORMATS, PATTERNS, write_archive


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, default=300, show_default=True, help="Number of images, split evenly over the classes.")
@click.option("--classes", default=",".join(PATTERNS), show_default=True,
              help=f"Comma-separated classes, any of {', '.join(PATTERNS)}.")
@click.option("--size", type=int, default=512, show_default=True, help="Image side in pixels.")
@click.option("--formats", default="png", show_default=True,
              help=f"Comma-separated file formats cycled over the images: {', '.join(FORMATS)}.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and options, same bytes.")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT (replaces earlier dcx-synth output).")
def main(out, n, classes, size, formats, seed, force):
    """Write synthetic chest radiographs to OUT/<class>/ with OUT/manifest.csv.

    Phantom PA films (body, lungs, ribs, heart, diaphragm, noise, random pose) where
    covid = bilateral peripheral lower-zone ground-glass opacities, pneumonia = one lobar
    consolidation, normal = neither. Lesion masks go to OUT/masks.npz (keyed by the manifest's
    mask column); one patient in three has two films. No real patient data.

    The manifest has columns path,label,patient_id,format,variant,transfer_syntax,mask with
    paths relative to OUT. DICOM files cycle through explicit VR little endian 12-bit,
    MONOCHROME1, JPEG baseline, JPEG 2000 lossless and RLE lossless.

    \b
    Examples:
      dcx-synth data/synth                           # 300 PNGs at 512 px
      dcx-synth data/mixed --n 90 --formats png,jpg,dcm --size 256
      dcx-synth /tmp/s --n 240 --seed 1 && dcx-train --data /tmp/s ...
    """
    started = time.monotonic()
    args = dict(n=n, classes=_csv_list(classes), size=size, formats=_csv_list(formats), seed=seed, force=force)
    if sys.stderr.isatty():
        with click.progressbar(length=n, label="phantoms", file=sys.stderr) as bar:
            manifest = write_archive(out, **args, on_image=lambda: bar.update(1))
    else:
        manifest = write_archive(out, **args)
    click.echo(f"wrote {n} images to {out} in {time.monotonic() - started:.1f} s; manifest: {manifest}")
