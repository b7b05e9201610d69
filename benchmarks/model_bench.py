"""Model-only throughput: the compute ceiling the end-to-end engine is measured against.

Each artefact is opened with the engine's own :func:`dcx.engine.backends.open_backend`, so
the sessions, providers and thread settings are the ones ``dcx-infer`` uses; only the input
differs: batches prepared in memory, so no file is read or decoded. Convolutional networks
cost the same whatever the pixel values, so seeded random unit-gray tensors stand in for
preprocessed radiographs.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from dcx.core.artefact import read_sidecar
from dcx.core.errors import DcxError
from dcx.core.models import model_cost
from dcx.engine.backends import open_backend

from . import report as rep
from .measure import summarise

#: What the engine opens, by extension (a directory means: every one of these inside it).
MODEL_SUFFIXES = (".onnx", ".plan", ".engine", ".pt")


def expand_engines(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given; a directory stands for the model files directly inside it, sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
            if not inside:
                raise DcxError(f"no model files ({', '.join(MODEL_SUFFIXES)}) in {path}")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise DcxError(f"engine not found: {path}")
    return found


def bench_backends(backends: list, batch_sizes: list[int], *, size: int | None = None, warmup: int = 2,
                   repeat: int = 5) -> list[list[dict]]:
    """Latency and images/s of each backend's ``infer`` per batch size (median over ``repeat``
    calls), and the process CPU time per image (on a GPU: the host's share only); one list of
    rows per backend.

    The timed calls take turns, one call of each backend after the other: on a machine whose
    speed drifts (a shared VM), every artefact then sees the same phases and their ratio holds
    even when the absolute figures move."""
    for backend in backends:
        if size is not None and size != backend.card.input_size:
            raise DcxError(f"{backend.card.arch} takes {backend.card.input_size} px inputs (fixed when it was "
                           f"exported); --size {size} needs a model exported at that size")
    rows: list[list[dict]] = [[] for _ in backends]
    for batch in batch_sizes:
        inputs = []
        for backend in backends:
            px = backend.card.input_size
            images = torch.rand(batch, 1, px, px, generator=torch.Generator().manual_seed(0)).to(backend.device)
            for _ in range(warmup):
                backend.infer(images)
            inputs.append(images)
        latencies: list[list[float]] = [[] for _ in backends]
        cpu = [0.0] * len(backends)  # every thread of this process: the backend's pools
        for _ in range(repeat):
            for k, (backend, images) in enumerate(zip(backends, inputs)):
                started_cpu, start = time.process_time(), time.perf_counter()
                backend.infer(images)
                latencies[k].append(time.perf_counter() - start)
                cpu[k] += time.process_time() - started_cpu
        for k in range(len(backends)):
            lat = summarise(latencies[k])
            rows[k].append({"batch_size": batch, "latency_s": lat,
                            "images_per_s": batch / lat["median"],
                            "images_per_s_range": [batch / lat["max"], batch / lat["min"]],
                            "cpu_ms_per_image": 1000.0 * cpu[k] / (batch * repeat)})
    return rows


def bench_model_files(paths: list[str | os.PathLike], batch_sizes: list[int], *, size: int | None = None,
                      warmup: int = 2, repeat: int = 5) -> list[dict]:
    """Open every artefact as the engine would for each batch size (OpenVINO compiles for it) and
    benchmark them in turn; JSON-able records."""
    records: list[dict] = []
    for batch in batch_sizes:
        with contextlib.ExitStack() as stack:
            backends = [stack.enter_context(open_backend(path, batch_size=batch)) for path in paths]
            results = bench_backends(backends, [batch], size=size, warmup=warmup, repeat=repeat)
            if not records:
                records = [_record(path, backend, warmup, repeat) for path, backend in zip(paths, backends)]
            for record, rows in zip(records, results):
                record["results"] += rows
    return records


def _record(path, backend, warmup: int, repeat: int) -> dict:
    """What a benchmark record says of its artefact (its ``results`` filled per batch size)."""
    cost = model_cost(backend.card.arch, backend.card.input_size, len(backend.card.classes))
    return {"engine": os.fspath(path), "backend": backend.name, "precision": _precision_label(path, backend),
            "arch": backend.card.arch, "input_size": backend.card.input_size, "params": cost["params"],
            "gflops": cost["gflops"], "device": str(backend.device), "warmup": warmup, "repeat": repeat,
            "results": []}


def bench_model_file(path: str | os.PathLike, batch_sizes: list[int], *, size: int | None = None,
                     warmup: int = 2, repeat: int = 5) -> dict:
    """One artefact's record (:func:`bench_model_files`)."""
    return bench_model_files([path], batch_sizes, size=size, warmup=warmup, repeat=repeat)[0]


def _precision_label(path, backend) -> str:
    """``int8`` graphs carry their target (``int8 cpu`` / ``int8 tensorrt``): two flavours, two speeds."""
    sidecar = read_sidecar(path) if Path(path).suffix.lower() == ".onnx" else None
    target = ((sidecar or {}).get("calibration") or {}).get("target")
    return f"{backend.precision} {target}" if target else backend.precision


def markdown(records: list[dict], machine: dict) -> str:
    """One row per artefact and batch size."""
    rows = [[_short(r["engine"]), f"{r['backend']} {r['precision']}", r["input_size"], row["batch_size"],
             rep.fmt(row["images_per_s"]), f"{rep.fmt(row['images_per_s_range'][0])}–{rep.fmt(row['images_per_s_range'][1])}",
             rep.fmt(1000 * row["latency_s"]["median"], 1), rep.fmt(row["cpu_ms_per_image"], 1)]
            for r in records for row in r["results"]]
    turns = ", the artefacts taking turns call by call" if len(records) > 1 else ""
    return "\n".join([f"### Model-only throughput (prepared tensors; {records[0]['repeat']} timed calls per row "
                      f"after {records[0]['warmup']} warm-up{turns})", "", f"Machine: {rep.machine_line(machine)}", "",
                      rep.table(["artefact", "backend", "px", "batch", "images/s", "range", "latency ms", "CPU ms/image"], rows),
                      ""])


def _short(path: str) -> str:
    """``runs/r18/best.pt`` -> ``r18/best.pt``: enough to tell two checkpoints apart."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
