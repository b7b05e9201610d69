"""What the local loop (:mod:`dcx.engine.run`) and the Ray runner (:mod:`dcx.engine.ray_runner`) share.

A run is a stream of *chunks*: at most ``batch_size`` files to score, plus the already-done or
unreadable files that sit between them in discovery order. Both runners cut the stream with
:func:`chunks`, score a chunk into one row per file with :func:`score_chunk` (decoder from
:func:`open_decoder`), count rows with :func:`count_rows` into :class:`Stats` and end with
:func:`run_summary`; they differ only in where chunks are decoded and scored (a producer
thread here, Ray actors there) and how rows reach the output.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from dcx.core.artefact import sha256_file
from dcx.core.card import dcx_version
from dcx.core.devices import check_device, gpu_available
from dcx.core.dicom import SeriesRules
from dcx.core.drift import BINS, add_score
from dcx.core.errors import DcxError
from dcx.core.site import SiteThreshold

from .decode import Decoder
from .discover import Candidate, discover
from .heatmaps import save_heatmap
from .results import RowSchema, display_path, format_for
from .shard import Shard, select
from .state import StateDB, state_key


#: A chunk also closes after this many files, so long runs of already-done files keep the
#: output and progress moving without holding many rows in memory.
MAX_CHUNK_FILES = 1024
#: ... and once the files it will read add up to this many bytes (a file is read whole to be
#: decoded), so a batch of large DICOM files cannot hold batch size x file size in memory.
MAX_CHUNK_BYTES = 64 << 20
STAGES = ("discover", "state", "read", "decode", "preprocess", "infer", "write")


@dataclass
class ScreenOptions:
    """Everything one run needs; the CLI fills it, tests and benchmarks may build it directly."""

    engine: Path
    out: Path
    root: Path | None = None
    files_from: str | None = None
    fmt: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    state: Path | None = None
    heatmaps: Path | None = None
    summary: Path | None = None
    batch_size: int = 32
    decode_threads: int = 2
    device: str = "auto"
    include_phi: bool = False
    series_rules: bool = False
    progress: bool = False
    #: Score only this shard's files (see dcx.engine.shard); None: the whole archive.
    shard: Shard | None = None
    #: A site's own threshold (dcx.core.site.SiteThreshold) instead of the model card's.
    site: SiteThreshold | None = None
    #: A DICOMweb server instead of a folder (a dcx.engine.dicomweb.DicomWebSource).
    dicomweb: object | None = None
    #: Structured Reports of scored DICOM rows: STOW-RS to this DicomWebClient and/or files in
    #: this folder (dcx.engine.sr); the rows gain an sr_status column.
    sr_store: object | None = None
    sr_dir: Path | None = None


@dataclass
class Chunk:
    """A stretch of the discovery stream; ``todo`` indexes the files to decode and score."""

    files: list[Candidate] = field(default_factory=list)
    reused: dict[int, dict] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)
    decoded: object = None  # DecodedBatch of the todo files
    todo_bytes: int = 0  # what decoding the todo files reads

    def add(self, candidate: Candidate, reused_row: dict | None) -> None:
        index = len(self.files)
        self.files.append(candidate)
        if reused_row is not None:
            self.reused[index] = reused_row
        elif candidate.error is None:
            self.todo.append(index)
            self.todo_bytes += candidate.size


class Stats:
    """Counters and busy seconds per stage. Stages: ``discover`` (listing and stat), ``state``
    (lookups), ``read`` / ``decode`` / ``preprocess`` (the decoder's ``timings``, in the producer
    thread: file bytes and headers / decoding and resizing / geometry and assembly), ``infer``,
    ``write`` (rows, heatmaps, state commit, output). Producer and main thread overlap, so the
    stages can sum past the wall time. ``setup_s`` (model load, pipeline builds) is kept apart:
    it is a fixed cost per run, not per image."""

    def __init__(self):
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.setup_s = 0.0
        self.status = Counter()
        self.formats = Counter()
        self.transfer_syntaxes = Counter()
        self.reasons = Counter()
        self.reports = Counter()  # sr_status of the rows, "error: ..." counted as "error"
        #: rows this run: all, decoded this run, reused from state, scored ok this run, flagged,
        #: out of distribution (ok rows the model was not trained for; never flagged)
        self.files = self.decoded = self.reused = self.inferred = self.flagged = self.ood = 0
        #: p_positive histograms (dcx.core.drift): of every row, and of the rows scored this run
        self.scores_all, self.scores_new = [0] * BINS, [0] * BINS
        self.flagged_new = self.ood_new = 0
        #: (seconds since the start, images scored) when the first scores were counted: what a
        #: run costs before its first result (imports, model load, pipeline builds, first batch)
        self.first_scores: tuple[float, int] | None = None
        self.started = time.time()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._lock = threading.Lock()

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            if stage == "setup":
                self.setup_s += seconds
            else:
                self.stage_s[stage] += seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every thread of this process since the run started (decoders,
        inference pools, Python): on a CPU-bound machine, what the images really cost. With
        ``--ray`` this is the driver's alone; the workers are other processes."""
        return time.process_time() - self._cpu0


