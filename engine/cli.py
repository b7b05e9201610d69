"""``dcx-infer``: screen an archive of chest radiographs, one result row per file.

The module imports nothing that loads PyTorch (2 s): ``--help`` and a bad command line answer at
once; the run's modules (:mod:`.run`, :mod:`.scoring`, :mod:`.ray_runner`, :mod:`.backends`) are
imported when it starts, after the command line has been checked.
"""
from __future__ import annotations

import re
from pathlib import Path
import tempfile
from urllib.parse import urlsplit

import click

from dcx.core.devices import DEVICE_CHOICES, check_device, gpu_available
from dcx.core.errors import Command, DcxError
from dcx.core.files import usable_cores
from dcx.core.site import read_site

from . import interrupts
from .dicomweb import ENV_PASSWORD, ENV_TOKEN, ENV_USER, DicomWebClient, DicomWebSource, Query, is_dicomweb_url
from .lock import OutputLock
from .memory import imports_frozen, limit_malloc_arenas
from .results import FORMATS
from .shard import SHARD, SHARD_HELP

#: Exit codes besides 0 (all scored or skipped), 1 (DcxError) and 2 (usage); see the help text.
EXIT_FILE_ERRORS, EXIT_OUT_OF_DISTRIBUTION, EXIT_INTERRUPTED = 3, 4, 130
NO_OOD_NOTICE = ("notice: this model has no out-of-distribution score (trained before dcx had one), so ood_score "
                 "and in_distribution are empty and every image is taken as one it was trained for; "
                 "fit one with dcx-fit-ood CHECKPOINT and export again")

_RAY_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.\-]+:\d+|\[[0-9a-fA-F:]+\]:\d+)$")
RAY_HELP = ("Run on Ray: a bare --ray (put it after ARCHIVE, or write --ray=local) starts a Ray "
            "instance on this machine; 'auto' joins this machine's cluster; HOST:PORT or "
            "ray://HOST:PORT a remote one. Writes a folder of Parquet parts named by --out "
            "(default format parquet). Needs pip install 'dcx[ray]'.")


def parse_address(value: str) -> str:
    """Check a ``--ray`` value; an archive path swallowed as the address gets a clear hint."""
    if _RAY_ADDRESS.match(value):
        return value
    raise DcxError(f"--ray {value!r} is not a Ray address (local, auto, HOST:PORT or ray://HOST:PORT); "
                   "for a local Ray instance put --ray after ARCHIVE, or write --ray=local", exit_code=2)


def _default_decode_threads() -> int:
    return min(8, usable_cores())


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("archive", required=False)
@click.option("--engine", "engine", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model file: .plan/.engine (TensorRT), .onnx (ONNX Runtime, or OpenVINO when exported with "
                   "--target openvino) or .pt (dcx-train checkpoint).")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Result table. Default: ./<archive name>.dcx.<format> in the current directory.")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format. Default: from the --out suffix, else csv. Parquet needs pyarrow.")
@click.option("--batch-size", type=click.IntRange(1, 4096), show_default="16 on CPU, 64 on a GPU",
              help="Images per inference batch (also the decode batch). On a CPU, 16 is as fast as 32 "
                   "and holds about 500 MiB less.")
@click.option("--decode-threads", default=_default_decode_threads(), show_default="CPUs, at most 8",
              type=click.IntRange(1, 256), help="Threads decoding images.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICE_CHOICES),
              callback=lambda ctx, param, value: check_device(value),
              help="Where to decode and infer; auto uses the GPU when one is visible.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Score only matching files (repeatable). A pattern without '/' matches the file "
                   "name at any depth, one with '/' the path relative to ARCHIVE.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out matching files or directories (repeatable; same rules as --include).")
@click.option("--files-from", "files_from", metavar="LIST",
              help="Score the paths listed in LIST, one per line ('-' = standard input), relative to "
                   "ARCHIVE when given; listed directories are walked.")
@click.option("--state", "state", type=click.Path(path_type=Path),
              help="State database of finished rows. Default: <out stem>.state.sqlite beside the output.")
@click.option("--no-state", is_flag=True, help="Keep no state: score every file, no resume.")
@click.option("--heatmaps", type=click.Path(path_type=Path), metavar="DIR",
              help="Write a class-activation heatmap PNG of every flagged image into DIR "
                   "(named by a hash of the path; the 'heatmap' column links it).")
