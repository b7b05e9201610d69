"""The screening loop: discover -> (state lookup) -> decode -> infer -> rows -> state + output.

Two threads, so that decoding overlaps inference:

- the **producer** walks the archive, asks the state database which files are already done,
  cuts the stream into *chunks* (at most ``batch_size`` files to score, plus any already-done
  or unreadable files that sit between them in discovery order) and decodes each chunk's new
  files; up to ``PREFETCH`` decoded chunks wait in a bounded queue (DALI and ONNX Runtime
  release the GIL, so the decode of chunk k+1 runs while chunk k is inferred);
- the **main thread** runs the backend on a chunk, builds one row per file in discovery
  order, writes heatmaps of flagged images, commits the new rows to the state database and
  then appends all rows to the output.

Exactly one row per input file, always: files discovery could not read, files the decoder
refused (with its reason), files reused from the state database and scored files all yield
their row in the same place of the stream. See :mod:`dcx.engine.state` for how a killed
run resumes without duplicates.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from dcx.train.errors import DcxError
from dcx.train.files import write_json

from .discover import Candidate, discover
from .results import RowSchema, display_path, format_for, open_writer
from .shard import Shard, select
from .state import StateDB, state_key

#: Decoded chunks waiting for inference (bounds memory: PREFETCH x batch of images).
PREFETCH = 2
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
        #: rows this run: all, decoded this run, reused from state, scored ok this run, flagged
        self.files = self.decoded = self.reused = self.inferred = self.flagged = 0
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


def screen(options: ScreenOptions) -> dict:
    """Run one screening pass and return its summary (also written to ``options.summary``).

    Raises KeyboardInterrupt after saving what is done (the partial output stays beside the
    output, the state database holds every committed row); the caller reports it.
    """
    from .backends import open_backend  # heavy imports only when a run starts

    stats = Stats()
    completed = False
    backend_device = "cuda" if options.device == "gpu" else options.device
    with contextlib.ExitStack() as stack:  # closes in reverse: producer, writer, state, backend
        t0 = time.perf_counter()
        backend = stack.enter_context(open_backend(options.engine, device=backend_device))
        stats.add_time("setup", time.perf_counter() - t0)
        card = backend.card
        schema = RowSchema.for_card(card, options.include_phi)
        state = None
        if options.state:
            state = stack.enter_context(StateDB(options.state, state_profile(card.model_id, options)))
        writer = stack.enter_context(open_writer(options.out, schema.columns, options.fmt))
        producer = stack.enter_context(_Producer(
            chunks(candidates(options), state, options.batch_size, stats, reusable=reusable_rows(options)),
            lambda: open_decoder(card, backend, options), stats))
        progress = _Progress(options, stats) if options.progress else None
        try:
            for chunk in producer:
                rows = score_chunk(chunk, backend, schema, options, stats)
                t0 = time.perf_counter()
                if state is not None:  # commit first: the database is the source of truth
                    state.record((chunk.files[i], rows[i]) for i in chunk.todo)
                writer.write(rows)
                stats.add_time("write", time.perf_counter() - t0)
                count_rows(rows, chunk, stats)
                if progress:
                    progress.update()
            writer.commit()
            completed = True
        finally:
            if progress:
                progress.close()
            summary = run_summary(options, backend, card, stats, completed)
            if options.summary:
                write_summary(options.summary, summary)
    return summary


def write_summary(path: Path, summary: dict) -> None:
    try:
        write_json(path, summary)
    except OSError as exc:
        raise DcxError(f"cannot write the run summary {path}: {exc.strerror or exc}") from exc


def state_profile(model_id: str, options: ScreenOptions) -> str:
    """The state key's model part: the model id, the model file's content (a re-export at
    another precision, or a retrained file copied over the old one, keeps the model id of its
    card but scores differently) and the options that change a row's content, so switching
    --include-phi or series rules never reuses rows made without them."""
    from dcx.export.artefact import sha256_file

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


def candidates(options: ScreenOptions, stat_files: bool = True) -> Iterator[Candidate]:
    """The discovery stream of this run, never including dcx's own output files."""
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


def open_decoder(card, backend, options: ScreenOptions):
    from .decode import Decoder
    from .dicom import SeriesRules

    return Decoder(card.preprocess(), device="gpu" if backend.device.type == "cuda" else "cpu",
                   batch_size=options.batch_size, num_threads=options.decode_threads,
                   include_phi=options.include_phi, series_rules=SeriesRules() if options.series_rules else None)


