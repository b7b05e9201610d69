"""The result table: one row per input file, its columns, and the CSV / JSONL / Parquet writers.

Columns, in order (``patient_*`` only with ``--include-phi``; ``p_<class>`` per model class):

    path size mtime format study_uid series_uid sop_uid accession [patient_name patient_id]
    p_<class>... predicted p_positive flagged threshold threshold_source ood_score in_distribution
    model_id status reason heatmap

``status`` is ``ok`` (scored), ``skipped`` (not a radiograph to score, e.g. a DICOM structured
report or a series rule) or ``error`` (could not be scored); ``reason`` says why for the
last two, and on an ``ok`` row notes damage the decoder forgave (``damaged: ...``).
``threshold_source`` says whose threshold ``threshold`` is: ``card`` (the model's) or ``site``
(a site file of ``dcx-calibrate``, see :mod:`dcx.core.site`).

Out of distribution. ``ood_score`` is the model's out-of-distribution score of the image
(:class:`dcx.core.models.OodScore`: higher = less like the images the model was trained on)
and ``in_distribution`` is ``ood_score <= `` the card's OOD threshold. The model was not
trained for an image with ``in_distribution`` false (a CT slice, a photograph, a lateral or
inverted film, ...), so its answer there means nothing: the row keeps its probabilities and
``predicted`` for inspection, but ``flagged`` is left empty -- neither flagged nor counted as
normal -- and the run summary counts such rows under ``out_of_distribution``. So:

- ``flagged`` true: in distribution and ``p_positive >= threshold`` (dcx.core.metrics' convention);
- ``flagged`` false: in distribution and below the threshold;
- ``flagged`` empty: not scored (``skipped``/``error``) or out of distribution.

A model without an OOD score (trained before it existed; fit one with ``dcx-fit-ood``) leaves
``ood_score`` and ``in_distribution`` empty and flags every ``ok`` row as before.
Scores are rounded to 6 decimals: finer than any model's meaningful precision, coarse
enough to read.

A writer writes ``<output>.partial`` and renames it onto the output only when the run
completes (:meth:`RowWriter.commit`), so the output file is always a complete table and a
killed run never leaves half a file under the real name. Rows are flushed batch by batch
(CSV/JSONL), so the partial file can be watched while a run goes on.
"""
from __future__ import annotations

import abc
import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from dcx.core.errors import DcxError

FORMATS = ("csv", "jsonl", "parquet")
STATUSES = ("ok", "skipped", "error")

FILE_COLUMNS = ("path", "size", "mtime", "format")
DICOM_COLUMNS = ("study_uid", "series_uid", "sop_uid", "accession")
PHI_COLUMNS = ("patient_name", "patient_id")
RESULT_COLUMNS = ("predicted", "p_positive", "flagged", "threshold", "threshold_source", "ood_score",
                  "in_distribution", "model_id", "status", "reason", "heatmap")

DECIMALS = 6


def column_type(name: str) -> type:
    """Value type of a column, from its name alone (so any reader can restore types)."""
    if name == "size":
        return int
    if name in ("flagged", "in_distribution"):
        return bool
    if name in ("threshold", "ood_score") or name.startswith("p_"):
        return float
    return str