@click.option("--include-phi", is_flag=True,
              help="Add patient_name and patient_id columns from DICOM headers (off by default).")
@click.option("--series-rules/--no-series-rules", default=False, show_default=True,
              help="Score only DICOM chest radiographs (Modality CR/DX, ViewPosition PA/AP, "
                   "BodyPartExamined CHEST); other series become 'skipped' rows.")
@click.option("--summary", type=click.Path(path_type=Path),
              help="Run summary JSON. Default: <out stem>.summary.json beside the output.")
@click.option("--force", is_flag=True,
              help="Overwrite an existing output that no state database of this output accounts for.")
@click.option("--site", "site_file", type=click.Path(path_type=Path), metavar="SITE.json",
              help="Flag with this site's threshold (a dcx-calibrate file for this very model) instead of "
                   "the model card's; rows say which in threshold_source.")
@click.option("--shard", type=SHARD, help=SHARD_HELP)
@click.option("--ood-exit", is_flag=True,
              help="Exit 4 when the run has no error rows but some images are out of distribution (the "
                   "model was not trained for them). Off by default: such images are common in real "
                   "archives (laterals, CT scouts), are counted in the summary and the last line, and "
                   "should not page anyone every night.")
@click.option("--modality", default="CR,DX", show_default=True, metavar="LIST",
              help="DICOMweb: screen series of these modalities (comma-separated; 'any' for all).")
@click.option("--study-date", metavar="RANGE",
              help="DICOMweb: only studies of these dates: 2024-01-01..2024-01-31, 2024-01-01.. or one day.")
@click.option("--since", metavar="DATE|last-run",
              help="DICOMweb: only studies dated from DATE on; 'last-run': from the start of the last "
                   "completed run of this state database, less a day (all studies the first time).")
@click.option("--sr-to", metavar="URL",
              help="Store a DICOM Structured Report of every scored DICOM image via STOW-RS at this "
                   "DICOMweb root (often the archive's own); 'sr_status' column says what happened.")
@click.option("--sr-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Write the Structured Reports into DIR as <SOP Instance UID>.dcm (they hold the "
                   "source's patient module, as DICOM requires).")
@click.option("--ca-bundle", type=click.Path(path_type=Path), metavar="FILE",
              help="CA certificates (PEM) that sign the DICOMweb server's TLS certificate. "
                   f"Credentials: ${ENV_TOKEN}, or ${ENV_USER} and ${ENV_PASSWORD}, or netrc.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]", help=RAY_HELP)
@click.option("--ray-timeout", default=600.0, show_default=True, type=click.FloatRange(min=1),
              metavar="SECONDS", help="With --ray: stop with an error when no batch finishes for this long.")
