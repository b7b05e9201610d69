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
run resumes without duplicates, and :mod:`dcx.engine.scoring` for the chunking and scoring
this loop shares with the Ray runner.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

from dcx.core.devices import device_of
from dcx.core.errors import DcxError
from dcx.core.files import write_json
from dcx.core.progress import Progress

from .backends import open_backend, read_engine_card
from .results import RowSchema, open_writer
from .sr import Reporter, file_header
from .scoring import (Chunk, ScreenOptions, Stats, candidates, chunks, count_rows, decode_device_before_load,
                      open_decoder, reusable_rows, run_summary, score_chunk, state_profile)
from .state import StateDB

#: Decoded chunks waiting for inference (bounds memory: PREFETCH x batch of images).
PREFETCH = 2
#: Until the first chunk is taken -- while the model loads -- decoding may run further ahead, up
#: to this many bytes of decoded images: an OpenVINO graph compiled for a static batch loads on
#: one core for ~2 s (densenet121), and the decoder has the other one meanwhile.
LOADING_PREFETCH_BYTES = 64 << 20


def screen(options: ScreenOptions) -> dict:
    """Run one screening pass and return its summary (also written to ``options.summary``).

    Raises KeyboardInterrupt after saving what is done (the partial output stays beside the
    output, the state database holds every committed row); the caller reports it.
    """
    stats = Stats()
    completed = False
    with contextlib.ExitStack() as stack:  # closes in reverse: writer, backend, producer, state (or backend last)
        t0 = time.perf_counter()
        backend = None
        decode_device = decode_device_before_load(options)
        if decode_device is None:  # the backend decides where decoding runs: load it first
            backend = stack.enter_context(open_backend(options.engine, device=options.device,
                                                       batch_size=options.batch_size))
            card, decode_device = backend.card, device_of(backend.device)
        else:  # from the sidecar: the model loads later, while decoding runs
            card = read_engine_card(options.engine)
        stats.add_time("setup", time.perf_counter() - t0)
        reporter = open_reporter(card, options)
        schema = (RowSchema if reporter is None else reporter.schema).for_card(card, options.include_phi,
                                                                               options.site)
        state = last_run = None
        if options.state:
            state = stack.enter_context(StateDB(options.state, state_profile(card.model_id, options)))
            if options.dicomweb is not None:
                last_run = options.dicomweb.last_run(state)
        chunk_bytes = options.batch_size * card.input_size ** 2 * 4  # (N, 1, S, S) float32
        producer = stack.enter_context(_Producer(
            chunks(candidates(options, last_run=last_run), state, options.batch_size, stats,
                   reusable=reusable_rows(options)),
            lambda: open_decoder(card, decode_device, options), stats,
            decode=options.dicomweb.decode if options.dicomweb is not None else None,
            ahead_while_loading=max(PREFETCH, LOADING_PREFETCH_BYTES // chunk_bytes)))
        if backend is None:  # decoding already runs in the producer: the model loads meanwhile
            t0 = time.perf_counter()
            backend = stack.enter_context(open_backend(options.engine, device=options.device,
                                                       batch_size=options.batch_size))
            stats.add_time("setup", time.perf_counter() - t0)
        writer = stack.enter_context(open_writer(options.out, schema.columns, options.fmt))
        progress = _Progress(options, stats) if options.progress else None
        try:
            for chunk in producer:
                rows = score_chunk(chunk, backend, schema, options, stats)
                t0 = time.perf_counter()
                reported = send_reports(reporter, chunk, rows) if reporter is not None else []
                if state is not None:  # commit first: the database is the source of truth
                    state.record((chunk.files[i], rows[i]) for i in sorted(set(chunk.todo) | set(reported)))
                writer.write(rows)
                stats.add_time("write", time.perf_counter() - t0)
                count_rows(rows, chunk, stats)
                if progress:
                    progress.update()
            writer.commit()
            completed = True
            if state is not None and options.dicomweb is not None:
                options.dicomweb.mark_completed(state, stats.started)
        finally:
            if progress:
                progress.close()
            summary = run_summary(options, backend, card, stats, completed)
            if options.summary:
                write_summary(options.summary, summary, run_failed=not completed)
    return summary


def write_summary(path: Path, summary: dict, *, run_failed: bool = False) -> None:
    """The summary, or one error sentence; after a failed run (a full disk, Ctrl-C) a summary
    that cannot be written either stays unwritten, so the run's own error is the one reported."""
    try:
        write_json(path, summary)
    except OSError as exc:
        if not run_failed:
            raise DcxError(f"cannot write the run summary {path}: {exc.strerror or exc}") from exc


def open_reporter(card, options: ScreenOptions) -> Reporter | None:
    """The run's Structured Report maker (dcx.engine.sr), or None without --sr-to / --sr-dir."""
    if options.sr_store is None and options.sr_dir is None:
        return None
    header = options.dicomweb.header if options.dicomweb is not None else file_header
    return Reporter(card, header, store=options.sr_store, folder=options.sr_dir)


def send_reports(reporter: Reporter, chunk: Chunk, rows: list[dict]) -> list[int]:
    """Report every row of the chunk that lacks its report (new rows and reused ones whose
    report failed before); the indices of the reused rows that changed."""
    work = [i for i, row in enumerate(rows) if reporter.wants(row)]
    reporter.send([(chunk.files[i].path, rows[i]) for i in work])
    return [i for i in work if i in chunk.reused]


class _Producer:
    """Discovery, state lookup and decoding in a background thread, ``PREFETCH`` chunks ahead
    (``ahead_while_loading`` until the consumer takes its first chunk)."""

    _END = object()

    def __init__(self, chunks: Iterator[Chunk], make_decoder, stats: Stats, decode=None,
                 ahead_while_loading: int = PREFETCH):
        self._chunks = chunks
        self._make_decoder = make_decoder
        #: ``decode(decoder, paths)``: how paths become a DecodedBatch (DICOMweb retrieves first)
        self._decode = decode or (lambda decoder, paths: decoder.decode(paths))
        self._stats = stats
        self._queue: queue.Queue = queue.Queue()  # bounded by _room: items put and not yet taken
        self._room = threading.Condition()
        self._ahead, self._limit = 0, max(ahead_while_loading, PREFETCH)
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
                        chunk.decoded = self._decode(decoder, [chunk.files[i].path for i in chunk.todo])
                        for stage, seconds in decoder.timings.items():
                            self._stats.add_time(stage, seconds - before[stage])
                    if not self._put(chunk):
                        return
            self._put(self._END)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._put(exc)

    def _put(self, item) -> bool:
        with self._room:
            while self._ahead >= self._limit and not self._stop.is_set():
                self._room.wait(timeout=0.1)
            if self._stop.is_set():
                return False
            self._ahead += 1
        self._queue.put(item)
        return True

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._queue.get()
            with self._room:  # the model is loaded: from now on PREFETCH ahead
                self._ahead, self._limit = self._ahead - 1, PREFETCH
                self._room.notify()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Progress:
    """The run's progress line (see :mod:`dcx.core.progress`): files done of all files, with
    images/s and an ETA. The total comes from a second discovery pass in a background thread
    (listing only, no stat: cheap next to decoding); until it finishes there is no ETA.
    """

    def __init__(self, options: ScreenOptions, stats: Stats):
        self.stats = stats
        self.line = Progress("dcx-infer", unit="files")
        if options.files_from != "-" and options.dicomweb is None:  # stdin is read once; a PACS is queried once
            threading.Thread(target=self._count, args=(options,), name="dcx-count", daemon=True).start()

    def _count(self, options: ScreenOptions) -> None:
        self.line.total = sum(1 for _ in candidates(options, stat_files=False))

    def _detail(self) -> str:
        s = self.stats
        return f"{s.inferred / max(s.elapsed, 1e-9):.1f} img/s scored"

    def update(self) -> None:
        self.line.update(self.stats.files, self._detail())

    def close(self) -> None:
        self.line.close(self._detail(), done=self.stats.files)
