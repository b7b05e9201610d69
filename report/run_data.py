"""What a report is built from: the result table of one run and the summary JSON beside it.

Tables come as dcx-infer writes them (CSV, JSONL, Parquet, or a ``--ray`` folder of Parquet
parts); the summary is ``<out stem>.summary.json``. Everything in both is treated as hostile
text by the renderer; here it is only read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dcx.core.errors import DcxError
from dcx.engine.results import read_rows


@dataclass
class RunData:
    results: Path
    rows: list[dict]
    columns: list[str]
    summary: dict
    summary_path: Path | None


def summary_path_for(results: Path) -> Path:
    """``nightly.csv`` -> ``nightly.summary.json`` (dcx-infer's default)."""
    return _beside(results, "summary.json")


def report_path_for(results: Path) -> Path:
    """``nightly.csv`` -> ``nightly.report.html``."""
    return _beside(results, "report.html")


def _beside(results: Path, suffix: str) -> Path:
    stem = results.name[: -len(results.suffix)] if results.suffix else results.name
    return results.with_name(f"{stem}.{suffix}")


def load_run(results: str | os.PathLike, summary: str | os.PathLike | None = None) -> RunData:
    """Rows and summary of a run; a missing summary is an empty dict (the report says so)."""
    results = Path(results)
    if not results.exists():
        raise DcxError(f"result table not found: {results}")
    rows = list(_read_table(results))
    columns = list(rows[0]) if rows else []
    path = Path(summary) if summary is not None else summary_path_for(results)
    data = {}
    if path.is_file():
        data = read_summary(path)
    elif summary is not None:
        raise DcxError(f"run summary not found: {path}")
    return RunData(results, rows, columns, data, path if data else None)


def _read_table(results: Path):
    try:
        if results.is_dir():  # dcx-infer --ray: a folder of Parquet parts
            for part in sorted(results.glob("*.parquet")):
                yield from read_rows(part, "parquet")
        else:
            yield from read_rows(results)
    except (OSError, UnicodeDecodeError, ValueError, json.JSONDecodeError) as exc:
        raise DcxError(f"{results} is not a readable dcx result table ({exc})") from exc


def read_summary(path: Path) -> dict:
    """A run summary JSON, or one DcxError sentence naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DcxError(f"{path} is not a readable run summary ({exc})") from exc
    if not isinstance(data, dict):
        raise DcxError(f"{path} is not a dcx run summary")
    return data