def main(archive, engine, out, fmt, batch_size, decode_threads, device, include, exclude, files_from,
         state, no_state, heatmaps, include_phi, series_rules, summary, force, shard, ood_exit, site_file,
         ray_address, ray_timeout, modality, study_date, since, sr_to, sr_dir, ca_bundle):
    """Screen ARCHIVE (a folder, searched recursively, or one file) and write one row per file:
    DICOM UIDs, per-class probabilities, the positive-class probability, flagged
    (p_positive >= the model's threshold), the out-of-distribution score and in_distribution,
    and status ok / skipped / error with the reason. An image out of distribution (the model
    was not trained for anything like it) is neither flagged nor normal: flagged stays empty.

    ARCHIVE may also be a DICOMweb root (http[s]://host:port/dicom-web): its CR/DX series are
    queried (QIDO-RS), retrieved (WADO-RS) and decoded like files, one row per instance.

    Formats are recognised by content (JPEG, PNG, TIFF, BMP, WebP, JPEG 2000, DICOM with or
    without extension); hidden files are not listed; files that are plainly not images
    (manifest.csv, notes.txt, Thumbs.db) get a 'skipped' row; files named or built like images
    that cannot be read get an 'error' row; damaged files that still decode are scored with a
    'damaged: ...' reason.

    Nightly runs: a state database beside the output remembers finished rows by path, size,
    mtime, ctime, inode and model (its card and file hash), so a rerun scores only new or
    changed files, and a run stopped by Ctrl-C, SIGTERM or a crash resumes where it stopped.
    The output is rewritten complete on every run and appears under its name only when the
    run finishes (meanwhile: <out>.partial). One run per output: a second run on the same
    --out stops at once, naming the running one (<out>.lock).

    \b
    Examples:
      dcx-infer --engine runs/r18/model.onnx /data/archive
      dcx-infer --engine densenet.plan /pacs/export --out nightly.parquet --heatmaps heat/
      dcx-infer --engine best.pt /archive --include '*.dcm' --exclude 'scratch/*' --device cpu
      find /archive -newer stamp -type f | dcx-infer --engine model.onnx --files-from - --out new.csv
      dcx-infer --engine model.onnx /archive --out out/results.csv --shard "$JOB_COMPLETION_INDEX/8"
      dcx-infer --engine model.plan /archive --out nightly.parquet --ray auto
      dcx-infer --engine model.onnx http://pacs:8042/dicom-web --since last-run --sr-to http://pacs:8042/dicom-web

    \b
    Exit codes:
      0    every file scored or skipped
      3    finished, but some files are 'error' rows (the output is complete)
      4    with --ood-exit: finished without error rows, but some images are out of
           distribution: the model was not trained for them, so they are neither flagged nor
           normal (in_distribution false)
      1    fatal error (bad engine file, unwritable output, ...): nothing published
      2    bad command line
      130  interrupted (Ctrl-C or SIGTERM): finished rows are kept in the state database;
           rerun to resume
    """
    run = dict(archive=archive, engine=engine, out=out, fmt=fmt, batch_size=batch_size,
               decode_threads=decode_threads, device=device, include=include, exclude=exclude,
               files_from=files_from, state=state, no_state=no_state, heatmaps=heatmaps,
               include_phi=include_phi, series_rules=series_rules, summary=summary, force=force,
               shard=shard, site_file=site_file, ray_address=ray_address, ray_timeout=ray_timeout,
               modality=modality, study_date=study_date, since=since, sr_to=sr_to, sr_dir=sr_dir,
               ca_bundle=ca_bundle)
    with interrupts.handled():  # from the first line: Ctrl-C while torch loads exits 130 too
        try:
            result, out, state, summary = _run(**run)
        except KeyboardInterrupt:
            saved = state is not None or not no_state
            click.echo("\ninterrupted: finished rows are saved in the state database; run the same command "
                       "again to resume" if saved else "\ninterrupted (no state database: a rerun starts over)",
                       err=True)
            raise SystemExit(EXIT_INTERRUPTED)

    counts = result["counts"]
    click.echo(f"{result['files']} files: {counts['ok']} ok, {counts['skipped']} skipped, "
               f"{counts['error']} errors; {result['flagged']} flagged, "
               f"{result['out_of_distribution']} out of distribution "
               f"({result['decoded_this_run']} read this run, {result['reused_from_state']} reused from the "
               f"state database; {result['images_per_s']} img/s)")
    if result.get("reports"):
        click.echo("structured reports: " + ", ".join(f"{n} {status}" for status, n in result["reports"].items()))
    click.echo(f"results: {out}\nsummary: {summary}")
    if result["ood_threshold"] is None:
        click.echo(NO_OOD_NOTICE, err=True)
    if counts["error"]:
        raise SystemExit(EXIT_FILE_ERRORS)
    if ood_exit and result["out_of_distribution"]:
        raise SystemExit(EXIT_OUT_OF_DISTRIBUTION)


