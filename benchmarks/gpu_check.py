"""``dcx-bench gpu-check``: prove every GPU path this machine can reach, in one run, one report.

Each check is a function of a shared :class:`Context` that returns its figures or raises
:class:`Skip` (with the reason) when this machine lacks what it needs. A check *passes* when its
figures meet the bound written beside it, *fails* when they do not, and *errors* when it breaks;
the command exits 1 on any failure or error, 0 otherwise -- on a CPU machine every GPU check is
skipped with its reason and the CPU checks still run (CI runs it that way: 18-27 s of CPU time
on the 2-core development machine).

The checks, in order (names as in the report):

* ``environment``: versions, the GPU, ONNX Runtime providers, TensorRT runtimes (never fails);
* ``torch_cuda_parity``: resnet18 and densenet121 on the CUDA backend vs the CPU (TF32 off);
* ``onnx_export``: dcx's ONNX export under this machine's torch, run by ONNX Runtime vs torch;
* ``dali_bit_depth``: DALI's uint16 output of 8/12/16-bit PNG, JPEG, JPEG 2000 and lossless JPEG
  frames, on each device, against :func:`dcx.engine.codec_rules.uint16_gain` and
  :func:`~dcx.engine.codec_rules.dali_decodes` (the rule the engine scores with);
* ``dali_mixed_vs_cpu``: the engine's decoder on the GPU vs on the CPU over the same fixtures;
* ``nvimgcodec_gpu``: nvImageCodec's own GPU decoder vs its CPU decoder;
* ``torchvision_nvjpeg``: torchvision's nvJPEG decode vs Pillow, a second GPU decoder;
* ``onnxruntime_cuda``: the ONNX artefact on the CUDA provider vs the CPU one;
* ``tensorrt``: plain and version-compatible plans built and run where a builder is installed,
  else whether the lean / dispatch runtimes load;
* ``end_to_end``: ``dcx-infer`` over a synthetic archive (PNG, JPEG, DICOM) on the best device.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from dcx.core import dicom
from dcx.core.card import ModelCard
from dcx.core.checkpoint import save_checkpoint
from dcx.core.models import create_model
from dcx.core.preprocess import Preprocess
from dcx.engine.backends import open_backend
from dcx.engine.backends.trt_runtime import RUNTIME_MODULES, import_runtime
from dcx.engine.codec_rules import dali_decodes, lossless_jpeg_predictor, uint16_gain
from dcx.engine.decode import Decoder, module_available
from dcx.export.onnx_export import export_onnx
from dcx.export.tensorrt_build import build_plan, tensorrt_unavailable_reason
from dcx.train.synth import make_phantom, write_archive, write_dicom

from . import report as rep

#: Bounds. Float32 parity across devices and runtimes (probabilities); decoded images in unit
#: gray (nvJPEG's IDCT may move JPEG pixels by a gray level or two: the decoder test's bound).
PROB_TOL = 1e-3
IMAGE_MAX, IMAGE_MEAN = 0.02, 2e-3
GAIN_TOL = 0.02  # relative; least-squares gain of lossy frames sits within 1% of the rule
JPEG_LEVELS = 4  # gray levels between two JPEG decoders (IDCT and upsampling differ)
ARCHS = ("resnet18", "densenet121")
CLASSES = ["covid", "normal", "pneumonia"]


class Skip(Exception):
    """This machine lacks what the check needs (the message says what)."""


@dataclass
class Context:
    """What the checks share: a scratch folder, the device, artefacts made by earlier checks."""

    work: Path
    e2e_files: int
    cuda: bool = False
    made: dict = field(default_factory=dict)

    def need_cuda(self) -> None:
        if not self.cuda:
            raise Skip("torch sees no CUDA device")

    def need_dali(self) -> None:

        if not module_available("nvidia.dali"):
            raise Skip("DALI is not installed (nvidia-dali-cuda130)")

    def model(self, arch: str = "resnet18"):
        """A seeded random-weight model and its card (parity needs no trained weights)."""
        import torch


        torch.manual_seed(0)
        card = ModelCard(arch=arch, classes=CLASSES, positive="covid", input_size=224)
        return create_model(arch, len(CLASSES)).eval(), card

    def onnx(self) -> Path:
        """resnet18 exported by dcx (made once, by ``onnx_export`` or on first need)."""
        if "onnx" not in self.made:

            model, card = self.model()
            self.made["onnx"] = export_onnx(model, card, self.work / "resnet18.onnx")
        return self.made["onnx"]

    def batch(self, n: int = 4, size: int = 224):
        import torch

        generator = torch.Generator().manual_seed(1)
        return torch.rand((n, 1, size, size), generator=generator)

    def fixtures(self) -> list[dict]:
        """Frames and files of every depth and codec (made once): see :func:`make_fixtures`."""
        if "fixtures" not in self.made:
            self.made["fixtures"] = make_fixtures(self.work / "fixtures")
        return self.made["fixtures"]


# --------------------------------------------------------------------------- fixtures


def make_fixtures(folder: Path) -> list[dict]:
    """One entry per case: ``name``, ``path`` (a file the engine reads), ``frame`` (the encoded
    bytes DALI's decoder gets), ``stored`` (the values the frame holds), ``precision``, ``codec``
    (a codec of :mod:`dcx.engine.codec_rules`; PNG has no device-dependent scaling at 8 or 16 bits,
    so it is checked under the lossy-JPEG rule) and ``syntax`` for DICOM frames."""
    from PIL import Image


    folder.mkdir(parents=True, exist_ok=True)
    phantom, _ = make_phantom("pneumonia", size=192, seed=5)
    cases = []

    def raster(name, stored, precision, save):
        path = folder / name
        save(path)
        cases.append(dict(name=name, path=path, frame=path.read_bytes(), stored=stored, precision=precision,
                          codec="jpeg", syntax=None))

    p8 = np.round(phantom * 255).astype(np.uint8)
    p16 = np.round(phantom * 65535).astype(np.uint16)
    raster("gray8.png", p8, 8, lambda p: Image.fromarray(p8).save(p))
    raster("gray16.png", p16, 16, lambda p: Image.fromarray(p16).save(p))
    raster("gray8.jpg", p8, 8, lambda p: Image.fromarray(p8).save(p, quality=95))
    for variant, bits in [("jpeg-baseline", 8), ("jpeg2000", 8), ("jpeg2000", 12), ("jpeg2000", 16),
                          ("jpeg-lossless-sv1", 8), ("jpeg-lossless-sv1", 12), ("jpeg-lossless-sv1", 16),
                          ("jpeg-lossless", 12)]:
        path = write_dicom(folder / f"{variant}-{bits}.dcm", phantom, variant, bits_stored=bits)
        image = dicom.open_dicom(path)
        stored = np.round(phantom * ((1 << bits) - 1)).astype(np.uint16)
        codec = {"jpeg-baseline": "jpeg", "jpeg2000": "jpeg2k"}.get(variant, "jpeg-lossless")
        cases.append(dict(name=path.name, path=path, frame=image.first_frame(), stored=stored, precision=bits,
                          codec=codec, syntax=str(image.transfer_syntax)))
    return cases


# --------------------------------------------------------------------------- checks


def environment(ctx: Context) -> dict:
    import torch


    details = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": ctx.cuda}
    if ctx.cuda:
        major, minor = torch.cuda.get_device_capability()
        details.update(gpu=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}",
                       cudnn=torch.backends.cudnn.version())
    distributions = {}
    for name in ("nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13", "onnxruntime", "onnxruntime-gpu", "onnx",
                 "torchvision", "pydicom", "pylibjpeg-libjpeg", "tensorrt-lean-cu13-bindings",
                 "tensorrt-dispatch-cu13-bindings"):
        try:
            distributions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    details["distributions"] = distributions
    if "onnxruntime" in distributions and "onnxruntime-gpu" in distributions:
        details["warning"] = ("onnxruntime and onnxruntime-gpu are both installed and share one package folder: "
                              "pip uninstall -y onnxruntime onnxruntime-gpu && pip install --no-deps onnxruntime-gpu")
    try:
        import onnxruntime as ort

        details["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError as exc:
        details["onnxruntime_providers"] = f"not importable: {exc}"
    runtimes = {}
    for kind in RUNTIME_MODULES:
        module, problem = import_runtime(kind)
        runtimes[kind] = f"{module.__name__} {module.__version__}" if module else (problem or "not installed")
    details["tensorrt_runtimes"] = runtimes
    return details


def torch_cuda_parity(ctx: Context) -> dict:
    import torch

    ctx.need_cuda()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    details, ok = {}, True
    x = ctx.batch()
    for arch in ARCHS:
        model, card = ctx.model(arch)
        with torch.no_grad():
            p_cpu, cam_cpu = model.scores_and_cam(x, card.positive_index)
            model.cuda()
            p_gpu, cam_gpu = (t.cpu() for t in model.scores_and_cam(x.cuda(), card.positive_index))
        dp = float((p_cpu - p_gpu).abs().max())
        dcam = float((cam_cpu - cam_gpu).abs().max() / max(float(cam_cpu.abs().max()), 1e-12))
        details[arch] = {"max_abs_prob_diff": dp, "max_rel_cam_diff": dcam}
        ok &= dp <= PROB_TOL and dcam <= PROB_TOL
    return _verdict(ok, details, f"probabilities within {PROB_TOL}, CAM within {PROB_TOL} of its range")


def onnx_export(ctx: Context) -> dict:
    import torch


    path = ctx.onnx()
    model, card = ctx.model()
    x = ctx.batch()
    with torch.no_grad():
        reference = model.scores_and_cam(x, card.positive_index)[0].numpy()
    with open_backend(path, device="cpu") as backend:
        probs, _, _ = backend.infer(x)
    diff = float(np.abs(probs - reference).max())
    return _verdict(diff <= 1e-4, {"torch": torch.__version__, "max_abs_prob_diff": diff},
                    "ONNX Runtime (CPU) within 1e-4 of torch, dcx-export's own bound")


def dali_bit_depth(ctx: Context) -> dict:
    """Each fixture frame through DALI's decoder alone (uint16 gray), on each device: does the
    gain the output shows, and whether it decodes at all, match the engine's rule?"""

    ctx.need_dali()
    devices = ["cpu"] + (["gpu"] if ctx.cuda else [])
    details, ok = {"devices": devices}, True
    for device in devices:
        rows = {}
        for case in ctx.fixtures():
            expected_decodable = case["syntax"] is None or dali_decodes(
                case["syntax"], case["precision"], device, predictor=_predictor(case))
            decoded, error = _dali_decode_uint16(case["frame"], device)
            row = {"rule_decodes": expected_decodable, "decoded": decoded is not None}
            if decoded is None:
                row["error"] = error
                ok &= not expected_decodable  # the rule said DALI could, and it could not
            else:  # the gain is checked even where the rule sends the frame to pydicom
                measured = _gain(decoded, case["stored"])
                expected = uint16_gain(case["precision"], device, case["codec"])
                row.update(measured_gain=round(measured, 4), rule_gain=round(expected, 4))
                row["gain_ok"] = abs(measured / expected - 1) <= GAIN_TOL
                ok &= row["gain_ok"]
            rows[case["name"]] = row
        details[device] = rows
    if not ctx.cuda:
        details["gpu"] = "skipped: torch sees no CUDA device"
    return _verdict(ok, details, f"measured gain within {GAIN_TOL:.0%} of the rule; decodable exactly where "
                                 "the rule routes frames to DALI (a frame the rule sends to pydicom may decode)")


def dali_mixed_vs_cpu(ctx: Context) -> dict:

    ctx.need_cuda()
    ctx.need_dali()
    paths = [case["path"] for case in ctx.fixtures()]
    with Decoder(Preprocess(224), device="cpu", batch_size=8) as cpu:
        on_cpu = cpu.decode(paths)
    with Decoder(Preprocess(224), device="gpu", batch_size=8) as gpu:
        on_gpu = gpu.decode(paths)
        failed_batches = gpu.counts["failed_batches"]
    details, ok = {"failed_batches_on_gpu": failed_batches}, failed_batches == 0
    cpu_images = dict(zip(on_cpu.rows_of_images, on_cpu.images))
    for k, (image, row) in enumerate(zip(on_gpu.images, on_gpu.rows_of_images)):
        diff = (image.cpu() - cpu_images[row]).abs() if row in cpu_images else None
        entry = {"decoded_by": {"cpu": on_cpu.outcomes[row].meta.get("decoded_by"),
                                "gpu": on_gpu.outcomes[row].meta.get("decoded_by")}}
        if diff is None:
            entry["error"] = "not decoded on the CPU"
            ok = False
        else:
            entry.update(max_abs=float(diff.max()), mean_abs=float(diff.mean()))
            ok &= entry["max_abs"] <= IMAGE_MAX and entry["mean_abs"] <= IMAGE_MEAN
        details[paths[row].name] = entry
    statuses = [o.status for o in on_gpu.outcomes]
    ok &= statuses == ["ok"] * len(paths)
    details["gpu_statuses"] = statuses
    return _verdict(ok, details, f"every file ok, no failed batch, max {IMAGE_MAX} and mean {IMAGE_MEAN} apart")


def nvimgcodec_gpu(ctx: Context) -> dict:
    ctx.need_cuda()
    try:
        from nvidia import nvimgcodec
    except ImportError:
        raise Skip("nvImageCodec is not installed (nvidia-nvimgcodec-cu13)") from None
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True,
                                     apply_exif_orientation=False)
    cpu = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                             backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
    gpu = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY),
                                       nvimgcodec.Backend(nvimgcodec.BackendKind.HYBRID_CPU_GPU)])
    details, ok = {}, True
    for case in ctx.fixtures():
        if case["codec"] == "jpeg-lossless" or case["name"].endswith(".png"):
            continue  # PNG has no GPU decoder; the CPU backend cannot decode lossless JPEG
        a, b = cpu.decode(case["frame"], params=params), gpu.decode(case["frame"], params=params)
        if a is None or b is None:
            details[case["name"]] = {"cpu_decoded": a is not None, "gpu_decoded": b is not None}
            ok = False
            continue
        a, b = np.asarray(a.cpu()).astype(np.int64), np.asarray(b.cpu()).astype(np.int64)
        levels = JPEG_LEVELS if case["codec"] == "jpeg" else 0
        diff = int(np.abs(a - b).max()) if a.shape == b.shape else None
        details[case["name"]] = {"max_abs_levels": diff, "gpu_max": int(b.max()), "cpu_max": int(a.max())}
        ok &= diff is not None and diff <= levels * (1 << max(case["precision"] - 8, 0))
    return _verdict(ok, details, f"lossless codecs identical, JPEG within {JPEG_LEVELS} gray levels")