class _Producer:
    """Discovery, state lookup and decoding in a background thread, ``PREFETCH`` chunks ahead."""

    _END = object()

    def __init__(self, chunks: Iterator[Chunk], make_decoder, stats: Stats):
        self._chunks = chunks
        self._make_decoder = make_decoder
        self._stats = stats
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dcx-decode", daemon=True)

    def __enter__(self) -> "_Producer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()  # finish the current decode and quit; never blocks on the queue
        self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            with self._make_decoder() as decoder:
                for chunk in self._chunks:
                    if chunk.todo:
                        before = decoder.timings
                        chunk.decoded = decoder.decode([chunk.files[i].path for i in chunk.todo])
                        for stage, seconds in decoder.timings.items():
                            self._stats.add_time(stage, seconds - before[stage])
                    if not self._put(chunk):
                        return
            self._put(self._END)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


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
    probs = cams = None
    if len(batch.images):
        t0 = time.perf_counter()
        probs, cams = backend.infer(batch.images)
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
            row = schema.row(c.path, c.size, c.mtime_ns, status="ok", reason=outcome.note, probs=probs[k], **common)
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
    return row


def heatmap_name(path: str) -> str:
    """The PNG is named after a hash of the file's absolute path: file names often carry
    patient names, and heatmap folders get shared."""
    return hashlib.sha256(state_key(path)).hexdigest()[:24] + ".png"


def _save_heatmap(image, cam, path: str, folder: Path) -> str:
    from .heatmaps import save_heatmap

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
    for row in rows:
        stats.status[row["status"]] += 1
        stats.flagged += bool(row["flagged"])
        if row["format"]:
            stats.formats[row["format"]] += 1
        if row["reason"] and row["status"] == "error":
            stats.reasons[row["reason"]] += 1


def run_summary(options: ScreenOptions, backend, card, stats: Stats, completed: bool) -> dict:
    from dcx.train.card import dcx_version  # imports torch: not needed for dcx-infer --help

    wall = stats.elapsed
    busy = wall - stats.setup_s  # images/s leaves out the fixed cost of model load and pipeline builds
    return {
        "completed": completed,
        "dcx_version": dcx_version(),
        "model_id": card.model_id,
        "model": {"arch": card.arch, "classes": list(card.classes), "positive": card.positive,
                  "threshold": card.threshold, "input_size": card.input_size},
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
        "decoded_this_run": stats.decoded,
        "scored_this_run": stats.inferred,
        "reused_from_state": stats.reused,
        "images_per_s": round(stats.inferred / busy, 2) if busy > 0 else None,
        "files_per_s": round(stats.files / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "setup_s": round(stats.setup_s, 3),
        "cpu_s": round(stats.cpu_s, 3),
        "stage_s": {k: round(v, 3) for k, v in stats.stage_s.items()},
        "formats": dict(stats.formats.most_common()),
        "transfer_syntaxes": dict(stats.transfer_syntaxes.most_common()),
        "top_error_reasons": dict(stats.reasons.most_common(20)),
        "batch_size": options.batch_size,
        "decode_threads": options.decode_threads,
        "started": datetime.fromtimestamp(stats.started, tz=timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }


class _Progress:
    """``12,345/80,000 files  95.3 img/s  ETA 0:10:05`` on stderr, redrawn at most twice a second.

    The total comes from a second discovery pass in a background thread (listing only, no
    stat: cheap next to decoding); until it finishes there is no ETA.
    """

    def __init__(self, options: ScreenOptions, stats: Stats):
        self.stats = stats
        self.total: int | None = None
        self._last = 0.0
        if options.files_from != "-":  # standard input can be read only once
            threading.Thread(target=self._count, args=(options,), name="dcx-count", daemon=True).start()

    def _count(self, options: ScreenOptions) -> None:
        self.total = sum(1 for _ in candidates(options, stat_files=False))

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        s, wall = self.stats, max(self.stats.elapsed, 1e-9)
        done = f"{s.files:,}/{self.total:,}" if self.total is not None else f"{s.files:,}"
        text = f"\r{done} files  {s.inferred / wall:.1f} img/s"
        if self.total and s.files:
            eta = max(0.0, (self.total - s.files) * wall / s.files)
            text += f"  ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        sys.stderr.write(text + "\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        self.update(force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()
