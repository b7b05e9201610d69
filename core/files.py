"""Writing result files safely, and the machine facts that size the work.

Every file dcx hands to someone else (checkpoints, ONNX graphs, plans, sidecars, heatmaps,
metrics, run summaries) is written to a temporary name beside its target and renamed onto
it when complete, so a crash or Ctrl-C never leaves half a file under the real name. The
file gets the permissions any ordinary write would give it (0666 less the umask), not the 0600
of a temporary file: a nightly job's results must be readable by the group that reads them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere reading it means setting it
    (and straight back), which is not thread-safe, so that is the fallback only."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, payload) -> Path:
    """Strict JSON, atomically: NaN and infinities become null, numpy scalars plain numbers."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(payload), indent=2) + "\n", encoding="utf-8")
    return Path(path)


def _strict(value):
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def cache_dir() -> Path:
    """Where dcx keeps what is slow to make and safe to remake (TensorRT timing caches, OpenVINO
    compiled models): ``$DCX_CACHE_DIR``, default ``~/.cache/dcx``."""
    return Path(os.environ.get("DCX_CACHE_DIR", Path.home() / ".cache" / "dcx"))


def usable_cores() -> int:
    """CPU cores this process may run on (affinity and container limits, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