def torchvision_nvjpeg(ctx: Context) -> dict:
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    ctx.need_cuda()
    colour = ctx.work / "colour.jpg"
    ramp = np.linspace(0, 255, 192)[None, :].repeat(192, 0)
    Image.fromarray(np.stack([ramp, ramp.T, ramp[::-1]], -1).astype(np.uint8)).save(colour, quality=90)
    gray = next(c for c in ctx.fixtures() if c["name"] == "gray8.jpg")["path"]
    details, ok = {}, True
    for path, mode, pil_mode in ((gray, ImageReadMode.GRAY, "L"), (colour, ImageReadMode.RGB, "RGB")):
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        on_gpu = decode_jpeg(data, mode=mode, device="cuda").cpu().numpy().astype(np.int64)
        reference = np.asarray(Image.open(path).convert(pil_mode)).astype(np.int64)
        reference = reference[None] if reference.ndim == 2 else reference.transpose(2, 0, 1)
        diff = np.abs(on_gpu - reference)
        details[path.name] = {"max_abs_levels": int(diff.max()), "mean_abs_levels": float(diff.mean())}
        ok &= int(diff.max()) <= JPEG_LEVELS and float(diff.mean()) <= 0.5
    return _verdict(ok, details, f"within {JPEG_LEVELS} gray levels of Pillow, mean at most 0.5")


