"""What travels with every exported model: the sidecar ``<artefact>.json`` and the ONNX metadata.

An artefact (``m.onnx`` or ``m.plan``) is useless without its model card (classes, positive
class, threshold, input contract), so the card is written twice: as ONNX metadata under
:data:`CARD_KEY`, and in the sidecar ``<artefact>.json`` beside it::

    {"card": {...ModelCard...},
     "artefact": {"precision", "onnx_sha256", "opset", "input", "outputs", ...},
     "verification": {...}, "calibration": {...}, "tensorrt": {...}}   # when they apply

A plan file cannot carry metadata, so for plans the sidecar is the only source of truth; it
also records the GPU and TensorRT version the plan was built for, which the engine's
TensorRT runtime chooser (``dcx.engine.backends.trt_runtime``) holds against this machine
before a runtime loads the plan.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from .card import ModelCard
from .errors import DcxError
from .files import write_json

CARD_KEY = "dcx.card"
PRECISION_KEY = "dcx.precision"
PRECISIONS = ("fp32", "fp16", "int8")
#: Which runtime serves an ONNX artefact: the one its export was verified with.
RUNTIME_KEY = "dcx.runtime"
ONNX_RUNTIMES = ("onnxruntime", "openvino")

#: Tensor names shared by the ONNX graph, the TensorRT plan and the engine.
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "cam")
#: The optional third output: the out-of-distribution score (N,) of a model fitted with
#: dcx-fit-ood or a recent dcx-train (dcx.core.models.OodScore); older artefacts lack it.
OOD_OUTPUT = "ood"


def sidecar_path(artefact: str | os.PathLike) -> Path:
    """``m.onnx`` -> ``m.onnx.json`` (the extension is kept so m.onnx and m.plan never collide)."""
    artefact = Path(artefact)
    return artefact.with_name(artefact.name + ".json")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file. An unchanged file (same inode, size, mtime and ctime) is hashed
    once per process: a run checks its model against the sidecar and keys its state by the
    same digest."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sidecar(artefact: str | os.PathLike) -> dict | None:
    """The sidecar of ``artefact`` as a dict, or None when there is none."""
    path = sidecar_path(artefact)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DcxError(f"{path} is not a readable dcx sidecar ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("card"), dict):
        raise DcxError(f"{path} is not a dcx sidecar (no 'card')")
    return payload


def update_sidecar(artefact: str | os.PathLike, **sections) -> Path:
    """Merge top-level ``sections`` (e.g. verification=...) into the existing sidecar."""
    payload = read_sidecar(artefact)
    if payload is None:
        raise DcxError(f"{sidecar_path(artefact)} is missing; export the artefact first")
    payload.update(sections)
    return write_json(sidecar_path(artefact), payload)


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file, read without loading the weights into memory twice."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:
        raise DcxError(f"{os.fspath(path)} is not a readable ONNX file ({type(exc).__name__})") from exc
    return {p.key: p.value for p in model.metadata_props}


def read_card(artefact: str | os.PathLike) -> ModelCard:
    """The model card of an exported artefact: from its sidecar, else from ONNX metadata.

    The engine calls this for ``.onnx`` and ``.plan`` files alike.
    """
    artefact = Path(artefact)
    if not artefact.is_file():
        raise DcxError(f"model artefact not found: {artefact}")
    payload = read_sidecar(artefact)
    if payload is not None:
        check_identity(artefact, payload)
        return ModelCard.from_dict(payload["card"])
    if artefact.suffix.lower() != ".onnx":
        raise DcxError(f"{artefact} has no sidecar {sidecar_path(artefact).name}: "
                       "a TensorRT plan carries no model card of its own; keep the .json beside it")
    meta = onnx_metadata(artefact)
    if CARD_KEY not in meta:
        raise DcxError(f"{artefact} is not a dcx export: no '{CARD_KEY}' in its ONNX metadata and no sidecar")
    try:
        return ModelCard.from_dict(json.loads(meta[CARD_KEY]))
    except ValueError as exc:
        raise DcxError(f"{artefact}: the '{CARD_KEY}' metadata is not valid JSON") from exc


def check_identity(artefact: Path, payload: dict) -> None:
    """The sidecar must describe this very file: a retrained ``model.onnx`` copied over the old
    one beside the old ``model.onnx.json`` would otherwise be scored under the old card (model
    id, classes, threshold). The sidecar's recorded sha256 decides; a sidecar without one
    (older exports) must at least carry the card the ONNX file itself embeds."""
    key = "onnx_sha256" if artefact.suffix.lower() == ".onnx" else "plan_sha256"
    recorded = (payload.get("artefact") or {}).get(key)
    stale = (f"the model file was replaced without its sidecar? Re-export it, or put the "
             f"matching {sidecar_path(artefact).name} beside it")
    if recorded:
        actual = sha256_file(artefact)
        if actual != recorded:
            raise DcxError(f"{artefact} is not the file its sidecar {sidecar_path(artefact).name} describes "
                           f"(sha256 {actual[:12]}..., the sidecar records {str(recorded)[:12]}...): {stale}")
    elif artefact.suffix.lower() == ".onnx":
        embedded = onnx_metadata(artefact).get(CARD_KEY)
        if embedded is not None and _parsed(embedded) != payload["card"]:
            raise DcxError(f"{artefact} embeds another model card than its sidecar "
                           f"{sidecar_path(artefact).name}: {stale}")


def _parsed(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_runtime(onnx_path: str | os.PathLike) -> str:
    """The runtime an ONNX artefact was exported and verified for (sidecar first, then metadata;
    artefacts from before runtimes were recorded: onnxruntime)."""
    payload = read_sidecar(onnx_path)  # written with the metadata: no need to parse the graph too
    if payload is not None:
        runtime = payload.get("artefact", {}).get("runtime", "onnxruntime")
    else:
        runtime = onnx_metadata(onnx_path).get(RUNTIME_KEY, "onnxruntime")
    if runtime not in ONNX_RUNTIMES:
        raise DcxError(f"{onnx_path} was exported for runtime {runtime!r}, which this dcx does not know "
                       f"({', '.join(ONNX_RUNTIMES)})")
    return runtime


def read_precision(onnx_path: str | os.PathLike) -> str:
    """fp32/fp16/int8 of an exported ONNX file (sidecar first, then metadata)."""
    payload = read_sidecar(onnx_path)
    if payload is not None and payload.get("artefact", {}).get("precision") in PRECISIONS:
        return payload["artefact"]["precision"]
    precision = onnx_metadata(onnx_path).get(PRECISION_KEY)
    if precision not in PRECISIONS:
        raise DcxError(f"{onnx_path} does not record its precision; re-export it with dcx-export")
    return precision
