"""What each architecture costs: parameters, GFLOPs, and model-only images/s of its FP32 ONNX
graph through the engine's own ONNX Runtime backend on this machine.

Weights are random: a convolution costs the same whatever its weights, and no weights can be
downloaded here. Each graph is made by dcx-export's own pipeline (and verified by it), so what
is timed is what dcx-infer would serve.
"""
from __future__ import annotations

from pathlib import Path

from dcx.core.card import ModelCard
from dcx.core.checkpoint import save_checkpoint
from dcx.core.models import create_model, model_cost
from dcx.export.pipeline import ExportRequest, run_export

from . import report as rep
from .model_bench import bench_model_file

CLASSES = ["covid", "normal", "pneumonia"]


def measure_architectures(archs: list[str], folder: Path, *, size: int = 224, batch_size: int = 16,
                          repeat: int = 5, log=lambda message: None) -> list[dict]:
    """One record per architecture: cost, and the model-only figures of its FP32 graph."""
    records = []
    for arch in archs:
        log(f"{arch}: export FP32 ONNX at {size} px")
        checkpoint = folder / f"{arch}.pt"
        card = ModelCard(arch=arch, classes=CLASSES, positive="covid", input_size=size)
        save_checkpoint(checkpoint, create_model(arch, len(CLASSES)).state_dict(), card)
        graph = run_export(ExportRequest(source=checkpoint, precision="fp32", out=folder / f"{arch}.onnx"),
                           echo=lambda message: None, warn=log)
        log(f"{arch}: model-only at batch {batch_size}")
        timing = bench_model_file(graph, [batch_size], repeat=repeat)["results"][0]
        records.append({**model_cost(arch, size, len(CLASSES)), "batch_size": batch_size, **timing})
    return records


def markdown(records: list[dict], machine: dict) -> str:
    rows = [[r["arch"], f"{r['params'] / 1e6:.1f} M", rep.fmt(r["gflops"], 2), rep.fmt(r["images_per_s"]),
             rep.fmt(r["cpu_ms_per_image"], 1)] for r in records]
    return "\n".join([f"### Architecture cost ({records[0]['input_size']} px, ONNX Runtime FP32, "
                      f"batch {records[0]['batch_size']}, model only)", "", f"Machine: {rep.machine_line(machine)}", "",
                      rep.table(["arch", "parameters", "GFLOPs / image", "images/s", "CPU ms / image"], rows), ""])