def onnxruntime_cuda(ctx: Context) -> dict:
    import onnxruntime as ort


    ctx.need_cuda()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"ONNX Runtime has no CUDA provider here ({', '.join(ort.get_available_providers())}): "
                   "pip install 'dcx[gpu]'")
    x = ctx.batch()
    with open_backend(ctx.onnx(), device="cpu") as cpu:
        reference, _, _ = cpu.infer(x)
    with open_backend(ctx.onnx(), device="cuda") as cuda:  # DcxError if the provider fell back
        probs, _, _ = cuda.infer(x.cuda())
        device = str(cuda.device)
    diff = float(np.abs(probs - reference).max())
    return _verdict(diff <= PROB_TOL, {"device": device, "max_abs_prob_diff": diff},
                    f"CUDA provider within {PROB_TOL} of the CPU provider")


def tensorrt(ctx: Context) -> dict:

    ctx.need_cuda()
    why_no_builder = tensorrt_unavailable_reason()
    if why_no_builder is None:
        x = ctx.batch()
        with open_backend(ctx.onnx(), device="cpu") as cpu:
            reference, _, _ = cpu.infer(x)
        details, ok = {}, True
        for label, compatible in (("plan", False), ("version_compatible_plan", True)):
            started = time.perf_counter()
            plan = build_plan(ctx.onnx(), ctx.work / f"{label}.plan", opt_batch=4, max_batch=8,
                              timing_cache=ctx.work / "timing.cache", version_compatible=compatible)
            with open_backend(plan, device="cuda") as backend:
                probs, _, _ = backend.infer(x.cuda())
                runtime = backend.runtime_kind
            diff = float(np.abs(probs - reference).max())
            details[label] = {"runtime": runtime, "max_abs_prob_diff": diff,
                              "build_and_run_s": round(time.perf_counter() - started, 1)}
            ok &= diff <= PROB_TOL
        return _verdict(ok, details, f"fp32 plans within {PROB_TOL} of ONNX Runtime (CPU)")
    loaded = {}
    for kind in ("lean", "dispatch"):
        module, problem = import_runtime(kind)
        if module is None:
            loaded[kind] = problem or "not installed"
            continue
        runtime = module.Runtime(module.Logger(module.Logger.WARNING))
        runtime.engine_host_code_allowed = True
        loaded[kind] = f"{module.__name__} {module.__version__}: Runtime created on the GPU"
    if all(v.startswith(("not installed", "the ")) for v in loaded.values()):
        raise Skip(f"no TensorRT builder ({why_no_builder}) and no runtime of {', '.join(RUNTIME_MODULES)}")
    return _verdict(True, {"builder": why_no_builder, **loaded},
                    "no builder here (no plan to run); the installed runtimes load")