@dataclass(frozen=True)
class RowSchema:
    """The columns of one run: fixed ones plus a probability per model class."""

    classes: tuple[str, ...]
    positive: str
    threshold: float
    model_id: str
    include_phi: bool = False
    threshold_source: str = "card"
    #: The card's OOD threshold; None for a model without an OOD score.
    ood_threshold: float | None = None

    def __post_init__(self):
        if "positive" in self.classes and self.positive != "positive":
            raise DcxError("a class named 'positive' that is not the positive class collides with "
                           "the result column p_positive")

    @classmethod
    def for_card(cls, card, include_phi: bool = False, site=None) -> "RowSchema":
        """The schema of a model card (:class:`dcx.core.card.ModelCard`); a site file
        (:class:`dcx.core.site.SiteThreshold`) replaces the card's threshold, for its model only."""
        common = dict(classes=tuple(card.classes), positive=card.positive, model_id=card.model_id,
                      include_phi=include_phi, ood_threshold=card.ood_threshold)
        if site is None:
            return cls(threshold=float(card.threshold), **common)
        site.check_model(card.model_id)
        return cls(threshold=float(site.threshold), threshold_source="site", **common)

    @property
    def columns(self) -> list[str]:
        cols = list(FILE_COLUMNS + DICOM_COLUMNS)
        if self.include_phi:
            cols += PHI_COLUMNS
        cols += [f"p_{c}" for c in self.classes if f"p_{c}" != "p_positive"]
        return cols + list(RESULT_COLUMNS)

    def row(self, path: str, size: int, mtime_ns: int, *, status: str, reason: str | None = None,
            format: str | None = None, meta: dict | None = None, probs=None, ood_score=None,
            heatmap: str | None = None) -> dict:
        """One result row. ``probs`` (K class probabilities) and ``ood_score`` only for ``ok`` rows."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        meta = meta or {}
        row = {
            "path": display_path(path),
            "size": int(size),
            "mtime": _iso_utc(mtime_ns) if mtime_ns else None,
            "format": format,
            **{k: _text(meta.get(k)) for k in DICOM_COLUMNS},
        }
        if self.include_phi:
            row.update({k: _text(meta.get(k)) for k in PHI_COLUMNS})
        scores = {f"p_{c}": None for c in self.classes}
        predicted = p_positive = flagged = None
        if probs is not None:
            values = [round(float(p), DECIMALS) for p in probs]
            if len(values) != len(self.classes):
                raise ValueError(f"{len(values)} probabilities for {len(self.classes)} classes")
            scores = {f"p_{c}": v for c, v in zip(self.classes, values)}
            predicted = self.classes[max(range(len(values)), key=values.__getitem__)]
            p_positive = scores[f"p_{self.positive}"]
        row.update(scores)
        row.update(predicted=predicted, p_positive=p_positive, model_id=self.model_id, status=status,
                   reason=reason, heatmap=heatmap,
                   ood_score=None if ood_score is None else round(float(ood_score), DECIMALS))
        return self.apply_threshold({c: row.get(c) for c in self.columns})

    def apply_threshold(self, row: dict) -> dict:
        """Set ``flagged``, ``threshold``, ``threshold_source`` and ``in_distribution`` of a row
        from this schema (see the module docstring), so a row reused from the state database
        follows tonight's threshold without being rescored."""
        p, ood = row.get("p_positive"), row.get("ood_score")
        in_distribution = None if ood is None or self.ood_threshold is None else ood <= self.ood_threshold
        row.update(flagged=None if p is None or in_distribution is False else p >= self.threshold,
                   threshold=self.threshold, threshold_source=self.threshold_source,
                   in_distribution=in_distribution)
        return row


def display_path(path: str) -> str:
    """The path as valid text: bytes that are not UTF-8 (kept by Python as surrogates) are
    shown as ``\\xNN`` escapes, so every writer (and Parquet's strict UTF-8) accepts it.
    A backslash in a name is doubled, so the escape is unambiguous: two different names
    never print as the same path (a real ``\\xff`` in a name reads ``\\\\xff``)."""
    text = path.replace("\\", "\\\\")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: A cell starting with one of these is a formula (or a DDE call) to Excel, LibreOffice and
#: Google Sheets (OWASP "CSV injection"); ``'`` is escaped too, so the quoting can be undone.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(value):
    """A CSV cell that a spreadsheet shows as text: ``'`` before a text starting like a formula.
    DICOM headers are hostile input (an AccessionNumber ``=HYPERLINK(...)``)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _iso_utc(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value) -> str | None:
    return None if value is None or value == "" else str(value)


# --------------------------------------------------------------------------- writers

def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The output format: ``fmt`` when given, else from the file suffix, else CSV."""
    if fmt:
        if fmt not in FORMATS:
            raise DcxError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet"}.get(suffix, "csv")