def state_profile(model_id: str, options: ScreenOptions) -> str:
    """The state key's model part: the model id, the model file's content (a re-export at
    another precision, or a retrained file copied over the old one, keeps the model id of its
    card but scores differently) and the options that change a row's content, so switching
    --include-phi or series rules never reuses rows made without them."""
    profile = f"{model_id}:{sha256_file(options.engine)[:16]}"
    return profile + (":phi" if options.include_phi else "") + (":series-rules" if options.series_rules else "")


def reusable_rows(options: ScreenOptions):
    """Which stored rows a run may reuse: all, except, with --heatmaps, a flagged row whose
    heatmap is not in the folder (added --heatmaps to a nightly job, or a cleaned folder):
    that file is scored again to draw it."""
    if options.heatmaps is None:
        return None
    folder = Path(options.heatmaps)
    return lambda path, row: not row.get("flagged") or (folder / heatmap_name(path)).is_file()


def candidates(options: ScreenOptions, stat_files: bool = True, last_run=None) -> Iterator[Candidate]:
    """The discovery stream of this run, never including dcx's own output files. A DICOMweb
    source lists its instances instead (``last_run``: when its last completed run started)."""
    if options.dicomweb is not None:
        return options.dicomweb.candidates(options.shard, last_run)
    skip = [p for p in (options.out, options.state, options.heatmaps, options.summary) if p]
    skip += [Path(f"{p}{suffix}") for p in skip for suffix in (".partial", ".lock", "-wal", "-shm", "-journal")]
    found = discover(options.root, include=options.include, exclude=options.exclude,
                     files_from=options.files_from, skip_paths=skip, stat_files=stat_files)
    if options.shard is not None:
        found = select(found, options.shard, options.root, key=lambda c: c.path)
    return found