def end_to_end(ctx: Context) -> dict:
    """dcx-infer over a synthetic archive, the way users run it (a child process)."""
    import torch


    ctx.need_dali()
    archive = ctx.work / "archive"
    write_archive(archive, n=ctx.e2e_files, size=512 if ctx.cuda else 256, formats=("png", "jpg", "dcm"), seed=3)
    model, card = ctx.model()
    checkpoint = save_checkpoint(ctx.work / "resnet18.pt", model.state_dict(), card)
    out = ctx.work / "results.csv"
    code = "import sys; from dcx.engine.cli import main; sys.argv[0] = 'dcx-infer'; main()"
    command = [sys.executable, "-c", code, "--engine", str(checkpoint), str(archive), "--out", str(out),
               "--device", "auto", "--no-state", "--force", "--exclude", "manifest.csv", "--exclude", "masks.npz"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"dcx-infer exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    summary = json.loads(out.with_name("results.summary.json").read_text())
    counts = summary["counts"]
    details = {key: summary.get(key) for key in ("device", "backend", "files", "counts", "images_per_s",
                                                 "files_per_s", "wall_s", "setup_s", "stage_s", "batch_size")}
    details["command_wall_s"] = round(time.perf_counter() - started, 1)
    details["gpu_decoder_expected"] = bool(ctx.cuda and torch.cuda.is_available())
    ok = counts.get("ok", 0) == ctx.e2e_files and summary.get("files") == ctx.e2e_files
    return _verdict(ok, details, "one ok row per file")


CHECKS = (environment, torch_cuda_parity, onnx_export, dali_bit_depth, dali_mixed_vs_cpu, nvimgcodec_gpu,
          torchvision_nvjpeg, onnxruntime_cuda, tensorrt, end_to_end)


# --------------------------------------------------------------------------- running


def run_checks(out: Path, *, e2e_files: int | None = None, only: tuple[str, ...] = (), log=print) -> dict:
    """Run the checks (``only``: a subset by name), write ``out/gpu-check.json`` and
    ``out/gpu-check.md``, and return the report."""
    import torch

    cuda = torch.cuda.is_available()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dcx-gpu-check-") as tmp:
        ctx = Context(Path(tmp), e2e_files or (512 if cuda else 24), cuda=cuda)
        for check in CHECKS:
            if only and check.__name__ not in only:
                continue
            log(f"{check.__name__} ...")
            started = time.perf_counter()
            try:
                result = check(ctx)
                if check is environment:
                    result = {"status": "pass", "details": result}
            except Skip as exc:
                result = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:  # one broken path must not hide the others
                result = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:500]}",
                          "traceback": traceback.format_exc()[-2000:]}
            result = {"name": check.__name__, **result, "seconds": round(time.perf_counter() - started, 1)}
            log(f"{check.__name__}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else ""))
            results.append(result)
        _PIPELINES.clear()
    summary = {status: sum(r["status"] == status for r in results) for status in ("pass", "fail", "error", "skipped")}
    report = {"created": rep.stamp(), "machine": rep.machine(), "summary": summary, "checks": results,
              "command": "dcx-bench gpu-check --out " + str(out)}
    rep.write_reports(report, out / "gpu-check.json", out / "gpu-check.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    rows = [[r["name"], r["status"], f"{r['seconds']:.1f}", _short(r)] for r in report["checks"]]
    return (f"# dcx GPU check\n\n{rep.machine_line(report['machine'])}; {report['created']}\n\n"
            f"`{report['command']}`\n\n" + rep.table(["check", "status", "s", "figures / reason"], rows) + "\n")


def _short(result: dict) -> str:
    if result.get("reason"):
        return result["reason"].replace("|", "/")[:200]
    text = json.dumps(result.get("details", {}), default=str)
    return text.replace("|", "/")[:300]


def _verdict(ok: bool, details: dict, bound: str) -> dict:
    return {"status": "pass" if ok else "fail", "bound": bound, "details": details}


def _predictor(case: dict) -> int | None:

    return lossless_jpeg_predictor(case["frame"]) if case["codec"] == "jpeg-lossless" else None


def _gain(decoded: np.ndarray, stored: np.ndarray) -> float:
    """Least-squares factor between DALI's output and the stored values."""
    d, s = decoded.astype(np.float64).ravel(), stored.astype(np.float64).ravel()
    return float(d @ s / (s @ s))


_PIPELINES: dict = {}


def _dali_decode_uint16(frame: bytes, device: str) -> tuple[np.ndarray | None, str | None]:
    """One frame through ``fn.decoders.image`` (uint16 gray) on ``device``: (H x W array, None)
    or (None, DALI's error line). A failed pipeline is dead (GUIDE 2): it is dropped."""
    import torch

    try:
        pipe = _PIPELINES.get(device)
        if pipe is None:
            pipe = _PIPELINES[device] = _decode_pipeline(device, torch.cuda.current_device() if device == "gpu" else None)
        pipe.feed_input("encoded", [np.frombuffer(frame, dtype=np.uint8)])
        (images,) = pipe.run()
        images = images.as_cpu() if hasattr(images, "as_cpu") else images
        return np.array(images.as_array()[0])[..., 0], None
    except RuntimeError as exc:
        _PIPELINES.pop(device, None)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return None, (lines[0] if lines else "DALI error")[:200]


def _decode_pipeline(device: str, device_id):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
    def decode():
        encoded = fn.external_source(name="encoded", batch=True)
        return fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.GRAY,
                                 dtype=types.UINT16, adjust_orientation=False)

    pipe = decode()
    pipe.build()
    return pipe
