"""Drift across nights: the flagged rate and score distribution of each night's new images,
compared with the model's validation distribution.

A *night* is one run summary: its UTC start date, its model, and the images it scored
itself (rows reused from the state database were scored on an earlier night and count
there). Summaries are overwritten when a nightly job keeps its output name, so
``dcx-report --history nights.jsonl`` keeps one line per run (appended once; rebuilding a
report does not add it again); earlier summary files can be added with ``--previous``.

Each night's histogram is held against the validation histogram stored in the model card
(:mod:`dcx.core.drift`: PSI on tenths, KS on hundredths). A night warns when its PSI passes
``PSI_WARN`` and what chance alone gives for its number of images and the validation split's
(:func:`dcx.core.drift.psi_by_chance`): a few images, or a small validation split, make
PSI large without any shift.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from dcx.core.drift import BINS, PSI_WARN, drifted, ks, psi, psi_by_chance
from dcx.core.errors import DcxError
from dcx.core.files import atomic_path

def night_record(summary: dict) -> dict | None:
    """The part of a run summary the drift view needs; None for a summary without a start time."""
    started = summary.get("started")
    if not isinstance(started, str) or len(started) < 10:
        return None
    histogram = (summary.get("score_histogram") or {}).get("scored_this_run")
    return {
        "night": started[:10],
        "started": started,
        "output": str(summary.get("output")),
        "model_id": summary.get("model_id"),
        "threshold": summary.get("threshold", (summary.get("model") or {}).get("threshold")),
        "files": summary.get("files"),
        "scored": summary.get("scored_this_run"),
        "flagged": summary.get("flagged_this_run"),
        "histogram": histogram if isinstance(histogram, list) and len(histogram) == BINS else None,
    }


def read_history(path: str | os.PathLike) -> list[dict]:
    """Night records of a history file (JSON lines); a missing file is an empty history."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DcxError(f"cannot read history {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DcxError(f"{path} line {number} is not JSON ({exc.msg}); repair or remove it") from exc
        if isinstance(record, dict) and "night" in record:
            records.append(record)
    return records


def remember(path: str | os.PathLike, record: dict) -> list[dict]:
    """Add ``record`` to the history file unless that run is there already; returns all records."""
    records = read_history(path)
    if not any(_same_run(r, record) for r in records):
        records.append(record)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def _same_run(a: dict, b: dict) -> bool:
    return a.get("started") == b.get("started") and a.get("output") == b.get("output")


def validation_histogram(summary: dict) -> list[int] | None:
    """The validation score histogram the run's model card carries, if it is a well-formed one."""
    model = summary.get("model") if isinstance(summary.get("model"), dict) else {}
    validation = model.get("validation") if isinstance(model.get("validation"), dict) else {}
    hist = validation.get("score_histogram")
    if isinstance(hist, list) and len(hist) == BINS and all(isinstance(v, int) and v >= 0 for v in hist) and sum(hist):
        return hist
    return None


@dataclass
class NightDrift:
    record: dict
    flagged_rate: float
    psi: float
    psi_by_chance: float
    ks: float
    comparable: bool  # same model as the reference distribution
    warning: bool
    note: str


def drift_by_night(records: list[dict], reference: list[int] | None, model_id: str | None) -> list[NightDrift]:
    """One row per run, oldest first; duplicates of a run counted once."""
    unique: list[dict] = []
    for record in sorted(records, key=lambda r: str(r.get("started"))):
        if not any(_same_run(r, record) for r in unique):
            unique.append(record)
    out = []
    for r in unique:
        scored, flagged = r.get("scored") or 0, r.get("flagged")
        rate = flagged / scored if scored and isinstance(flagged, int) else math.nan
        comparable = reference is not None and r.get("model_id") == model_id
        value_psi = value_ks = chance = math.nan
        note = ""
        if r.get("histogram") is None:
            note = "no score histogram in this summary (older dcx)" if scored else "no new images"
        elif reference is None:
            note = "no validation distribution in the model card"
        elif not comparable:
            note = f"scored by another model ({r.get('model_id')})"
        else:
            value_psi, value_ks = psi(reference, r["histogram"]), ks(reference, r["histogram"])
            chance = psi_by_chance(sum(reference), sum(r["histogram"]))
        warning = comparable and r.get("histogram") is not None and drifted(reference, r["histogram"])
        if comparable and not warning and value_psi > PSI_WARN:
            note = f"below what {scored} images against {sum(reference)} validation images give by chance"
        out.append(NightDrift(r, rate, value_psi, chance, value_ks, comparable, warning, note))
    return out
