"""``dcx-merge``: combine the result parts of sharded or Ray runs into one table, checked.

Parts are the outputs of ``dcx-infer --shard I/N`` jobs (``results.shard-0003-of-0008.csv``)
or the folder of Parquet parts a ``dcx-infer --ray`` run writes. Combining them is where a
lost or doubled job would go unnoticed, so the merge refuses to write anything when

- a path appears more than once (two parts overlap: a job ran twice, or parts of different
  shard counts or archives were mixed);
- a shard part is missing (parts named ``*.shard-IIII-of-NNNN.*`` say how many there are),
  or two parts claim the same shard;
- parts disagree on their columns or on the model that scored them;
- a part holds no rows (empty, or a header only: the job that wrote it died or never ran),
  unless the run summary beside it says that shard owned no files at all;
- a part cannot be read (the error names it).

Rows come out sorted by path component by component, which is the order discovery walks an
archive in, so a merged table reads like an unsharded run's. Each part is read as a stream
and sorted on its own only when it is not in order already; the merge itself streams, so
memory holds at most one part, not the archive.
"""
from __future__ import annotations

import csv
import heapq
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import click

from dcx.core.errors import Command, DcxError

from .results import FORMATS, format_for, open_writer, partial_path, read_rows
from .shard import Shard, shard_from_name

#: Suffixes of result tables; anything else in a parts folder (summaries, state) is ignored.
PART_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".parquet", ".pq"}
#: Rows handed to the writer at once.
WRITE_BATCH = 4096
#: How many offending paths an error message lists before it says "and N more".
SHOWN = 5


def row_key(row: dict) -> list[str]:
    """Sort key of a row: its path split at ``/``, so ``a/b`` sorts before ``a-c`` as in a walk."""
    return row["path"].split("/")


@dataclass
class MergeReport:
    """What a merge wrote: for the command's message and for callers (the Ray runner)."""

    out: Path
    parts: list[Path]
    rows: int = 0
    status: Counter = field(default_factory=Counter)
    flagged: int = 0
    out_of_distribution: int = 0


def find_parts(inputs: Iterable[str | os.PathLike], out: str | os.PathLike | None = None) -> list[Path]:
    """Files to merge: each input is a part file, or a folder whose result tables are parts.

    Unfinished outputs (``*.partial``) are refused: the job that wrote one has not completed.
    """
    out = Path(out).resolve() if out is not None else None
    parts: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in PART_SUFFIXES and p.resolve() != out)
            if not found:
                raise DcxError(f"{item} holds no result parts ({', '.join(sorted(PART_SUFFIXES))})")
            parts += found
        elif item.name.endswith(".partial"):
            raise DcxError(f"{item} is the unfinished output of a run that has not completed; "
                           "rerun that job (it resumes) and merge its final output")
        elif not item.is_file():
            raise DcxError(f"part not found: {item}")
        else:
            parts.append(item)
    if not parts:
        raise DcxError("no parts to merge")
    seen = Counter(p.resolve() for p in parts)
    doubled = [str(p) for p, n in seen.items() if n > 1]
    if doubled:
        raise DcxError(f"part given twice: {', '.join(doubled)}")
    return parts


def check_shards(parts: list[Path], expect_shards: int | None) -> None:
    """Parts named with shard tags must come from one shard count and hold every shard 0..N-1
    exactly once; ``expect_shards`` also requires a tag on every part and that N."""
    tagged = {p: shard_from_name(p) for p in parts}
    counts = {s.count for s in tagged.values() if s is not None}
    if expect_shards is not None:
        untagged = [str(p) for p, s in tagged.items() if s is None]
        if untagged:
            raise DcxError(f"--expect-shards {expect_shards}: these parts carry no "
                           f"'.shard-IIII-of-NNNN' tag: {_listing(untagged)}")
        counts.add(expect_shards)
    if len(counts) > 1:
        raise DcxError(f"parts come from different shard counts ({', '.join(map(str, sorted(counts)))}): "
                       + _listing([f"{p.name} ({s})" for p, s in tagged.items() if s is not None]))
    if not counts:
        return
    (count,) = counts
    by_index: dict[int, list[Path]] = {}
    for p, s in tagged.items():
        if s is not None:
            by_index.setdefault(s.index, []).append(p)
    twice = [f"shard {i}/{count}: {', '.join(map(str, ps))}" for i, ps in sorted(by_index.items()) if len(ps) > 1]
    if twice:
        raise DcxError(f"more than one part for the same shard: {'; '.join(twice)}")
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        example = Shard(missing[0], count).tag
        raise DcxError(f"missing shard part(s) {_listing([f'{i}/{count}' for i in missing])} of {count} "
                       f"(no file named like *.{example}.*): rerun those jobs, then merge again")


