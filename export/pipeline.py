"""One export, start to finish: checkpoint -> ONNX (fp32/fp16/int8) -> verified -> TensorRT plan.

``dcx-export`` parses its options into an :class:`ExportRequest` and calls :func:`run_export`.
The order matters: ONNX artefacts are written and verified *before* the plan is attempted, so a
CPU machine leaves complete, checked ONNX artefacts and the exact command that finishes the
plan on a GPU machine.

An fp16/int8 artefact that does not keep the FP32 model's screening decisions (the gates of
:func:`dcx.export.verify.accuracy_problems`) is removed and the export fails, unless the request
accepts the accuracy loss; then it is kept, with the failed gates in its sidecar. Before an INT8
export gives up, it leaves more of the backbone in float, stage by stage from the input
(:func:`dcx.export.precision.float_layer_plans`), unless the request named its float layers.
"""
from __future__ import annotations

import csv
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dcx.core.artefact import (PRECISIONS, read_card, read_precision, read_sidecar, sha256_file, sidecar_path,
                               update_sidecar)
from dcx.core.card import ModelCard
from dcx.core.checkpoint import load_model
from dcx.core.errors import DcxError
from dcx.core.models import DcxNet
from dcx.engine.backends import CPU_BATCH_SIZE, open_backend

from . import precision as precision_mod, samples as samples_mod, verify
from .onnx_export import export_onnx, save_onnx_artefact
from .tensorrt_build import EXIT_PLAN_NOT_BUILT, build_plan, tensorrt_unavailable_reason

PARITY_IMAGES = 16
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


@dataclass
class ExportRequest:
    source: Path  # a dcx checkpoint (.pt) or an ONNX file exported by dcx-export
    out: Path | None = None  # None: default_out for a checkpoint, MODEL.plan for MODEL.onnx
    precision: str | None = None
    target: str | None = None  # cpu, openvino or tensorrt (precision.TARGETS); None: tensorrt for a .plan, else cpu
    calib: Path | None = None
    calib_samples: int = 512
    float_layers: tuple[str, ...] | None = None  # int8: left unquantized; None: the defaults, then the stage search
    eval_data: Path | None = None
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    version_compatible: bool = False  # a plan newer TensorRT runtimes (lean, dispatch) can run
    accept_accuracy_loss: bool = False
    force: bool = False

    @property
    def wants_plan(self) -> bool:
        return self.out.suffix.lower() == ".plan"

    @property
    def onnx_out(self) -> Path:
        return self.out.with_suffix(".onnx") if self.wants_plan else self.out


def calibration_manifest_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".calibration.csv")


def default_out(checkpoint: Path, card: ModelCard, precision: str) -> Path:
    """Beside the checkpoint, named after architecture and precision: runs/r18/resnet18-int8.onnx."""
    return checkpoint.parent / f"{card.arch}-{precision}.onnx"


def run_export(req: ExportRequest, echo: Callable[[str], None], warn: Callable[[str], None]) -> Path:
    """Do the export ``req`` describes; return the final artefact path. Raises DcxError."""
    if req.out is not None and req.out.suffix.lower() not in (".onnx", ".plan"):
        raise DcxError(f"--out must end in .onnx or .plan, got {req.out.name}")
    if req.source.suffix.lower() == ".onnx":
        return _plan_from_onnx(req, echo, warn)
    if req.precision not in PRECISIONS:
        raise DcxError(f"--precision is required for a checkpoint: one of {', '.join(PRECISIONS)}")
    if req.calib is not None and req.precision != "int8":
        warn(f"--calib is only used for int8; ignored for {req.precision}")
    model, card = load_model(req.source)
    req.out = req.out or default_out(req.source, card, req.precision)
    req.target = _target(req)
    search = req.float_layers is None  # dcx chooses what stays float: it may leave more if the gates fail
    if search:
        req.float_layers = precision_mod.default_float_layers(req.target) if req.precision == "int8" else ()
    _refuse_existing(req, [req.onnx_out, sidecar_path(req.onnx_out), calibration_manifest_path(req.onnx_out)]
                     + ([req.out, sidecar_path(req.out)] if req.wants_plan else []))
    check = _Verification(card, samples_mod.evaluation_samples(card, req.eval_data), req.accept_accuracy_loss,
                          echo, warn)
    reference = verify.pytorch_runner(model, card)
    if req.precision == "int8":
        onnx_path = _write_int8(req, model, card, check, reference, echo, search=search)
    else:
        onnx_path = _write_onnx(req, model, card, echo)
        _verify_onnx(check, onnx_path, reference, req.precision)
    if not req.wants_plan:
        return onnx_path
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise DcxError(f"the TensorRT plan needs TensorRT and an NVIDIA GPU ({reason}), so only the verified ONNX "
                       f"artefacts were written; finish it on a GPU machine with: {finish_command(req, onnx_path)}",
                       exit_code=EXIT_PLAN_NOT_BUILT)
    plan = _build(req, onnx_path, echo)
    _verify_plan(check, plan, reference, "PyTorch")
    return plan


