"""The real ``dcx-infer``, run as a child process, and the checkpoint an engine came from.

Benchmarks never re-implement the engine: they run the very command users run, with its
defaults (state database included, each run in a fresh folder so nothing is reused), and
read back the run summary and the result rows it wrote.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dcx.core.artefact import read_sidecar, sha256_file
from dcx.core.errors import DcxError
from dcx.engine.results import read_rows

from .measure import ChildRun, python_child, run_child

#: dcx-infer exit codes that still mean "the run finished and wrote every row".
FINISHED = (0, 3, 4)  # 4: some images out of distribution


def cli_command(module: str, prog: str, *args) -> list[str]:
    """What the console script runs (``from MODULE import main; main()``) with ARGS, without
    depending on the script being on PATH; measured for peak memory."""
    return python_child(f"from {module} import main; main(prog_name={prog!r})", *args)


@dataclass
class InferRun:
    child: ChildRun
    summary: dict
    out: Path


def run_infer(engine: str | os.PathLike, workdir: str | os.PathLike, *, archive=None, files_from=None,
              batch_size: int | None = None, decode_threads: int | None = None, device: str | None = None) -> InferRun:
    """One ``dcx-infer`` run into a fresh ``workdir`` (results.csv + summary + state database);
    fails loudly. The folder is the benchmark's own: a state database left there by an earlier
    run would let this one reuse every row and measure nothing, so it is emptied first."""
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    out, summary = workdir / "results.csv", workdir / "results.summary.json"
    args = ["--engine", engine, "--out", out, "--summary", summary]
    if files_from is not None:
        args += ["--files-from", files_from]
    for option, value in (("--batch-size", batch_size), ("--decode-threads", decode_threads), ("--device", device)):
        if value is not None:
            args += [option, value]
    if archive is not None:
        args.append(archive)
    child = run_child(cli_command("dcx.engine.cli", "dcx-infer", *args))
    if child.returncode not in FINISHED or not summary.is_file():
        tail = "\n".join(child.output.strip().splitlines()[-5:])
        raise DcxError(f"dcx-infer failed (exit {child.returncode}):\n{tail}")
    return InferRun(child, json.loads(summary.read_text(encoding="utf-8")), out)


def read_results(out: str | os.PathLike) -> list[dict]:
    return list(read_rows(out))


def resolve_reference(engine: str | os.PathLike, reference: str | os.PathLike | None) -> tuple[Path, str]:
    """The PyTorch checkpoint behind ``engine`` and how it was found.

    ``--reference`` wins, but must be the checkpoint the sidecar names when it names one (by
    sha256): a peer run on other weights would make the ratio meaningless. Without
    ``--reference``, the export sidecar's ``source.checkpoint`` is followed (through an ONNX
    file for a plan built from one). A ``.pt`` engine is its own reference.
    """
    engine = Path(engine)
    if engine.suffix.lower() == ".pt" and reference is None:
        return engine, "the engine is the checkpoint"
    recorded = _recorded_checkpoint(engine)
    if reference is not None:
        reference = Path(reference)
        if not reference.is_file():
            raise DcxError(f"reference checkpoint not found: {reference}")
        if recorded is not None and recorded[1] and sha256_file(reference) != recorded[1]:
            raise DcxError(f"{reference} is not the checkpoint {engine.name} was exported from "
                           f"(its sidecar names {recorded[0]} with another sha256)")
        return reference, "--reference" + (" (sha256 matches the export sidecar)" if recorded else "")
    if recorded is None:
        raise DcxError(f"{engine.name} records no source checkpoint; pass --reference CKPT (the .pt it was exported from)")
    path, sha = recorded
    if not path.is_file():
        raise DcxError(f"{engine.name} was exported from {path}, which is not there any more; pass --reference CKPT")
    if sha and sha256_file(path) != sha:
        raise DcxError(f"{path} changed since {engine.name} was exported from it (sha256 differs); pass --reference CKPT")
    return path, "export sidecar source.checkpoint"


def _recorded_checkpoint(artefact: Path, hops: int = 3) -> tuple[Path, str | None] | None:
    """(checkpoint, sha256) named by the sidecar chain of ``artefact``, or None."""
    for _ in range(hops):
        sidecar = read_sidecar(artefact) if artefact.suffix.lower() != ".pt" else None
        source = (sidecar or {}).get("source") or {}
        named = source.get("checkpoint") or source.get("onnx")
        if not named:
            return None
        path = Path(named)
        if not path.is_absolute():
            path = (artefact.parent / path) if (artefact.parent / path).exists() else path
        if path.suffix.lower() == ".pt":
            return path, source.get("checkpoint_sha256")
        artefact = path
    return None
