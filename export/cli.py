"""``dcx-export``: a trained checkpoint -> verified ONNX (fp32/fp16/int8) -> TensorRT plan."""
from __future__ import annotations

from pathlib import Path

import click

from dcx.core.artefact import PRECISIONS
from dcx.core.errors import Command, DcxError

from .precision import FLOAT_LAYERS, STAGE_LAYER, TARGETS

EPILOG = """\b
Examples:
  dcx-export --precision fp16                  newest runs/*/best.pt -> runs/<run>/<arch>-fp16.onnx
  dcx-export runs/r18/best.pt --precision int8 --calib data/ --out r18-int8.onnx   (CPU INT8)
  dcx-export runs/r18/best.pt --precision int8 --out r18-int8.plan   (TensorRT INT8)
  dcx-export runs/r18/best.pt --precision fp16 --out r18-fp16.plan   (GPU + TensorRT)
  dcx-export r18-fp16.onnx --out r18-fp16.plan     finish a CPU-made ONNX on the GPU box

\b
Artefacts: NAME.onnx (input "image" (N,1,S,S) unit gray; outputs "probs" (N,K) and "cam"
(N,h,w) of the positive class), NAME.onnx.json (model card, hashes, verification), for int8
NAME.onnx.calibration.csv (calibration images + sha256), for plans NAME.plan + NAME.plan.json
(TensorRT version, GPU, profile, version_compatible). A .plan request also writes NAME.onnx
beside it. --version-compatible plans also run under newer TensorRT 11.x runtimes on the same
GPU model, the lean and dispatch runtimes from PyPI included; other plans only where built.

\b
Targets (who runs the artefact; recorded in the sidecar and the ONNX metadata):
  cpu (default for .onnx): ONNX Runtime on CPUs; INT8 with uint8 asymmetric activations and
      7-bit per-channel weights (full 8-bit weights saturate its kernels on CPUs without VNNI);
  openvino: OpenVINO on CPUs (pip install 'dcx[openvino]'), verified and served by OpenVINO;
      INT8 as cpu with full 8-bit weights; the cheapest CPU path measured here;
  tensorrt (default, and required, for .plan): symmetric int8 Q/DQ as TensorRT consumes it.
cpu and openvino graphs read the gray input with a 1-channel first convolution (the
gray-to-RGB copy and normalisation folded into it: same outputs, a third of its multiply-adds)
and keep batch norms that stand alone (DenseNet's) in float (benchmarks/README.md).
An INT8 ONNX made for cpu or openvino is refused as the source of a plan.

\b
Verification: fp32 must match PyTorch within 1e-4 on every probability (else the export
fails). fp16/int8 run over the validation split recorded in the checkpoint (or --eval DATA):
sensitivity or specificity moved by more than 1 point, screening decisions agreeing on fewer
than 99% of the images, out-of-distribution scores moved by more than 25% on average, or no
validation data at all fails the export and removes the artefact (its .json and calibration
.csv too), unless --accept-accuracy-loss keeps it. Before an INT8 export fails, it leaves the
backbone's stages in float one more at a time from the input, with the same calibration (a
cxr-dev densenet121 passed with its first dense block in float); its sidecar lists each try.

\b
Exit status: 0 done, 1 error, 3 ONNX written and verified but no plan (this machine lacks
TensorRT or an NVIDIA GPU; the message gives the command that finishes it there).
"""


def _float_layers(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value not in FLOAT_LAYERS and not STAGE_LAYER.fullmatch(value):
            raise click.BadParameter(f"{value!r} is neither one of {', '.join(FLOAT_LAYERS)} nor a backbone stage "
                                     "(features.N)", ctx, param)
    return values


def newest_checkpoint(root: Path) -> Path:
    found = [p for p in root.glob("runs/*/best.pt") if p.is_file()]
    if not found:
        raise DcxError(f"no checkpoint given and no runs/*/best.pt under {root.resolve()}; pass CKPT")
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


@click.command(cls=Command, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("source", metavar="[CKPT|MODEL.onnx]", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Graph precision (required for a checkpoint; an ONNX input keeps its own).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="INT8 calibration images (folder of class folders or manifest CSV); default: the "
                   "training split recorded in the checkpoint. Only its training-split images are used.")
@click.option("--target", type=click.Choice(TARGETS),
              help="Who runs it: cpu (ONNX Runtime), openvino (OpenVINO on CPUs) or tensorrt; picks the INT8 "
                   "flavour and the runtime that verifies and serves it. Default: tensorrt for a .plan, else cpu.")
@click.option("--float-layers", multiple=True, callback=_float_layers, metavar="LAYER",
              help=f"INT8: leave these layers in float (repeatable): {', '.join(FLOAT_LAYERS)} or a backbone stage "
                   "features.N (PyTorch's name: densenet121's first dense block is features.4). Default head (it "
                   "keeps the features the OOD score reads in float) and, for cpu and openvino, first_conv "
                   "(quantizing it flipped screening decisions on real radiographs), and if that fails the gates, "
                   "the backbone's first stage, then its first two, ... up to half of them, until one passes; "
                   "naming layers turns that search off. none quantizes every layer (benchmarks/README.md).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True,
              help="Stratified calibration sample size.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Labelled images to verify fp16/int8 on; default: the recorded validation split.")
@click.option("--out", type=click.Path(path_type=Path),
              help="NAME.onnx or NAME.plan; default: <arch>-<precision>.onnx beside the checkpoint, "
                   "or MODEL.plan beside an ONNX input.")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True, help="TensorRT profile minimum batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=64, show_default=True, help="TensorRT profile batch tuned for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True, help="TensorRT profile maximum batch.")
@click.option("--workspace-gb", type=click.FloatRange(min=0.0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT timing cache file; default: per TensorRT version and GPU under $DCX_CACHE_DIR "
                   "(~/.cache/dcx).")
@click.option("--version-compatible", is_flag=True,
              help="Build a version-compatible plan (lean runtime embedded): it also runs under newer TensorRT "
                   "of the same major version on this GPU model, including the lean and dispatch runtimes "
                   "from PyPI (pip install 'dcx[trt-runtime]').")
@click.option("--accept-accuracy-loss", is_flag=True,
              help="Keep an fp16/int8 artefact that fails the accuracy gates (warn instead of fail).")
@click.option("--strict", is_flag=True, hidden=True, help="No-op: failing the accuracy gates is now the default.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def main(source, precision, target, float_layers, calib, calib_samples, eval_data, out, min_batch, opt_batch, max_batch,
         workspace_gb, timing_cache, version_compatible, accept_accuracy_loss, strict, force):
    """Export a dcx checkpoint to ONNX (fp32, fp16 or INT8 Q/DQ) and, with TensorRT, to a plan.

    Every export is verified against the PyTorch model before it is reported done.
    """
    if source is None:
        source = newest_checkpoint(Path.cwd())
        click.echo(f"checkpoint: {source} (newest runs/*/best.pt)")
    if strict and accept_accuracy_loss:
        raise DcxError("--strict and --accept-accuracy-loss contradict each other; pass one")
    from .pipeline import ExportRequest, run_export  # PyTorch: loaded once the command line is checked

    request = ExportRequest(source=source, out=out, precision=precision, target=target,
                            float_layers=tuple(float_layers) or None, calib=calib,
                            calib_samples=calib_samples,
                            eval_data=eval_data, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            workspace_gb=workspace_gb, timing_cache=timing_cache,
                            version_compatible=version_compatible,
                            accept_accuracy_loss=accept_accuracy_loss, force=force)
    run_export(request, echo=click.echo, warn=lambda message: click.echo(f"Warning: {message}", err=True))