def _target(req: ExportRequest) -> str:
    """Who runs the artefact: as asked, else the one the output is for (.plan: TensorRT; .onnx:
    ONNX Runtime on a CPU). It picks the INT8 flavour and the runtime that verifies and serves it."""
    target = req.target or ("tensorrt" if req.wants_plan else "cpu")
    if target not in precision_mod.TARGETS:
        raise DcxError(f"--target must be one of {', '.join(precision_mod.TARGETS)}, got {target!r}")
    if target != "tensorrt" and req.wants_plan:
        raise DcxError(f"a TensorRT plan is made for --target tensorrt, not {target}; drop --target or write "
                       f"--out NAME.onnx for {target}")
    return target


def int8_target_of(onnx_path: Path) -> str | None:
    """The INT8 target recorded in an artefact's sidecar (None: not INT8, or made before targets)."""
    sidecar = read_sidecar(onnx_path) or {}
    return (sidecar.get("calibration") or {}).get("target")


def finish_command(req: ExportRequest, onnx_path: Path) -> str:
    """The exact command that turns ``onnx_path`` into the requested plan on a GPU machine."""
    parts = ["dcx-export", os.fspath(onnx_path), "--out", os.fspath(req.out),
             "--min-batch", str(req.min_batch), "--opt-batch", str(req.opt_batch), "--max-batch", str(req.max_batch),
             "--workspace-gb", f"{req.workspace_gb:g}"]
    if req.version_compatible:
        parts.append("--version-compatible")
    if req.eval_data is not None:
        parts += ["--eval", os.fspath(req.eval_data)]
    return " ".join(shlex.quote(p) for p in parts)


def _refuse_existing(req: ExportRequest, paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not req.force:
        raise DcxError(f"{existing[0]} exists; pass --force to overwrite it")


def _source(req: ExportRequest) -> dict:
    return {"checkpoint": os.fspath(req.source), "checkpoint_sha256": sha256_file(req.source)}


def _write_onnx(req: ExportRequest, model: DcxNet, card: ModelCard, echo) -> Path:
    """The fp32 or fp16 artefact."""
    runtime = precision_mod.RUNTIME_OF_TARGET[req.target]
    gray_stem = precision_mod.folds_gray_stem(req.target)
    if req.precision == "fp32":
        path = export_onnx(model, card, req.onnx_out, runtime=runtime, gray_stem=gray_stem)
        update_sidecar(path, source=_source(req))
    else:
        import onnx

        req.onnx_out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=req.onnx_out.parent, prefix=".dcx-export-") as tmp:
            fp32 = export_onnx(model, card, Path(tmp) / "fp32.onnx", gray_stem=gray_stem)
            path = save_onnx_artefact(precision_mod.to_fp16(onnx.load(os.fspath(fp32))), card, "fp16",
                                      req.onnx_out, runtime=runtime, source=_source(req))
    echo(f"wrote {path} ({req.precision} for {runtime}, sha256 {sha256_file(path)[:12]}) and {sidecar_path(path).name}")
    return path


