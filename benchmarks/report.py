"""Reports: JSON for machines, a Markdown table for people, and where the run happened.

Every report carries its machine (CPU model, usable cores, load average before and after,
library versions): a throughput figure without the load it was measured under is worthless
on a shared machine.
"""
from __future__ import annotations

import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from dcx.core.errors import DcxError
from dcx.core.files import usable_cores, write_json

LIBRARIES = ("dcx", "torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "nvidia-dali-cuda130", "tensorrt",
             "numpy", "pillow")


def machine() -> dict:
    """What a figure depends on: CPU, cores, current load, GPU, library versions."""
    info = {"cpu": _cpu_model(), "cores": usable_cores(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg": _loadavg(), "gpu": _gpu_name(),
            "libraries": {}}
    for name in LIBRARIES:
        try:
            info["libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return info


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_writable(*paths: str | os.PathLike | None, force: bool) -> None:
    """Refuse to overwrite an existing report unless ``--force``: benchmark figures are evidence."""
    for path in paths:
        if path is not None and Path(path).exists() and not force:
            raise DcxError(f"{path} exists; pass --force to overwrite it")


def write_reports(report: dict, json_path: str | os.PathLike | None, markdown_path: str | os.PathLike | None,
                  markdown: str) -> None:
    if json_path is not None:
        write_json(json_path, report)
    if markdown_path is not None:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(markdown, encoding="utf-8")


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; numbers already formatted by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 1) -> str:
    """A number for a table: fixed digits, an en dash for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_range(summary: dict, digits: int = 1) -> str:
    if not summary or summary.get("n", 0) == 0:
        return "–"
    return f"{fmt(summary['min'], digits)}–{fmt(summary['max'], digits)}"


def mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


def machine_line(info: dict) -> str:
    load = info.get("loadavg")
    load_text = "" if load is None else f", load average {load[0]:.2f}"
    gpu = info.get("gpu") or "no GPU"
    return f"{info['cpu']}, {info['cores']} usable cores, {gpu}{load_text}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return None