def chunks(candidates: Iterable[Candidate], state: StateDB | None, batch_size: int,
           stats: Stats, *, reusable=None, max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[Chunk]:
    """Cut the stream into chunks of at most ``batch_size`` files (and about ``max_bytes``) to
    score, in discovery order. ``reusable(path, row)``: whether a stored row may be reused."""
    chunk = Chunk()
    stream = iter(candidates)
    while True:
        t0 = time.perf_counter()
        window = list(itertools.islice(stream, batch_size))
        stats.add_time("discover", time.perf_counter() - t0)
        if not window:
            break
        t0 = time.perf_counter()
        done = state.lookup(c for c in window if c.error is None) if state is not None else {}
        if reusable is not None:
            done = {path: row for path, row in done.items() if reusable(path, row)}
        stats.add_time("state", time.perf_counter() - t0)
        for candidate in window:
            if chunk.todo and done.get(candidate.path) is None and candidate.error is None \
                    and chunk.todo_bytes + candidate.size > max_bytes:
                yield chunk
                chunk = Chunk()
            chunk.add(candidate, done.get(candidate.path))
            if len(chunk.todo) >= batch_size or len(chunk.files) >= MAX_CHUNK_FILES:
                yield chunk
                chunk = Chunk()
    if chunk.files:
        yield chunk


def decode_device_before_load(options: ScreenOptions) -> str | None:
    """``cpu`` when decoding is on the CPU whatever the model's backend does (device cpu, or no
    GPU at all), so decoding may start while the model loads; None when only the loaded
    backend can tell (device auto or gpu on a machine with a GPU), or when the model card
    comes only with the weights (a ``.pt`` checkpoint: reading it is loading it)."""
    if Path(options.engine).suffix.lower() == ".pt":
        return None
    return "cpu" if check_device(options.device) == "cpu" or not gpu_available() else None


def open_decoder(card, device: str, options: ScreenOptions):
    """The decoder for ``card``'s input contract on ``device`` (``cpu`` or ``gpu``)."""
    return Decoder(card.preprocess(), device=device,
                   batch_size=options.batch_size, num_threads=options.decode_threads,
                   include_phi=options.include_phi, series_rules=SeriesRules() if options.series_rules else None)


def score_chunk(chunk: Chunk, backend, schema: RowSchema, options: ScreenOptions, stats: Stats) -> list[dict]:
    """One row per file of the chunk, in order: inference for new files, reuse for done ones."""
    rows: list[dict] = [None] * len(chunk.files)  # type: ignore[list-item]
    for i, c in enumerate(chunk.files):
        if c.error is not None:
            rows[i] = schema.row(c.path, c.size, c.mtime_ns, status="error", reason=c.error)
        elif i in chunk.reused:
            rows[i] = _reused_row(schema, chunk.reused[i], c)
    if not chunk.todo:
        return rows
    batch = chunk.decoded
    probs = cams = oods = None
    if len(batch.images):
        t0 = time.perf_counter()
        probs, cams, oods = backend.infer(batch.images)
        stats.add_time("infer", time.perf_counter() - t0)
    image_of = {todo_index: k for k, todo_index in enumerate(batch.rows_of_images)}  # one image per file
    t0 = time.perf_counter()
    for todo_index, file_index in enumerate(chunk.todo):
        c, outcome = chunk.files[file_index], batch.outcomes[todo_index]
        meta = outcome.meta or {}
        if meta.get("transfer_syntax"):
            stats.transfer_syntaxes[_syntax_label(meta["transfer_syntax"])] += 1
        common = dict(format=outcome.format, meta=meta)
        k = image_of.get(todo_index)
        if outcome.status != "ok":
            rows[file_index] = schema.row(c.path, c.size, c.mtime_ns, status=outcome.status,
                                          reason=outcome.reason, **common)
        elif k is None:
            rows[file_index] = schema.row(c.path, c.size, c.mtime_ns, status="error",
                                          reason="decoder returned no image", **common)
        else:
            row = schema.row(c.path, c.size, c.mtime_ns, status="ok", reason=outcome.note, probs=probs[k],
                             ood_score=None if oods is None else oods[k], **common)
            if row["flagged"] and options.heatmaps:
                row["heatmap"] = _save_heatmap(batch.images[k], cams[k], c.path, options.heatmaps)
            rows[file_index] = row
    stats.add_time("write", time.perf_counter() - t0)
    return rows


def _syntax_label(uid: str) -> str:
    """``1.2.840.10008.1.2.4.50 JPEG Baseline (Process 1)``: the UID and its name."""
    from pydicom.uid import UID

    name = UID(uid).name
    return uid if name == uid else f"{uid} {name}"


def _reused_row(schema: RowSchema, stored: dict, c: Candidate) -> dict:
    row = {col: stored.get(col) for col in schema.columns}
    row["path"] = display_path(c.path)
    return schema.apply_threshold(row)


def heatmap_name(path: str) -> str:
    """The PNG is named after a hash of the file's absolute path: file names often carry
    patient names, and heatmap folders get shared."""
    return hashlib.sha256(state_key(path)).hexdigest()[:24] + ".png"


def _save_heatmap(image, cam, path: str, folder: Path) -> str:
    target = Path(folder) / heatmap_name(path)
    try:
        return str(save_heatmap(image, cam, target))
    except OSError as exc:  # a full disk or a folder made read-only mid-run
        raise DcxError(f"cannot write heatmap {target}: {exc.strerror or exc}") from exc


def count_rows(rows: list[dict], chunk: Chunk, stats: Stats) -> None:
    stats.files += len(rows)
    stats.decoded += len(chunk.todo)
    stats.inferred += sum(rows[i]["status"] == "ok" for i in chunk.todo)
    stats.reused += len(chunk.reused)
    if stats.first_scores is None and stats.inferred:
        stats.first_scores = (stats.elapsed, stats.inferred)
    for i in chunk.todo:
        add_score(stats.scores_new, rows[i]["p_positive"])
        stats.flagged_new += bool(rows[i]["flagged"])
        stats.ood_new += rows[i]["in_distribution"] is False
    for row in rows:
        add_score(stats.scores_all, row["p_positive"])
        stats.status[row["status"]] += 1
        stats.flagged += bool(row["flagged"])
        stats.ood += row["in_distribution"] is False
        if row["format"]:
            stats.formats[row["format"]] += 1
        if row["reason"] and row["status"] == "error":
            stats.reasons[row["reason"]] += 1
        if row.get("sr_status"):
            stats.reports[row["sr_status"].split(":")[0]] += 1


def _after_first_scores(stats: Stats, wall: float) -> dict:
    """When the first scores came, and the rate of the images scored after them: the run's
    steady pace, apart from what starting it cost (None when nothing was scored after them)."""
    if stats.first_scores is None:
        return {"first_scores_s": None, "images_per_s_after_first": None}
    at, scored = stats.first_scores
    later, seconds = stats.inferred - scored, wall - at
    return {"first_scores_s": round(at, 3),
            "images_per_s_after_first": round(later / seconds, 2) if later and seconds > 0 else None}


def run_summary(options: ScreenOptions, backend, card, stats: Stats, completed: bool) -> dict:
    wall = stats.elapsed
    busy = wall - stats.setup_s  # images/s leaves out the fixed cost of model load and pipeline builds
    return {
        "completed": completed,
        "dcx_version": dcx_version(),
        "model_id": card.model_id,
        "model": {"arch": card.arch, "classes": list(card.classes), "positive": card.positive,
                  "threshold": card.threshold, "threshold_policy": card.threshold_policy,
                  "input_size": card.input_size, "validation": card.metrics.get("validation")},
        "threshold": options.site.threshold if options.site else card.threshold,
        "threshold_source": "site" if options.site else "card",
        "site": options.site.to_dict() if options.site else None,
        "engine": str(options.engine),
        "backend": backend.name,
        "precision": backend.precision,
        "device": str(backend.device),
        "output": str(options.out),
        "format": format_for(options.out, options.fmt),
        "state": str(options.state) if options.state else None,
        "shard": str(options.shard) if options.shard else None,
        "files": stats.files,
        "counts": {s: stats.status.get(s, 0) for s in ("ok", "skipped", "error")},
        "flagged": stats.flagged,
        # ok rows the model was not trained for: never flagged, never counted as normal
        "out_of_distribution": stats.ood,
        "ood_threshold": card.ood_threshold,
        "decoded_this_run": stats.decoded,
        "scored_this_run": stats.inferred,
        "flagged_this_run": stats.flagged_new,
        "out_of_distribution_this_run": stats.ood_new,
        "reused_from_state": stats.reused,
        "images_per_s": round(stats.inferred / busy, 2) if busy > 0 else None,
        **_after_first_scores(stats, wall),
        "files_per_s": round(stats.files / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "setup_s": round(stats.setup_s, 3),
        "cpu_s": round(stats.cpu_s, 3),
        "stage_s": {k: round(v, 3) for k, v in stats.stage_s.items()},
        "formats": dict(stats.formats.most_common()),
        "transfer_syntaxes": dict(stats.transfer_syntaxes.most_common()),
        "top_error_reasons": dict(stats.reasons.most_common(20)),
        "reports": dict(stats.reports.most_common()),
        "score_histogram": {"all": stats.scores_all, "scored_this_run": stats.scores_new},
        "batch_size": options.batch_size,
        "decode_threads": options.decode_threads,
        "started": datetime.fromtimestamp(stats.started, tz=timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }
