"""``dcx-infer --ray``: the same screening run spread over a Ray cluster with Ray Data.

What travels through Ray is only the list of file paths. Each worker is an actor holding one
engine backend and one decoder -- the very objects a local run uses, scoring files with the
code the local run uses (:mod:`dcx.engine.scoring`) -- that reads, decodes and scores its batches
where the files are. One actor per GPU when the cluster has GPUs, else one per CPU, leaving
one CPU free so the driver and Ray's own stages are never starved.

Rules learnt the hard way:

- **Every file gets its row.** Failures are caught per file inside the actor (a batch that
  raises is retried file by file; the file that still raises gets an ``error`` row), so no
  block ever fails and nothing relies on Ray tolerating failed blocks, which drops whole
  blocks of good rows silently. The driver checks off every path it sent.
- **No silent hang.** When no result arrives for ``timeout_s`` seconds the run stops with
  an error that says so; finished rows are already in the state database.
- **Ray only here.** Ray is imported inside these functions; the single-machine path never
  loads it (``pip install 'dcx[ray]'`` adds it).

The driver lists the archive, settles what it can itself (unreadable entries, rows reused
from the state database), and holds the paths left to score in memory (a few hundred bytes
per file) to send them and check them off. Results come back to the driver, which commits
them to the state database and writes them as Parquet parts (``part-00000.parquet``, ...,
each sorted by path) into a folder named by ``--out``, with the columns of a local run. The folder appears under its
name only when the run completes (meanwhile ``<out>.partial/``); read it with pyarrow,
pandas or DuckDB as one dataset, or turn it into one file with ``dcx-merge``.

On a cluster, dcx (with the model file) must be installed on every node and the archive
mounted at the same path: give ARCHIVE as an absolute path. Actors work in the driver's
working directory when the node has it, so relative paths work on one machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator

from dcx.core.devices import device_of
from dcx.core.errors import DcxError
from dcx.core.files import write_json

from . import scoring
from .backends import open_backend, read_engine_card
from .discover import STAT_COLUMNS, Candidate
from .merge import row_key
from .results import RowSchema, format_for, open_writer, partial_path
from .state import StateDB

#: Seconds without a single finished batch before the run is declared stuck.
DEFAULT_TIMEOUT_S = 600.0
#: Rows per Parquet part.
PART_ROWS = 8192


def screen_on_ray(options: scoring.ScreenOptions, address: str = "local", *,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Screen like :func:`dcx.engine.run.screen`, on Ray; returns the run summary.

    ``options.out`` names the folder of Parquet parts. ``address``: ``local``, ``auto``, ``HOST:PORT``
    or ``ray://HOST:PORT`` (:func:`dcx.engine.cli.parse_address` checks it);
    an already initialised Ray connection (``ray.init`` by the caller) is used as it is.
    """
    if (options.fmt or (format_for(options.out) if Path(options.out).suffix else "parquet")) != "parquet":
        raise DcxError(f"--ray writes a folder of Parquet parts: name --out like results.parquet "
                       f"(got {options.out}); dcx-merge turns the folder into CSV or JSONL")

    ray = _import_ray()
    card = read_engine_card(options.engine)
    schema = RowSchema.for_card(card, options.include_phi, options.site)
    stats = scoring.Stats()
    backend_info = SimpleNamespace(name=None, precision=None, device=None)  # from the actors' replies
    ray_info = {"address": address, "actors": 0}
    completed = False
    with contextlib.ExitStack() as stack:
        state = None
        if options.state:
            state = stack.enter_context(StateDB(options.state, scoring.state_profile(card.model_id, options)))
        parts = _Parts(options.out, schema.columns)
        try:
            pending = _Pending()
            for chunk in scoring.chunks(scoring.candidates(options), state, options.batch_size, stats,
                                        reusable=scoring.reusable_rows(options)):
                settled = scoring.Chunk()  # what the driver settles itself: unreadable or reused files
                for i, candidate in enumerate(chunk.files):
                    if i in chunk.todo:
                        pending.add(candidate)
                    else:
                        settled.add(candidate, chunk.reused.get(i))
                _keep(scoring.score_chunk(settled, None, schema, options, stats), settled, parts, stats)
            if pending.count:
                if _connect(ray, address):
                    stack.callback(ray.shutdown)
                actor_options, pool = _actor_pool(ray, options)
                ray_info.update(actors=pool["concurrency"], actor_resources=pool)
                ray.data.DataContext.get_current().enable_progress_bars = options.progress and sys.stderr.isatty()
                dataset = ray.data.from_arrow(pending.blocks(options.batch_size)).map_batches(
                    _ScoreFiles, batch_size=options.batch_size, batch_format="pyarrow",
                    fn_constructor_kwargs=dict(options=actor_options, cwd=os.getcwd()), **pool)
                t0 = time.perf_counter()
                for batch in _watch(dataset.iter_batches(batch_size=None, batch_format="pyarrow"),
                                    timeout_s, lambda: f"{pending.settled:,} of {pending.count:,} files scored"):
                    files, rows = _unpack(batch)
                    pending.settle(files)
                    if state is not None:  # commit first: the database is the source of truth
                        state.record(zip(files, rows))
                    scored = scoring.Chunk()
                    for f in files:
                        scored.add(f, None)
                    _keep(rows, scored, parts, stats)
                    backend_info = SimpleNamespace(**json.loads(batch["backend"][0].as_py()))
                ray_info["ray_s"] = round(time.perf_counter() - t0, 3)
                pending.check_done()
            parts.commit()
            completed = True
        finally:
            summary = scoring.run_summary(options, backend_info, card, stats, completed)
            summary.update(format="parquet parts", parts=parts.written, ray=ray_info)
            if options.summary:
                write_json(options.summary, summary)
    return summary


def _keep(rows: list[dict], chunk: scoring.Chunk, parts: "_Parts", stats) -> None:
    parts.add(rows)
    scoring.count_rows(rows, chunk, stats)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate import)
    except ImportError as exc:
        raise DcxError("--ray needs Ray Data: pip install 'dcx[ray]'") from exc
    return ray


def _connect(ray, address: str) -> bool:
    """Connect (or start a local instance); True when this call started it, so it stops it."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def _actor_pool(ray, options: scoring.ScreenOptions) -> tuple[scoring.ScreenOptions, dict]:
    """Actor options and ``map_batches`` resources: one actor per GPU, or one per CPU but one.
    ``auto`` stays ``auto`` on GPU actors: each actor's backend decides (an ONNX model without
    onnxruntime-gpu runs on the CPU there, and the decoder follows the backend)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if options.device == "gpu" and not gpus:
        raise DcxError("--device gpu, but the Ray cluster has no GPU")
    if gpus and options.device != "cpu":
        return options, dict(num_gpus=1, num_cpus=1, concurrency=gpus)
    # one thread each for decoding and for the model: the actor owns one CPU
    return (dataclasses.replace(options, device="cpu", decode_threads=1),
            dict(num_cpus=1, concurrency=max(1, cpus - 1)))


class _ScoreFiles:
    """The Ray actor: one backend and one decoder, scoring batches of paths into rows."""

    def __init__(self, options: scoring.ScreenOptions, cwd: str):
        if os.path.isdir(cwd):  # relative archive, engine and heatmap paths mean what they meant
            os.chdir(cwd)

        self.options = options
        self.backend = open_backend(options.engine, device=options.device,
                                    threads=1 if options.device == "cpu" else None, batch_size=options.batch_size)
        self.schema = RowSchema.for_card(self.backend.card, options.include_phi, options.site)
        self.stats = scoring.Stats()
        self.backend_info = json.dumps({"name": self.backend.name, "precision": self.backend.precision,
                                        "device": str(self.backend.device)})
        self._decoder_stack = contextlib.ExitStack()
        self._decoder = None

    def __call__(self, batch) -> dict[str, list]:
        files = _files_of(batch)
        rows = self._score(files)
        return {"path": [os.fsencode(f.path) for f in files],
                **{name: [getattr(f, name) for f in files] for name in STAT_COLUMNS},
                "row": [json.dumps(r) for r in rows],
                "backend": [self.backend_info] * len(files)}

    def _score(self, files: list[Candidate]) -> list[dict]:
        """The local run's scoring; a batch that raises is retried file by file, and a file
        that still raises gets its ``error`` row, so a failure never costs other files."""
        try:
            chunk = scoring.Chunk()
            for f in files:
                chunk.add(f, None)
            if self._decoder is None:
                self._decoder = self._decoder_stack.enter_context(
                    scoring.open_decoder(self.backend.card, device_of(self.backend.device), self.options))
            chunk.decoded = self._decoder.decode([f.path for f in files])
            return scoring.score_chunk(chunk, self.backend, self.schema, self.options, self.stats)
        except Exception as exc:
            self._decoder_stack.close()  # a failed decoder may be dead (DALI): build a new one
            self._decoder = None
            if len(files) > 1:
                return [row for f in files for row in self._score([f])]
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            return [self.schema.row(files[0].path, files[0].size, files[0].mtime_ns, status="error",
                                    reason=reason)]


