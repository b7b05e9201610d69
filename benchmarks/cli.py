"""``dcx-bench``: throughput against the peer baseline, model-only ceilings, accuracy parity.

Each subcommand imports its benchmark's module when it runs: they load PyTorch, and ``--help``
should not wait 4 s for it."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click

from dcx.core.errors import DcxError, Group
from dcx.core.progress import clock
from dcx.core.registry import list_models
from dcx.train.data import read_samples

from . import report as rep
from .archive import MODES, replicate

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_PARITY_FAILED = 1


_STARTED = time.perf_counter()


def _log(message: str) -> None:
    """A phase of a benchmark, with the time since the command started (for logs)."""
    click.echo(f"dcx-bench [{clock(time.perf_counter() - _STARTED)}] {message}", err=True)


def _batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive integers")
    return sizes


@click.group(cls=Group, context_settings=CONTEXT)
def main():
    """Measure dcx: end-to-end throughput against the peer baseline, model-only throughput,
    and accuracy parity of an engine with its PyTorch reference.

    Timings are only as good as the machine is quiet: every report records the load average
    before and after. Run on an idle machine.

    \b
    Examples:
      dcx-bench throughput --engine runs/d121/densenet121-fp32.onnx --data ../shared/data/cxr-dev \\
          --out d121.json --markdown d121.md
      dcx-bench model --engine runs/d121/ --batch-sizes 1,8,32
      dcx-bench parity --reference runs/r18/best.pt --engine runs/r18/resnet18-int8.onnx \\
          --data ../shared/data/cxr-dev --out parity-int8/
      dcx-bench gpu-check --out gpu-check/
    """


@main.command(context_settings=CONTEXT)
@click.option("--engine", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model file dcx-infer serves (.onnx, .plan/.engine, .pt).")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of images (searched recursively, as dcx-infer does).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Measured repetitions (each: one dcx-infer run, model-only and decoding-only, one peer run).")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Run one discarded dcx + peer pair first (page cache, lazy initialisation).")
@click.option("--batch-size", type=click.IntRange(1, 4096), help="dcx-infer --batch-size (default: its own).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N files in dcx-infer's discovery order.")
@click.option("--peer/--no-peer", default=True, show_default=True,
              help="Also run the peer baseline (Deep-COVID style PyTorch loop) on the same files.")
@click.option("--parity/--no-parity", default=True, show_default=True,
              help="With labelled data (class folders or a manifest): gate the first measured dcx-infer run's "
                   "scores against the PyTorch reference (sensitivity and specificity within 1 point, 99% of "
                   "flags alike), as dcx-bench parity does.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The .pt checkpoint the engine was exported from (default: the one its export sidecar names).")
@click.option("--peer-workers", type=click.IntRange(0), help="Peer DataLoader workers (default: one per core).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown table here.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep every run's results and summaries here (default: a temporary folder, removed).")
@click.option("--force", is_flag=True, help="Overwrite existing report files.")
def throughput(engine, data, repeat, warmup, batch_size, limit, peer, parity, reference, peer_workers, out,
               markdown, workdir, force):
    """End-to-end images/s of dcx-infer over DATA, side by side with the peer baseline on the same
    files and weights, and as a share of the model-only throughput.

    dcx-infer runs exactly as users run it (a child process, state database on, fresh output per
    repetition); its run summary gives images/s and busy seconds per stage, the kernel its peak
    memory. The peer is PIL + torchvision transforms + DataLoader + PyTorch eager FP32 at batch 20.
    Right after each dcx-infer run, model-only and decoding-only runs (the engine's decoder) on the
    same files give the CPU milliseconds each image costs; on a CPU the report turns them into the
    ceiling cores x 1000 / (decode + model) that no overlap of the two can beat, and sets each run
    against its own repetition's ceiling (a shared machine's speed drifts). DALI's codec alone and
    the decoder's variants are measured once, at the end. With labelled
    data, the same run's scores pass or fail the parity gate against the PyTorch reference.
    The Markdown table goes to stdout; progress to stderr.

    \b
    Examples:
      dcx-bench throughput --engine runs/r18/resnet18-fp32.onnx --data ../shared/data/cxr-dev
      dcx-bench throughput --engine m.onnx --data /tmp/archive-10k --no-peer --repeat 1 --no-warmup
    """
    from .throughput import markdown as throughput_markdown, measure_throughput

    rep.check_writable(out, markdown, force=force)
    with _workdir(workdir) as folder:
        report = measure_throughput(engine, data, folder, repeat=repeat, warmup=warmup, batch_size=batch_size,
                                    limit=limit, peer=peer, parity=parity, reference=reference,
                                    peer_workers=peer_workers, log=_log)
    text = throughput_markdown(report)
    rep.write_reports(report, out, markdown, text)
    click.echo(text)


@main.command(context_settings=CONTEXT)
@click.option("--engine", "engines", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Model file, or a folder: every .onnx/.plan/.engine/.pt directly inside (repeatable).")
@click.option("--batch-sizes", default="1,8,16,32,64", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes.")
@click.option("--size", type=click.IntRange(16), help="Input size in pixels (default: the model card's).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0), help="Untimed calls per batch size.")
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1), help="Timed calls per batch size.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown table here.")
@click.option("--force", is_flag=True, help="Overwrite existing report files.")
def model(engines, batch_sizes, size, warmup, repeat, out, markdown, force):
    """Model-only images/s and latency per batch size, for each artefact given (each backend and
    precision present), on prepared tensors: the ceiling end-to-end throughput is compared with.

    Artefacts are opened with the engine's own backends (same sessions and thread settings as
    dcx-infer), all at once, and their timed calls take turns (one call of each, then again), so
    a machine whose speed drifts slows them alike and their ratios hold.

    \b
    Examples:
      dcx-bench model --engine runs/r18/                  # fp32, fp16, int8 ONNX and best.pt
      dcx-bench model --engine m.onnx --batch-sizes 1,32 --repeat 20
    """
    from .model_bench import bench_model_files, expand_engines, markdown as model_markdown

    rep.check_writable(out, markdown, force=force)
    machine = rep.machine()
    paths = expand_engines(engines)
    _log(f"{len(paths)} artefact(s), taking turns call by call: batch sizes {','.join(map(str, batch_sizes))}")
    records = bench_model_files(paths, batch_sizes, size=size, warmup=warmup, repeat=repeat)
    report = {"kind": "model", "created": rep.stamp(), "machine": machine,
              "loadavg_after": rep.machine()["loadavg"], "models": records}
    text = model_markdown(records, machine)
    rep.write_reports(report, out, markdown, text)
    click.echo(text)


@main.command(context_settings=CONTEXT)
@click.option("--archs", default=",".join(list_models()), show_default=True,
              help="Comma-separated registry architectures.")
@click.option("--size", default=224, show_default=True, type=click.IntRange(16), help="Input size in pixels.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1), help="Timed calls per model.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown table here.")
@click.option("--force", is_flag=True, help="Overwrite existing report files.")
def archs(archs, size, batch_size, repeat, out, markdown, force):
    """Parameters, GFLOPs and model-only images/s of each architecture's FP32 ONNX graph (random
    weights; exported and verified by dcx-export's own pipeline) on this machine: which network
    a CPU-only site can afford.

    \b
    Examples:
      dcx-bench archs
      dcx-bench archs --archs resnet18,mobilenet_v2 --size 224 --batch-size 16 --repeat 10
    """
    from . import arch_cost

    names = [a.strip() for a in archs.split(",") if a.strip()]
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise DcxError(f"unknown architecture {', '.join(unknown)}; choose from {', '.join(list_models())}")
    rep.check_writable(out, markdown, force=force)
    machine = rep.machine()
    with _workdir(None) as folder:
        records = arch_cost.measure_architectures(names, folder, size=size, batch_size=batch_size,
                                                  repeat=repeat, log=_log)
    report = {"kind": "archs", "created": rep.stamp(), "machine": machine,
              "loadavg_after": rep.machine()["loadavg"], "architectures": records}
    text = arch_cost.markdown(records, machine)
    rep.write_reports(report, out, markdown, text)
    click.echo(text)


@main.command(context_settings=CONTEXT)
@click.option("--reference", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The PyTorch checkpoint (.pt from dcx-train): the reference.")
@click.option("--engine", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="What dcx-infer serves: .onnx (FP32/FP16/INT8), .plan/.engine, or a .pt.")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Labelled images: class folders or a manifest CSV (path,label).")
@click.option("--tolerance", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Largest |delta| of sensitivity and of specificity allowed (0.01 = 1 point).")
@click.option("--min-agreement", default=0.99, show_default=True, type=click.FloatRange(0, 1),
              help="Smallest share of images on which both flag alike.")
@click.option("--max-delta-p", type=click.FloatRange(0, 1),
              help="Also fail when max |delta p| exceeds this (e.g. 1e-4 for an FP32 engine).")
@click.option("--decompose/--no-decompose", default=True, show_default=True,
              help="Also run the checkpoint through dcx-infer, to split any gap into decoding and backend numerics.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder: parity.json, parity.md, roc.png, per_image.csv and the dcx-infer runs "
                   "(default: parity-<engine name>).")
@click.option("--force", is_flag=True, help="Overwrite an existing report folder's files.")
def parity(reference, engine, data, tolerance, min_agreement, max_delta_p, decompose, batch_size, out_dir, force):
    """Does ENGINE make the decisions the PyTorch REFERENCE makes? Runs both over the same labelled
    files -- the reference through the training/evaluation reader in PyTorch FP32, the engine
    through dcx-infer itself -- and compares sensitivity and specificity at the card's threshold,
    AUC, accuracy, per-image agreement and |delta p|, with a ROC plot of both.

    Exits 1 when |delta sensitivity| or |delta specificity| exceeds --tolerance or agreement falls
    under --min-agreement (or max |delta p| over --max-delta-p, when given); 0 when all pass.

    \b
    Examples:
      dcx-bench parity --reference runs/r18/best.pt --engine runs/r18/resnet18-fp32.onnx \\
          --data ../shared/data/cxr-dev --max-delta-p 1e-4
      dcx-bench parity --reference best.pt --engine resnet18-int8.onnx --data test.csv --out parity-int8/
    """
    from .parity import markdown as parity_markdown, measure_parity, plot_roc, write_per_image

    out_dir = out_dir or Path(f"parity-{engine.name}")
    files = [out_dir / n for n in ("parity.json", "parity.md", "roc.png", "per_image.csv")]
    rep.check_writable(*files, force=force)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, rows = measure_parity(reference, engine, data, out_dir, tolerance=tolerance, min_agreement=min_agreement,
                                  max_delta_p=max_delta_p, decompose=decompose, batch_size=batch_size, log=_log)
    report.update(created=rep.stamp(), machine=rep.machine())
    text = parity_markdown(report)
    rep.write_reports(report, files[0], files[1], text)
    plot_roc(report, files[2])
    write_per_image(rows, files[3])
    click.echo(text)
    click.echo(f"report: {out_dir}/ (parity.json, parity.md, roc.png, per_image.csv)")
    if not report["passed"]:
        sys.exit(EXIT_PARITY_FAILED)


@main.command(context_settings=CONTEXT)
@click.option("--reference", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="dcx checkpoint (.pt) to run.")
@click.option("--files-from", "files_from", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with one image path per line.")
@click.option("--batch-size", default=20, show_default=True, type=click.IntRange(1), help="Deep-COVID used 20.")
@click.option("--workers", type=click.IntRange(0), help="DataLoader workers (default: one per core).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON with timings and probabilities.")
def peer(reference, files_from, batch_size, workers, out):
    """The peer baseline alone: score the listed files the Deep-COVID / torchvision way (PIL,
    torchvision transforms, DataLoader, PyTorch eager FP32) and time it. `dcx-bench throughput`
    runs this in a child process next to dcx-infer.

    \b
    Example:
      find ../shared/data/cxr-dev -name '*.png' > files.txt
      dcx-bench peer --reference runs/r18/best.pt --files-from files.txt
    """
    from .peer_baseline import run_peer

    files = [line.rstrip("\n") for line in open(files_from, encoding="utf-8") if line.strip()]
    if not files:
        raise DcxError(f"{files_from} lists no files")
    result = run_peer(reference, files, batch_size=batch_size, workers=workers)
    if out is not None:
        Path(out).write_text(json.dumps(result.to_dict()), encoding="utf-8")
    click.echo(f"peer: {len(files)} images in {result.seconds:.2f} s (load {result.load_s:.2f} s): "
               f"{result.images_per_s:.1f} img/s, batch {batch_size}, {result.workers} workers")


@main.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "count", default=10000, show_default=True, type=click.IntRange(1), help="Files to make.")
@click.option("--mode", default="hardlink", show_default=True, type=click.Choice(MODES),
              help="How each file is made (hard links fall back to copies across file systems).")
@click.option("--force", is_flag=True, help="Add to a non-empty OUT (existing names are replaced).")
def archive(source, out, count, mode, force):
    """Make a large benchmark archive: N files replicated round-robin from the images under SOURCE,
    1,000 per sub-folder -- for memory and long-run measurements.

    \b
    Example:
      dcx-bench archive ../shared/data/cxr-dev /tmp/cxr-10k --n 10000
      dcx-bench throughput --engine m.onnx --data /tmp/cxr-10k --no-peer --repeat 1 --no-warmup
    """
    distinct = replicate(source, out, count, mode=mode, force=force)
    click.echo(f"{out}: {count} files ({mode}) from {distinct} distinct images of {source}")


class _workdir:
    """The given folder (kept), or a temporary one (removed)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._tmp = None

    def __enter__(self) -> Path:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        self._tmp = tempfile.TemporaryDirectory(prefix="dcx-bench-")
        return Path(self._tmp.name)

    def __exit__(self, *exc_info):
        if self._tmp is not None:
            self._tmp.cleanup()



