"""PyTorch -> ONNX: the graph every backend serves, with the model card inside.

The graph is :meth:`DcxNet.scores_and_cam` for the card's positive class:

- input  ``image`` (N, 1, S, S) float32 unit gray (normalisation is inside the graph),
- output ``probs`` (N, K) float32 softmax,
- output ``cam``   (N, h, w) float32 class-activation map of the positive class,
- output ``ood``   (N,) float32 out-of-distribution score, when the model has a fitted one
  (:class:`dcx.core.models.OodScore`, its means and precision stored in the graph),

with a dynamic batch dimension N. We use the TorchScript exporter (``dynamo=False``): the
torch.export-based one needs ``onnxscript`` (not installed here) and gains nothing for these
static convolutional graphs. FP16 and INT8 graphs are derived from this FP32 file
(:mod:`dcx.export.precision`) and saved through :func:`save_onnx_artefact` too.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import torch

from dcx.core.card import ModelCard
from dcx.core.errors import DcxError
from dcx.core.files import atomic_path, write_json
from dcx.core.models import DcxNet

from dcx.core.artefact import (CARD_KEY, INPUT_NAME, OOD_OUTPUT, OUTPUT_NAMES, PRECISION_KEY, RUNTIME_KEY,
                               sha256_file, sidecar_path)

DEFAULT_OPSET = 17


class _GraphOutputs(torch.nn.Module):
    """Binds the positive class index so the traced graph has exactly the model's outputs."""

    def __init__(self, model: DcxNet, class_index: int):
        super().__init__()
        self.model, self.class_index = model, class_index

    def forward(self, image):
        return self.model.graph_outputs(image, self.class_index)


def export_onnx(model: DcxNet, card: ModelCard, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                runtime: str = "onnxruntime", gray_stem: bool = False) -> Path:
    """Write the FP32 ONNX graph of ``model`` to ``out`` plus the sidecar ``<out>.json``.

    ``gray_stem``: fold the first convolution for the gray input (:meth:`DcxNet.with_gray_stem`;
    the same outputs, a cheaper first layer on a CPU)."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph_model = copy.deepcopy(model).eval() if not gray_stem else model.with_gray_stem(card.input_size)
    example = torch.zeros(2, 1, card.input_size, card.input_size)
    outputs = list(OUTPUT_NAMES) + ([OOD_OUTPUT] if model.ood is not None else [])
    dynamic = {INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in outputs}}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice
            torch.onnx.export(_GraphOutputs(graph_model, card.positive_index), (example,), os.fspath(raw),
                              input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
                              dynamo=False)
        proto = onnx.load(os.fspath(raw))
    return save_onnx_artefact(proto, card, "fp32", out, runtime=runtime)


def save_onnx_artefact(proto, card: ModelCard, precision: str, out: str | os.PathLike, *,
                       runtime: str = "onnxruntime", **sections) -> Path:
    """Stamp the card into ``proto``, check it, save it and write the sidecar.

    ``runtime``: what serves it (:data:`~dcx.core.artefact.ONNX_RUNTIMES`); ``sections`` are
    extra top-level sidecar entries (calibration, source, ...).
    """
    import onnx

    out = Path(out)
    _set_metadata(proto, {CARD_KEY: card.to_json(), PRECISION_KEY: precision, RUNTIME_KEY: runtime})
    proto.producer_name = "dcx-export"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # a checker failure is our bug, but say which file and why
        raise DcxError(f"the {precision} ONNX graph for {out.name} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    with atomic_path(out) as tmp:
        onnx.save(proto, os.fspath(tmp))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    artefact = {"precision": precision, "runtime": runtime, "onnx_sha256": sha256_file(out), "opset": opset,
                "model_id": card.model_id, **describe_io(proto)}
    write_json(sidecar_path(out), {"card": card.to_dict(), "artefact": artefact, **sections})
    return out


def _set_metadata(proto, entries: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in keep + list(entries.items()):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


def describe_io(proto) -> dict:
    """Names, shapes and dtypes of the graph's inputs/outputs, read from the graph itself."""
    import onnx

    def describe(value_info):
        t = value_info.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": value_info.name, "shape": shape,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    inputs = [describe(v) for v in proto.graph.input]
    if len(inputs) != 1 or inputs[0]["name"] != INPUT_NAME:
        raise DcxError(f"expected one graph input named {INPUT_NAME!r}, found {[i['name'] for i in inputs]}")
    return {"input": {**inputs[0], "contract": "unit gray [0,1], letterboxed (dcx.core.preprocess)"},
            "outputs": [describe(v) for v in proto.graph.output]}
