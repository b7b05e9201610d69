"""``dcx-report``: one self-contained HTML page of a screening run, with drift across nights."""
from __future__ import annotations

from pathlib import Path

import click

from dcx.core.errors import Command, DcxError
from dcx.core.files import atomic_path

from .nights import drift_by_night, night_record, remember, validation_histogram
from .page import render
from .run_data import load_run, read_summary, report_path_for


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write. Default: <results stem>.report.html beside the table.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Run summary JSON. Default: <results stem>.summary.json beside the table.")
@click.option("--heatmaps", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="The folder dcx-infer wrote heatmaps to (rows name their heatmap file).")
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path), metavar="NIGHTS.jsonl",
              help="Night log: this run is added once (a rebuilt report does not add it twice), and every "
                   "night in it is drawn in the drift view.")
@click.option("--previous", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="SUMMARY",
              help="Summary JSON of an earlier night to add to the drift view (repeatable).")
@click.option("--max-pictures", type=click.IntRange(0, 100_000), default=200, show_default=True,
              help="Flagged (and out-of-distribution) images shown with pictures, most probable first; "
                   "the others are in the table.")
@click.option("--thumb-px", type=click.IntRange(32, 512), default=128, show_default=True,
              help="Longer side of each thumbnail.")
def main(results, out, summary, heatmaps, history, previous, max_pictures, thumb_px):
    """Write one HTML page about a dcx-infer run: flagged images first (thumbnail and heatmap,
    UIDs), the score distribution with the threshold, counts by status, format, transfer
    syntax and reason, out-of-distribution images apart, run metadata, the score drift of
    each night against the model's validation split (PSI, KS), and every row in a paged,
    searchable table.

    The page is self-contained (inline style and script, pictures as data: URIs) and loads
    nothing from the network: it opens on an air-gapped workstation and can be mailed.
    Patient names appear only if the table has them (dcx-infer --include-phi).

    \b
    Examples:
      dcx-report nightly.csv --heatmaps heat/
      dcx-report nightly.parquet --heatmaps heat/ --history reports/nights.jsonl --out reports/$(date +%F).html
      dcx-report results.csv --previous old/2026-11-30.summary.json --previous old/2026-11-29.summary.json
    """
    if heatmaps is not None and not heatmaps.is_dir():
        raise DcxError(f"--heatmaps folder not found: {heatmaps}")
    run = load_run(results, summary)
    records = [r for r in (night_record(read_summary(p)) for p in previous) if r]
    current = night_record(run.summary) if run.summary else None
    if history is not None:
        records += remember(history, current) if current else []
    elif current:
        records.append(current)
    nights = drift_by_night(records, validation_histogram(run.summary), run.summary.get("model_id"))
    page = render(run, heatmaps=heatmaps, nights=nights, max_pictures=max_pictures, thumb_px=thumb_px)
    out = out or report_path_for(results)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    flagged = sum(bool(r.get("flagged")) for r in run.rows)
    warned = " DRIFT WARNING" if nights and nights[-1].warning else ""
    click.echo(f"{len(run.rows)} rows, {flagged} flagged, {len(nights)} night(s){warned}: {out} "
               f"({out.stat().st_size / 1e6:.1f} MB)")