@main.command("gpu-check", context_settings=CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for gpu-check.json and gpu-check.md.")
@click.option("--e2e-files", type=click.IntRange(3), help="Files in the end-to-end archive (default: 512 on a "
              "GPU, 24 on a CPU).")
@click.option("--only", multiple=True, help="Run only this check (repeatable); names as in the report.")
@click.option("--force", is_flag=True, help="Overwrite an existing report in OUT.")
def gpu_check(out, e2e_files, only, force):
    """Prove every GPU path this machine can reach: torch CUDA vs CPU parity, ONNX export, DALI's
    bit-depth rule on both devices, DALI mixed vs CPU decoding, nvImageCodec and torchvision nvJPEG
    decoding, ONNX Runtime CUDA, TensorRT, and dcx-infer end to end.

    On a machine without a GPU the GPU checks are reported as skipped, with the reason, and the
    rest still runs (18-27 s of CPU time on the 2-core development machine). Exit status: 0 when
    nothing failed, 1 otherwise.
    """
    from . import gpu_check as gc

    names = [c.__name__ for c in gc.CHECKS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise DcxError(f"unknown check {', '.join(unknown)}; choose from {', '.join(names)}")
    rep.check_writable(out / "gpu-check.json", out / "gpu-check.md", force=force)
    report = gc.run_checks(out, e2e_files=e2e_files, only=tuple(only), log=_log)
    click.echo(f"{out / 'gpu-check.json'}: " + ", ".join(f"{v} {k}" for k, v in report["summary"].items()))
    if report["summary"]["fail"] or report["summary"]["error"]:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Held-out in-distribution images: a split manifest (e.g. RUN/splits/test.csv) or class folders.")
@click.option("--n", default=60, show_default=True, type=click.IntRange(1), help="Images per generated family.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown table here.")
@click.option("--force", is_flag=True, help="Overwrite existing report files.")
def ood(checkpoint, data, n, seed, out, markdown, force):
    """AUROC of the OOD score (and of the energy and feature-norm alternatives) for held-out
    in-distribution films vs images no one trained on: generated natural-scene stand-ins,
    noise, gradients, text, CT-like slices, and the films flipped, rotated, inverted or
    rotated and cropped (a lateral-film stand-in); plus the share of each marked OOD.

    \b
    Example:
      dcx-bench ood runs/r18/best.pt --data runs/r18/splits/test.csv --markdown ood.md
    """
    from .ood_eval import evaluate as evaluate_ood, markdown as ood_markdown

    rep.check_writable(out, markdown, force=force)
    report = {"kind": "ood", "created": rep.stamp(), "machine": rep.machine(),
              **evaluate_ood(checkpoint, [s.path for s in read_samples(data)], n=n, seed=seed)}
    text = ood_markdown(report)
    rep.write_reports(report, out, markdown, text)
    click.echo(text)