class _Pending:
    """Files sent to Ray, checked off as their rows return: none lost, none twice."""

    def __init__(self):
        self.paths: list[bytes] = []  # os.fsencode'd: exact for any file name, and Arrow-safe
        self.stats: dict[str, list[int]] = {name: [] for name in STAT_COLUMNS}
        self._open: set[bytes] = set()
        self.settled = 0

    @property
    def count(self) -> int:
        return len(self.paths)

    def add(self, candidate: Candidate) -> None:
        key = os.fsencode(candidate.path)
        self.paths.append(key)
        for name, values in self.stats.items():
            values.append(getattr(candidate, name))
        self._open.add(key)

    def blocks(self, rows: int) -> list:
        """The pending files as Arrow tables of ``rows`` files: one Ray block per model batch."""
        import pyarrow as pa

        return [pa.table({"path": pa.array(self.paths[i : i + rows], pa.binary()),
                          **{name: pa.array(values[i : i + rows], pa.int64()) for name, values in self.stats.items()}})
                for i in range(0, self.count, rows)]

    def settle(self, files: Iterable[Candidate]) -> None:
        for f in files:
            key = os.fsencode(f.path)
            if key not in self._open:
                raise DcxError(f"Ray returned a row for {f.path!r} that was not pending (twice?); "
                               "the run stops rather than publish a wrong table")
            self._open.remove(key)
            self.settled += 1

    def check_done(self) -> None:
        if self._open:
            example = os.fsdecode(next(iter(self._open)))
            raise DcxError(f"Ray finished without rows for {len(self._open)} file(s), e.g. {example!r}; "
                           "nothing was published -- rerun to score them")


def _files_of(batch) -> list[Candidate]:
    """The files of an Arrow batch with ``path`` (bytes) and the :data:`STAT_COLUMNS`."""
    stats = [batch[name].to_pylist() for name in STAT_COLUMNS]
    return [Candidate(os.fsdecode(p), **dict(zip(STAT_COLUMNS, values)))
            for p, *values in zip(batch["path"].to_pylist(), *stats)]


def _unpack(batch) -> tuple[list[Candidate], list[dict]]:
    """A result batch from the actors: the files and their rows."""
    return _files_of(batch), [json.loads(r) for r in batch["row"].to_pylist()]


def _watch(batches: Iterable, timeout_s: float, progress) -> Iterator:
    """Yield from ``batches`` (iterated in a helper thread); raise when none arrives for
    ``timeout_s`` seconds, saying how far the run got (``progress()``)."""
    inbox: queue.Queue = queue.Queue(maxsize=2)
    end = object()

    def pump():
        try:
            for batch in batches:
                inbox.put(batch)
            inbox.put(end)
        except BaseException as exc:  # handed to the driver, which raises it
            inbox.put(exc)

    threading.Thread(target=pump, name="dcx-ray-results", daemon=True).start()
    while True:
        try:
            item = inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise DcxError(
                f"no result from Ray for {timeout_s:g} s ({progress()}): a worker is stuck, or "
                "actors wait for resources the cluster cannot give. Finished rows are in the state "
                "database: rerun to resume (raise --ray-timeout for very slow models)") from None
        if item is end:
            return
        if isinstance(item, BaseException):
            if isinstance(item, DcxError) or not isinstance(item, Exception):
                raise item
            first = (str(item).strip().splitlines() or [""])[0][:300]
            raise DcxError(f"the Ray run failed: {type(item).__name__}: {first}") from item
        yield item


class _Parts:
    """Rows into Parquet parts in ``<out>.partial/``, moved onto ``out`` on :meth:`commit`."""

    def __init__(self, out: Path, columns: list[str], part_rows: int = PART_ROWS):
        self.out, self.columns, self.part_rows = Path(out), columns, part_rows
        self.folder = partial_path(out)
        _remove(self.folder)  # a killed run's leftovers: the state database holds its rows
        self.folder.mkdir(parents=True)
        self._rows: list[dict] = []
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        while len(self._rows) >= self.part_rows:
            self._flush(self._rows[: self.part_rows])
            self._rows = self._rows[self.part_rows :]

    def _flush(self, rows: list[dict]) -> None:
        writer = open_writer(self.folder / f"part-{self.written:05d}.parquet", self.columns, "parquet")
        writer.write(sorted(rows, key=row_key))
        writer.commit()
        self.written += 1

    def commit(self) -> None:
        if self._rows or not self.written:  # an empty archive still gets a part with the columns
            self._flush(self._rows)
            self._rows = []
        _remove(self.out)
        os.replace(self.folder, self.out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