def merge_parts(parts: list[Path], out: str | os.PathLike, *, fmt: str | None = None,
                expect_shards: int | None = None) -> MergeReport:
    """Merge ``parts`` into ``out`` after the checks above; nothing is published on failure
    (rows go to ``<out>.partial``, renamed onto ``out`` only when every check passed)."""
    check_shards(parts, expect_shards)
    columns = _common_columns(parts)
    check_rows(parts)
    report = MergeReport(Path(out), parts)
    duplicates: dict[str, list[Path]] = {}
    model_ids: dict[str, Path] = {}
    writer = open_writer(out, columns, fmt)
    try:
        batch: list[dict] = []
        previous, previous_part = None, None
        for part, row in heapq.merge(*(_ordered(p) for p in parts), key=lambda item: row_key(item[1])):
            if row["path"] == previous:
                duplicates.setdefault(previous, [previous_part]).append(part)
                continue
            previous, previous_part = row["path"], part
            model_ids.setdefault(row.get("model_id"), part)
            if len(model_ids) > 1:
                raise DcxError("parts were scored by different models: " + _listing(
                    [f"{m} (e.g. {p})" for m, p in model_ids.items()]))
            report.rows += 1
            report.status[row.get("status")] += 1
            report.flagged += bool(row.get("flagged"))
            report.out_of_distribution += row.get("in_distribution") is False
            batch.append(row)
            if len(batch) >= WRITE_BATCH:
                writer.write(batch)
                batch = []
        if duplicates:
            raise DcxError(f"{len(duplicates)} path(s) appear in more than one row: " + _listing(
                [f"{path} (in {', '.join(str(p) for p in ps)})" for path, ps in duplicates.items()]))
        writer.write(batch)
        writer.commit()
    except BaseException:
        writer.close()
        partial_path(out).unlink(missing_ok=True)
        raise
    return report


def check_rows(parts: list[Path]) -> None:
    """Refuse parts without a row, but for a shard whose summary says it owned no file."""
    empty = [p for p in parts if next(_rows(p), None) is None and not _owned_no_files(p)]
    if empty:
        raise DcxError(f"part(s) with no rows (empty, or a header only): {_listing([str(p) for p in empty])}; "
                       "the jobs that wrote them did not finish: rerun them, then merge again")


def _owned_no_files(part: Path) -> bool:
    """Whether ``<part stem>.summary.json`` beside the part reports a completed run of 0 files."""
    try:
        summary = json.loads(part.with_name(f"{part.stem}.summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("completed") is True and summary.get("files") == 0


def _rows(part: Path) -> Iterator[dict]:
    """The rows of a part; whatever makes it unreadable is one error that names the part."""
    try:
        for row in read_rows(part):
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise ValueError("a row without a path")
            yield row
    except ImportError as exc:
        raise DcxError("Parquet parts need pyarrow: pip install 'dcx[parquet]'") from exc
    except (OSError, ValueError, TypeError, AttributeError, csv.Error) as exc:  # UnicodeDecodeError, ArrowInvalid, JSON
        detail = (str(exc).splitlines() or [""])[0][:120]
        raise DcxError(f"{part} is not a readable {format_for(part)} result table "
                       f"({type(exc).__name__}: {detail})") from exc


def _ordered(part: Path) -> Iterator[tuple[Path, dict]]:
    """``(part, row)`` in path order: streamed when the part is sorted already (shard outputs
    are, being written in discovery order), otherwise sorted in memory."""
    keys = (row_key(r) for r in _rows(part))
    previous = next(keys, None)
    in_order = True
    for key in keys:
        if key < previous:
            in_order = False
            break
        previous = key
    rows = _rows(part) if in_order else sorted(_rows(part), key=row_key)
    for row in rows:
        yield part, row


def _common_columns(parts: list[Path]) -> list[str]:
    """The column list all parts share; a part with other columns is named in the error."""
    found = [(p, _columns(p)) for p in parts]
    known = [(p, c) for p, c in found if c is not None]
    if not known:
        raise DcxError("the parts hold no rows and no header: nothing to merge")
    first_part, columns = known[0]
    for part, cols in known[1:]:
        if cols != columns:
            diff = sorted(set(cols) ^ set(columns)) or ["(same names, other order)"]
            raise DcxError(f"{part} has other columns than {first_part}: {', '.join(diff)}")
    if "path" not in columns:
        raise DcxError(f"{first_part} has no 'path' column: not a dcx result table")
    return columns


def _columns(part: Path) -> list[str] | None:
    """A part's column names (None for an empty JSONL part, which has no header)."""
    fmt = format_for(part)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(part).names
        with open(part, encoding="utf-8", newline="") as f:
            if fmt == "csv":
                return next(csv.reader(f), None)
            for line in f:
                if line.strip():
                    return list(json.loads(line))
            return None
    except ImportError as exc:
        raise DcxError("Parquet parts need pyarrow: pip install 'dcx[parquet]'") from exc
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise DcxError(f"{part} is not a readable {fmt} result table ({type(exc).__name__})") from exc


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Merged table; the format follows its suffix (.csv, .jsonl, .parquet) unless --format.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format (default: from --out).")
@click.option("--expect-shards", type=click.IntRange(1), metavar="N",
              help="Require N shards and a shard tag on every part. Tagged parts are always checked "
                   "for a complete set, one part per shard 0..N-1.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
def main(parts, out, fmt, expect_shards, force):
    """Merge result PARTS (files, or folders of parts) into one table sorted by path, and
    check that every file appears exactly once.

    A path in two rows, a missing or doubled shard part, or parts from different models
    stop the merge with the offenders named, and nothing is written.

    \b
    Examples:
      # after 'dcx-infer --shard I/8 ... --out out/results.csv' for I = 0..7
      dcx-merge out/results.shard-*-of-0008.csv --expect-shards 8 --out results.csv
      # the Parquet parts folder of a 'dcx-infer --ray' run, as one CSV
      dcx-merge archive.dcx.parquet --out archive.csv
    """
    if out.exists() and not force:
        raise DcxError(f"{out} exists; pass --force to overwrite it")
    report = merge_parts(find_parts(parts, out), out, fmt=fmt, expect_shards=expect_shards)
    counts = ", ".join(f"{report.status.get(s, 0)} {s}" for s in ("ok", "skipped", "error"))
    click.echo(f"merged {len(report.parts)} parts: {report.rows} files ({counts}); "
               f"{report.flagged} flagged, {report.out_of_distribution} out of distribution -> {report.out}")