def _write_int8(req: ExportRequest, model: DcxNet, card: ModelCard, check: "_Verification", reference,
                echo, *, search: bool) -> Path:
    """Calibrate once, then quantize and verify with each float-layer plan in turn
    (:func:`~dcx.export.precision.float_layer_plans`; one plan unless ``search``) until one passes
    the gates; the last attempt is judged. After a retry, the sidecar lists every attempt."""
    import onnx

    runtime, source = precision_mod.RUNTIME_OF_TARGET[req.target], _source(req)
    req.onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=req.onnx_out.parent, prefix=".dcx-export-") as tmp:
        fp32 = export_onnx(model, card, Path(tmp) / "fp32.onnx", gray_stem=precision_mod.folds_gray_stem(req.target))
        images, calibration = _calibration_images(req, card, echo)
        plans = precision_mod.float_layer_plans(onnx.load(os.fspath(fp32)), req.float_layers, search=search)
        attempts = []
        for number, layers in enumerate(plans, 1):
            proto = precision_mod.quantize_int8(fp32, images, target=req.target, keep_float=layers,
                                                calibration_cache=Path(tmp) / "ranges.json")
            path = save_onnx_artefact(proto, card, "int8", req.onnx_out, runtime=runtime, source=source,
                                      calibration={**calibration, "float_layers": list(layers)})
            echo(f"wrote {path} (int8 for {runtime}, {', '.join(layers) or 'no layer'} in float, sha256 "
                 f"{sha256_file(path)[:12]}) and {sidecar_path(path).name}")
            result = _verify(check, path, reference, "int8")
            attempts.append({"float_layers": list(layers), "passed": result["passed"],
                             "problems": result.get("problems") or []})
            if result["passed"] is not False or number == len(plans):
                break
            echo(f"{path.name} does not pass the gates with {', '.join(layers)} in float; trying again with "
                 f"{', '.join(plans[number][len(layers):])} in float too (same calibration)")
        if len(attempts) > 1:
            update_sidecar(path, calibration={**calibration, "float_layers": list(layers), "attempts": attempts})
    check.judge(path, result, [path, sidecar_path(path), calibration_manifest_path(path)])
    return path


def _calibration_images(req: ExportRequest, card: ModelCard, echo) -> tuple[list, dict]:
    """The calibration images, read once (every attempt reuses them), their manifest written,
    and the sidecar's calibration section less the float layers."""
    chosen, origin = samples_mod.calibration_samples(card, req.calib, req.calib_samples)
    batches = samples_mod.Batches(chosen, card, progress="dcx-export calibration")
    images = [images.numpy() for images, _ in batches]
    manifest = calibration_manifest_path(req.onnx_out)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "sha256"])
        for s in batches.used:
            writer.writerow([os.fspath(s.path), s.label, sha256_file(s.path)])
    echo(f"calibrating ({precision_mod.CALIBRATION_METHOD}, target {req.target}) on {len(batches.used)} images from "
         f"{origin}{f', {len(batches.skipped)} unreadable skipped' if batches.skipped else ''}; manifest {manifest.name}")
    return images, {
        "quantizer": precision_mod.describe_target(req.target), "target": req.target,
        "method": precision_mod.CALIBRATION_METHOD, "origin": origin, "requested": req.calib_samples,
        "used": len(batches.used), "skipped": [{"path": os.fspath(s.path), "reason": r} for s, r in batches.skipped],
        "manifest": manifest.name, "manifest_sha256": sha256_file(manifest)}


@dataclass
class _Verification:
    """Runs a candidate (ONNX Runtime or TensorRT) against a reference and judges the result."""

    card: ModelCard
    evaluation: tuple[list, str] | None  # (samples, where they came from)
    accept_accuracy_loss: bool
    echo: Callable[[str], None]
    warn: Callable[[str], None]

    def run(self, candidate, reference, name: str, reference_name: str, label: str, *, exact: bool) -> dict:
        images, what = self._parity_images()
        parity = verify.parity(reference, candidate, images)
        self.echo(f"{name} vs {reference_name} on {what}: max |delta p| {parity['max_abs_delta_p']:.2e}, "
                  f"argmax agreement {parity['argmax_agreement']:.1%}")
        result = {"reference": reference_name, "parity": {**parity, "images": what}}
        if exact:
            verify.check_fp32_parity(parity, label)
            return {**result, "passed": True}
        if self.evaluation is None:
            problem = (f"{label}: no validation data to verify accuracy on (the checkpoint records no "
                       "validation split); pass --eval DATA")
            return {**result, "passed": None, "problems": [problem]}
        samples, origin = self.evaluation
        batches = samples_mod.Batches(samples, self.card, progress=f"dcx-export verifying {name}")
        report = verify.accuracy(reference, candidate, self.card, batches)
        report["origin"] = origin
        self.echo(f"{name} vs {reference_name} on {origin}: {verify.describe(report)}")
        problems = verify.accuracy_problems(report)
        if problems:
            problems = [f"{label} does not keep {reference_name}'s decisions on {origin}: {'; '.join(problems)}"]
        return {**result, "accuracy": report, "passed": not problems, "problems": problems}

    def _parity_images(self) -> tuple[torch.Tensor, str]:
        """Real images when there are any (first of the evaluation set), else seeded stand-ins."""
        if self.evaluation is not None:
            samples, origin = self.evaluation
            batch = next(iter(samples_mod.Batches(samples[:PARITY_IMAGES], self.card, PARITY_IMAGES)), None)
            if batch is not None:
                return batch[0], f"{len(batch[0])} images of {origin}"
        images = verify.sample_images(self.card, 8)
        return images, f"{len(images)} synthetic images (no evaluation data)"

    def judge(self, artefact: Path, result: dict, written: list[Path]) -> None:
        """Keep an artefact that passed; remove ``written`` and fail on one that did not, unless accepted."""
        problems = result.get("problems") or []
        if not problems:
            return
        if self.accept_accuracy_loss:
            self.warn(f"{problems[0]} (kept: --accept-accuracy-loss)")
            return
        for path in written:
            path.unlink(missing_ok=True)
        raise DcxError(f"{problems[0]}; {artefact.name} was removed (pass --accept-accuracy-loss to keep it)")