def _run(archive, engine, out, fmt, batch_size, decode_threads, device, include, exclude, files_from, state,
         no_state, heatmaps, include_phi, series_rules, summary, force, shard, site_file, ray_address, ray_timeout,
         modality, study_date, since, sr_to, sr_dir, ca_bundle):
    """The run behind :func:`main`: (its summary, and the output, state and summary paths used)."""
    if ray_address is not None:
        ray_address = parse_address(ray_address)
    if archive is None and files_from is None:
        raise click.UsageError("give an ARCHIVE folder, or --files-from LIST")
    source = None
    if ray_address is not None and (sr_to or sr_dir or (archive and is_dicomweb_url(archive))):
        raise DcxError("--ray reads files on its workers and makes no reports: it cannot screen a DICOMweb "
                       "archive nor write --sr-to / --sr-dir; run --shard I/N jobs instead")
    if archive is not None and is_dicomweb_url(archive):
        if files_from or include or exclude:
            raise click.UsageError("--files-from, --include and --exclude select files; with a DICOMweb "
                                   "archive use --modality, --study-date and --since")
        source = DicomWebSource(DicomWebClient(archive, ca_bundle=ca_bundle),
                                Query.from_options(modality, study_date, since))
    elif study_date or since:
        raise click.UsageError("--study-date and --since select studies of a DICOMweb archive")
    archive = Path(archive) if archive is not None and source is None else archive
    if source is None and archive is not None and not archive.exists():
        raise DcxError(f"archive not found: {archive}")
    if state is not None and no_state:
        raise click.UsageError("--state and --no-state contradict each other")
    if files_from not in (None, "-") and not Path(files_from).is_file():
        raise DcxError(f"--files-from list not found: {files_from}")

    site = read_site(site_file) if site_file is not None else None
    if batch_size is None:
        batch_size = _default_batch_size(device)
    default_fmt = "parquet" if ray_address is not None else "csv"
    out = out or Path(f"{_archive_name(archive, files_from)}.dcx.{fmt or default_fmt}")
    if shard is not None:  # every task of an array job runs the same command line
        out, state, summary = (shard.part_path(p) if p is not None else None for p in (out, state, summary))
    state = None if no_state else (state or _beside(out, "state.sqlite"))
    summary = summary or _beside(out, "summary.json")
    if out.is_dir() and ray_address is None:
        raise DcxError(f"--out {out} is a directory; name the result file")
    if summary.is_dir():
        raise DcxError(f"--summary {summary} is a directory; name the summary file")
    if heatmaps is not None:
        _check_heatmap_folder(heatmaps)

    from .ray_runner import screen_on_ray  # Ray itself loads only when --ray runs
    from .run import screen
    from .scoring import ScreenOptions

    with OutputLock(out):  # one run per output, for the whole run
        if out.exists() and not force and not (state is not None and state.exists()):
            raise DcxError(f"{out} exists and no state database ({state or '--no-state'}) accounts for it; "
                           "pass --force to overwrite it")
        options = ScreenOptions(
            engine=engine, out=out, root=archive if source is None else None, files_from=files_from, fmt=fmt,
            include=include, exclude=exclude, state=state, heatmaps=heatmaps, summary=summary,
            batch_size=batch_size, decode_threads=decode_threads, device=device, include_phi=include_phi,
            series_rules=series_rules, progress=True, shard=shard, site=site, dicomweb=source,
            sr_store=DicomWebClient(sr_to, ca_bundle=ca_bundle) if sr_to else None, sr_dir=sr_dir)
        if ray_address is None:
            limit_malloc_arenas()  # before the run starts its threads
            with imports_frozen():
                result = screen(options)
        else:
            result = screen_on_ray(options, ray_address, timeout_s=ray_timeout)
    return result, out, state, summary


def _check_heatmap_folder(folder: Path) -> None:
    """Made and proven writable before the run, not found read-only at the first flagged image."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dcx-write-test-"):
            pass
    except OSError as exc:
        raise DcxError(f"cannot write into --heatmaps folder {folder}: {exc.strerror or exc}") from exc


def _default_batch_size(device: str) -> int:
    from .backends import CPU_BATCH_SIZE

    return 64 if device != "cpu" and gpu_available() else CPU_BATCH_SIZE


def _archive_name(archive, files_from: str | None) -> str:
    if isinstance(archive, str):  # a DICOMweb URL
        return "dicomweb-" + "".join(ch if ch.isalnum() else "-" for ch in urlsplit(archive).netloc)
    if archive is not None:
        resolved = archive.resolve()
        return resolved.stem if resolved.is_file() else (resolved.name or "archive")
    return "stdin" if files_from == "-" else Path(files_from).stem


def _beside(out: Path, suffix: str) -> Path:
    """``results.csv`` -> ``results.<suffix>`` in the same folder."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.{suffix}")


if __name__ == "__main__":  # python -m dcx.engine.cli (what the kill-and-resume test runs)
    main()