def partial_path(path: str | os.PathLike) -> Path:
    """Where a writer puts rows until the run completes."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class RowWriter(abc.ABC):
    """Append rows batch by batch to ``<path>.partial``; :meth:`commit` renames it onto ``path``."""

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.columns = list(columns)
        self.rows_written = 0
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            if getattr(self, "_file", None) is not None:
                self._file.close()
            raise DcxError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc

    def _create(self):
        """A new binary file at the partial path. Whatever sits there (a killed run's file, or a
        symbolic link planted to make dcx overwrite its target) is removed first, and the file
        is created exclusively without following links, so only a file of this run is written."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self._file = os.fdopen(fd, "wb")
        return self._file

    def write(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if rows:
            try:
                self._write(rows)
            except OSError as exc:  # a full disk, a quota, a vanished mount: one line, no traceback
                raise DcxError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc
            self.rows_written += len(rows)

    def commit(self) -> Path:
        """Finish the file and move it onto the real output name (atomic on one file system)."""
        try:
            self.close()
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise DcxError(f"cannot finish {self.path}: {exc.strerror or exc}") from exc
        return self.path

    def close(self) -> None:
        """Finish the partial file without publishing it (an interrupted run keeps it for reading)."""
        if not getattr(self, "_closed", False):
            self._closed = True
            try:
                self._close()
            except OSError as exc:
                raise DcxError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _write(self, rows: list[dict]) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


class CsvWriter(RowWriter):
    """Text cells are spreadsheet-safe (see :func:`spreadsheet_safe`); :func:`read_rows` undoes it."""

    def _open(self):
        self._text = io.TextIOWrapper(self._create(), encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._text, fieldnames=self.columns)
        self._csv.writeheader()
        self._text.flush()

    def _write(self, rows):
        self._csv.writerows({k: spreadsheet_safe(v) for k, v in r.items()} for r in rows)
        self._text.flush()

    def _close(self):
        self._text.close()


class JsonlWriter(RowWriter):
    def _open(self):
        self._text = io.TextIOWrapper(self._create(), encoding="utf-8")

    def _write(self, rows):
        self._text.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self._text.flush()

    def _close(self):
        self._text.close()


class ParquetWriter(RowWriter):
    """Rows are grouped into row groups of ``ROW_GROUP`` (a Parquet file is readable only once
    closed, so flushing each small batch would only make tiny row groups)."""

    ROW_GROUP = 8192

    def _open(self):
        pa, pq = _pyarrow()
        arrow = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
        self._schema = pa.schema([(c, arrow[column_type(c)]) for c in self.columns])
        self._pa = pa
        self._writer = pq.ParquetWriter(self._create(), self._schema)
        self._buffer: list[dict] = []

    def _write(self, rows):
        self._buffer.extend(rows)
        if len(self._buffer) >= self.ROW_GROUP:
            self._flush()

    def _flush(self):
        if self._buffer:
            self._writer.write_table(self._pa.Table.from_pylist(self._buffer, schema=self._schema))
            self._buffer = []

    def _close(self):
        try:
            self._flush()
            self._writer.close()
        finally:
            self._file.close()


_WRITERS = {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


def open_writer(path: str | os.PathLike, columns: list[str], fmt: str | None = None) -> RowWriter:
    """A writer for ``path`` in ``fmt`` (default: from the suffix, else CSV)."""
    return _WRITERS[format_for(path, fmt)](path, columns)


def read_rows(path: str | os.PathLike, fmt: str | None = None) -> Iterator[dict]:
    """Rows of a result file back as typed dicts (empty CSV cells -> None)."""
    fmt = format_for(path, fmt)
    if fmt == "parquet":
        _, pq = _pyarrow()
        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for line in f:
                if line.strip():
                    yield json.loads(line)
            return
        for raw in csv.DictReader(f):
            yield {k: _parse_cell(k, v) for k, v in raw.items()}


def _parse_cell(column: str, value: str):
    if value == "":
        return None
    kind = column_type(column)
    if kind is str and value.startswith("'"):  # undo spreadsheet_safe
        return value[1:]
    if kind is bool:
        return value == "True"
    return kind(value)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DcxError("Parquet output needs pyarrow: pip install 'dcx[parquet]' "
                       "(or choose --format csv / jsonl)") from exc
    return pa, pq