def _verify_onnx(check: _Verification, onnx_path: Path, reference, precision: str) -> None:
    result = _verify(check, onnx_path, reference, precision)
    check.judge(onnx_path, result, [onnx_path, sidecar_path(onnx_path)])


def _verify(check: _Verification, onnx_path: Path, reference, precision: str) -> dict:
    """Through the backend that will serve it (ONNX Runtime or OpenVINO, as the sidecar records),
    set up as dcx-infer sets it up on a CPU by default; the result goes into the sidecar."""
    with open_backend(onnx_path, device="cpu", batch_size=CPU_BATCH_SIZE) as backend:
        result = check.run(backend.infer, reference, RUNTIME_NAMES[backend.name], "PyTorch", onnx_path.name,
                           exact=precision == "fp32")
        runtime = backend.name
    update_sidecar(onnx_path, verification={runtime: result})
    return result


def _verify_plan(check: _Verification, plan: Path, reference, reference_name: str) -> None:
    with open_backend(plan, device="gpu") as backend:
        result = check.run(backend.infer, reference, "TensorRT", reference_name, plan.name, exact=False)
    update_sidecar(plan, verification={"tensorrt": result})
    check.judge(plan, result, [plan, sidecar_path(plan)])


def _build(req: ExportRequest, onnx_path: Path, echo) -> Path:
    plan = build_plan(onnx_path, req.out, min_batch=req.min_batch, opt_batch=req.opt_batch, max_batch=req.max_batch,
                      workspace_gb=req.workspace_gb, timing_cache=req.timing_cache,
                      version_compatible=req.version_compatible)
    kind = ", version-compatible" if req.version_compatible else ""
    echo(f"wrote {plan} (TensorRT{kind}, batch {req.min_batch}/{req.opt_batch}/{req.max_batch}) and "
         f"{sidecar_path(plan).name}")
    return plan


def _plan_from_onnx(req: ExportRequest, echo, warn) -> Path:
    """An ONNX artefact made elsewhere (typically on a CPU box) -> plan, verified against ONNX Runtime."""
    req.out = req.out or req.source.with_suffix(".plan")
    if not req.wants_plan:
        raise DcxError(f"{req.source.name} is already ONNX; pass --out NAME.plan to build a TensorRT plan from it")
    card = read_card(req.source)
    graph_precision = read_precision(req.source)
    if req.precision is not None and req.precision != graph_precision:
        raise DcxError(f"{req.source.name} is an {graph_precision} graph and a plan takes its precision from the "
                       f"graph; make one with dcx-export CKPT --precision {req.precision} --out NAME.onnx")
    if int8_target_of(req.source) in ("cpu", "openvino"):
        raise DcxError(f"{req.source.name} is the INT8 graph made for {int8_target_of(req.source)}, which TensorRT "
                       f"does not run well; export one for TensorRT with dcx-export CKPT --precision int8 --target "
                       f"tensorrt --out NAME.onnx")
    _refuse_existing(req, [req.out, sidecar_path(req.out)])
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise DcxError(f"the TensorRT plan needs TensorRT and an NVIDIA GPU ({reason}); run "
                       f"{finish_command(req, req.source)} on a machine that has both", exit_code=EXIT_PLAN_NOT_BUILT)
    check = _Verification(card, samples_mod.evaluation_samples(card, req.eval_data), req.accept_accuracy_loss,
                          echo, warn)
    plan = _build(req, req.source, echo)
    with open_backend(req.source, device="cpu") as runtime:
        _verify_plan(check, plan, runtime.infer, RUNTIME_NAMES[runtime.name])
    return plan
