"""End-to-end throughput of ``dcx-infer`` against the peer baseline, side by side.

One invocation measures, on the same files and the same weights:

- **dcx**: the real ``dcx-infer`` command with its defaults (state database on, fresh output
  folder per repetition), as a child process; images/s and time per stage come from the
  run summary it writes, peak memory from the kernel's accounting of that child;
- **peer**: the Deep-COVID / torchvision loop (:mod:`.peer_baseline`) on exactly the files
  dcx scored ``ok``, also a child process (``dcx-bench peer``);
- **model-only**: the engine's backend on prepared tensors at the engine's batch size, the
  ceiling that end-to-end throughput is compared with;
- **decoding only**: the engine's decoder, and DALI's bare codec, on the same files
  (:mod:`.decode_bench`). With the process CPU time per image of each part, a CPU run gets
  its budget: ``cores / (decoder + model CPU ms per image)`` is the most any overlap of the
  two can reach, and the same with the bare codec is the most any decoder could. Model-only
  and the engine's decoder are measured again right after each measured dcx-infer run, and
  each run is set against the ceiling of its own repetition: on a shared VM a core's speed
  moves between minutes (model-only resnet18 INT8 cost 9.5 CPU-ms per image in one invocation,
  17.4 in the next), so a ceiling measured once, minutes away, misjudges the runs;
- **parity** (labelled data: class folders or a manifest): the first measured dcx-infer run's
  scores against the PyTorch reference through :func:`.parity.gate_run`, so a speed figure
  and the accuracy it was bought with come from the same run.

Both timed figures cover model loading through the last score and exclude interpreter start-up
and the imports of each command's module (dcx-infer's summary starts its clock before opening
the model; the peer's clock starts before loading the checkpoint). dcx-infer imports DALI and
its runtime when the run starts, so its clock includes them (~0.5 s); the peer's torch,
torchvision and PIL are imported before its clock. Repetitions alternate dcx and peer runs,
so a change in machine load hits both alike; an optional warm-up pair runs first and is
discarded (page cache, lazily compiled kernels).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dcx.core import compare
from dcx.core.errors import DcxError
from dcx.engine.discover import discover
from dcx.train.data import read_samples

from . import report as rep
from .decode_bench import bench_alternatives, bench_engine_decoder, cpu_ceiling
from .engine_runs import cli_command, read_results, resolve_reference, run_infer
from .measure import run_child, summarise
from .model_bench import bench_model_file
from .parity import gate_run

#: Decoding-only runs take at most this many of the scored files (in dcx's order): enough for a
#: stable per-image cost, without doubling the time of a 10,000-file memory run.
DECODING_ONLY_FILES = 1000


def measure_throughput(engine: Path, data: Path, workdir: Path, *, repeat: int = 3, warmup: bool = True,
                       batch_size: int | None = None, limit: int | None = None, peer: bool = True,
                       reference: Path | None = None, peer_workers: int | None = None,
                       parity: bool = True, model_repeat: int = 5, log=lambda message: None) -> dict:
    """Run the whole comparison; returns the JSON-able report."""
    if not data.exists():
        raise DcxError(f"data not found: {data}")
    ref = resolve_reference(engine, reference) if peer or parity else None
    load_before = rep.machine()
    source = _source(data, workdir, limit)

    dcx_runs, peer_runs, budgets, scored = [], [], [], None
    peer_list = workdir / "peer-files.txt"
    for index in range(-1 if warmup else 0, repeat):
        label = "warm-up" if index < 0 else f"repetition {index + 1}/{repeat}"
        run = run_infer(engine, workdir / f"dcx-{index + 1}", batch_size=batch_size, **source)
        log(f"{label}: dcx-infer {run.summary['images_per_s']} img/s")
        if scored is None:
            scored = _scored_files(run.out, peer_list)
        if index >= 0:
            dcx_runs.append(run)
            budgets.append(_budget_pass(engine, scored[:DECODING_ONLY_FILES], run.summary, model_repeat, log))
        if peer:
            result = _run_peer(ref[0], peer_list, workdir / f"peer-{index + 1}.json", peer_workers)
            log(f"{label}: peer {result['images_per_s']:.1f} img/s")
            if index >= 0:
                peer_runs.append(result)

    first = dcx_runs[0].summary
    log("decoding only: DALI's codec alone, the decoder's variants")
    decoding = {"engine_decoder": _summarise_passes([b["decoder"] for b in budgets]),
                **bench_alternatives(scored[:DECODING_ONLY_FILES], budgets[0]["rasters"], engine,
                                     batch_size=first["batch_size"], threads=first["decode_threads"],
                                     device=_decoder_device(first))}
    report = {
        "kind": "throughput",
        "created": rep.stamp(),
        "machine": load_before,
        "loadavg_after": rep.machine()["loadavg"],
        "data": {"path": os.fspath(data), "limit": limit, "files": first["files"], "counts": first["counts"],
                 "formats": first["formats"], "bytes_scored": _bytes(scored)},
        "engine": {"path": os.fspath(engine), "backend": first["backend"], "precision": first["precision"],
                   "arch": first["model"]["arch"], "input_size": first["model"]["input_size"],
                   "batch_size": first["batch_size"], "decode_threads": first["decode_threads"],
                   "device": first["device"]},
        "settings": {"repeat": repeat, "warmup": warmup, "model_repeat": model_repeat},
        "dcx": _dcx_section(dcx_runs),
        "model_only": {**_summarise_passes([b["model"] for b in budgets]), "batch_size": first["batch_size"],
                       "backend": budgets[0]["backend"], "precision": budgets[0]["precision"]},
        "decoding": decoding,
    }
    report["cpu"] = _cpu_budget(report)
    if peer:
        report["reference"] = {"checkpoint": os.fspath(ref[0]), "resolved_from": ref[1]}
        report["peer"] = _peer_section(peer_runs)
        report["peer_agreement"] = _agreement(read_results(dcx_runs[0].out), peer_runs[0])
    if parity:
        report["parity"] = _parity(ref[0], engine, data, dcx_runs[0], log)
    report["ratios"] = _ratios(report)
    return report


def _budget_pass(engine: Path, files: list[str], summary: dict, model_repeat: int, log) -> dict:
    """Model-only and the engine's decoder alone, as the dcx-infer run of ``summary`` ran them
    (batch, decode threads, device), measured right after it: that run's CPU budget."""
    log(f"model-only: {summary['backend']} {summary['precision']} at batch {summary['batch_size']}; decoding only: "
        "the engine's decoder")
    model = bench_model_file(engine, [summary["batch_size"]], repeat=model_repeat)
    decoder, rasters = bench_engine_decoder(files, engine, batch_size=summary["batch_size"],
                                            threads=summary["decode_threads"], device=_decoder_device(summary))
    return {"model": model["results"][0], "backend": model["backend"], "precision": model["precision"],
            "decoder": decoder, "rasters": rasters}


def _decoder_device(summary: dict) -> str:
    return "gpu" if summary["device"].startswith("cuda") else "cpu"


def _summarise_passes(passes: list[dict]) -> dict:
    """Passes of one measurement (one per repetition) as one record: the median images/s and
    CPU ms per image, the range of images/s, and every pass."""
    rates = [p["images_per_s"] for p in passes]
    ranges = [p.get("images_per_s_range", [p["images_per_s"]] * 2) for p in passes]
    return {**{k: v for k, v in passes[0].items() if k not in ("images_per_s", "images_per_s_range",
                                                               "cpu_ms_per_image", "latency_s")},
            "images_per_s": summarise(rates)["median"],
            "images_per_s_range": [min(r[0] for r in ranges), max(r[1] for r in ranges)],
            "cpu_ms_per_image": summarise([p["cpu_ms_per_image"] for p in passes])["median"],
            "passes": passes}


def _parity(reference: Path, engine: Path, data: Path, run, log) -> dict:
    """The parity gates of ``run`` when ``data`` is labelled (over the labelled files it scored);
    otherwise why there are none."""
    try:
        samples = read_samples(data)
    except DcxError as exc:
        return {"skipped": f"no labels in {data}: {exc.message}"}
    rows = {os.path.abspath(row["path"]) for row in read_results(run.out)}
    samples = [s for s in samples if os.path.abspath(s.path) in rows]
    if not samples:
        return {"skipped": f"dcx-infer scored none of the labelled files of {data}"}
    try:
        report, _ = gate_run(reference, samples, engine, run, data, log=log)
    except DcxError as exc:  # e.g. a --limit that took images of one class only
        return {"skipped": exc.message}
    return {key: report[key] for key in ("data", "reference", "engine", "agreement", "deltas", "gates", "passed")}


def _source(data: Path, workdir: Path, limit: int | None) -> dict:
    """dcx-infer's input: the folder itself, or a list of its first ``limit`` files in the
    engine's own discovery order."""
    if limit is None:
        return {"archive": data}

    listing = workdir / "files.txt"
    with open(listing, "w", encoding="utf-8", errors="surrogateescape") as f:
        taken = 0
        for candidate in discover(data):
            if taken == limit:
                break
            if candidate.error is None:
                f.write(os.path.abspath(candidate.path) + "\n")
                taken += 1
    if taken == 0:
        raise DcxError(f"no files in {data}")
    return {"files_from": listing}


def _scored_files(results: Path, listing: Path) -> list[str]:
    """The files dcx scored ``ok``, in its order: the peer's input, so both see the same images."""
    files = [row["path"] for row in read_results(results) if row["status"] == "ok"]
    if not files:
        raise DcxError(f"dcx-infer scored no file (see {results}); nothing to benchmark")
    listing.write_text("".join(f"{os.path.abspath(p)}\n" for p in files), encoding="utf-8")
    return files


def _run_peer(checkpoint: Path, files: Path, out: Path, workers: int | None) -> dict:
    args = ["peer", "--reference", checkpoint, "--files-from", files, "--out", out]
    if workers is not None:
        args += ["--workers", workers]
    child = run_child(cli_command("dcx.benchmarks.cli", "dcx-bench", *args))
    if child.returncode != 0:
        tail = "\n".join(child.output.strip().splitlines()[-5:])
        raise DcxError(f"peer baseline failed (exit {child.returncode}):\n{tail}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["peak_rss_bytes"] = child.peak_rss_bytes
    result["process_wall_s"] = child.wall_s
    return result


def _dcx_section(runs) -> dict:
    first = runs[0]
    stages = {stage: summarise([r.summary["stage_s"][stage] for r in runs]) for stage in first.summary["stage_s"]}
    return {
        "command": first.child.command[3:],  # after "python -c CODE": the dcx-infer arguments
        # Like for like with the peer, whose clock includes loading its checkpoint: images over the
        # run's whole wall time, setup included (the summary's own images_per_s leaves setup out).
        "images_per_s": summarise([r.summary["scored_this_run"] / r.summary["wall_s"] for r in runs]),
        "setup_s": summarise([r.summary["setup_s"] for r in runs]),
        "first_scores_s": _summarise_if_all(runs, "first_scores_s"),
        "images_per_s_after_first": _summarise_if_all(runs, "images_per_s_after_first"),
        "wall_s": summarise([r.summary["wall_s"] for r in runs]),
        "process_wall_s": summarise([r.child.wall_s for r in runs]),
        "peak_rss_bytes": max(r.child.peak_rss_bytes for r in runs),
        "stage_s": stages,
        "summaries": [r.summary for r in runs],
    }


def _summarise_if_all(runs, key: str) -> dict | None:
    """The summary figure ``key`` over the runs, or None where a run has none (too few images)."""
    values = [r.summary[key] for r in runs]
    return None if None in values else summarise(values)


def _cpu_budget(report: dict) -> dict:
    """CPU milliseconds per image of each part and, for a CPU run, the ceilings they imply."""
    dcx = report["dcx"]["summaries"]
    decoder, codec = report["decoding"]["engine_decoder"], report["decoding"]["codec_only"]
    budget = {"cores": report["machine"]["cores"],
              "dcx_ms_per_image": summarise([1000 * s["cpu_s"] / s["scored_this_run"] for s in dcx])["median"],
              "model_ms_per_image": report["model_only"]["cpu_ms_per_image"],
              "decoder_ms_per_image": decoder["cpu_ms_per_image"],
              "codec_ms_per_image": codec.get("cpu_ms_per_image")}
    if report["engine"]["device"] == "cpu":
        model = report["model_only"]["images_per_s"]
        ceiling = cpu_ceiling(budget["cores"], budget["decoder_ms_per_image"], budget["model_ms_per_image"])
        # each run against the ceiling measured right after it
        ceilings = [cpu_ceiling(budget["cores"], d["cpu_ms_per_image"], m["cpu_ms_per_image"])
                    for d, m in zip(decoder["passes"], report["model_only"]["passes"])]
        budget.update(ceiling_images_per_s=ceiling, ceiling_over_model_only=ceiling / model,
                      ceiling_per_repetition=ceilings,
                      dcx_over_ceiling=_over(report["dcx"]["images_per_s"], ceilings))
        if report["dcx"]["images_per_s_after_first"] is not None:
            budget["after_first_over_ceiling"] = _over(report["dcx"]["images_per_s_after_first"], ceilings)
        if budget["codec_ms_per_image"]:
            floor = cpu_ceiling(budget["cores"], budget["codec_ms_per_image"], budget["model_ms_per_image"])
            budget.update(codec_ceiling_images_per_s=floor, codec_ceiling_over_model_only=floor / model)
    return budget


def _over(rates: dict, ceilings: list[float]) -> dict:
    """Each repetition's rate over its own ceiling, summarised."""
    return summarise([rate / ceiling for rate, ceiling in zip(rates["values"], ceilings)])


def _peer_section(runs: list[dict]) -> dict:
    first = runs[0]
    return {
        "style": "PIL decode + torchvision v2 transforms + DataLoader + PyTorch eager FP32",
        "batch_size": first["batch_size"], "workers": first["workers"], "torch_threads": first["torch_threads"],
        "images_per_s": summarise([r["images_per_s"] for r in runs]),
        "seconds": summarise([r["seconds"] for r in runs]),
        "load_s": summarise([r["load_s"] for r in runs]),
        "process_wall_s": summarise([r["process_wall_s"] for r in runs]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


def _agreement(dcx_rows: list[dict], peer_run: dict) -> dict:
    """Do dcx and the peer score alike? Not a gate (their resizers differ slightly), but a large
    gap would mean they did not run the same weights."""
    peer_probs = dict(zip(peer_run["files"], peer_run["probs"]))
    classes = peer_run["classes"]
    positive = classes.index(peer_run["positive"])
    pairs = [([float(row[f"p_{c}"]) for c in classes], peer_probs[os.path.abspath(row["path"])], float(row["threshold"]))
             for row in dcx_rows if row["status"] == "ok" and os.path.abspath(row["path"]) in peer_probs]
    if not pairs:
        raise DcxError("dcx and the peer scored no file in common; cannot compare them")
    mine, theirs, thresholds = (np.array(column, dtype=float) for column in zip(*pairs))
    threshold = float(thresholds[0])  # one model card, one threshold
    return {**compare.agreement(theirs[:, positive], threshold, mine[:, positive], threshold),
            "class_agreement": float(np.mean(mine.argmax(1) == theirs.argmax(1)))}


def _ratios(report: dict) -> dict:
    dcx = report["dcx"]["images_per_s"]
    ratios = {"dcx_over_model_only": dcx["median"] / report["model_only"]["images_per_s"]}
    if "peer" in report:
        peer = report["peer"]["images_per_s"]
        pairs = [d / p for d, p in zip(dcx["values"], peer["values"])]
        ratios["dcx_over_peer"] = dcx["median"] / peer["median"]
        ratios["dcx_over_peer_pairs"] = summarise(pairs)
        # the same comparison over whole processes: interpreter start, imports and exit included
        ratios["process_wall_peer_over_dcx"] = (report["peer"]["process_wall_s"]["median"]
                                                / report["dcx"]["process_wall_s"]["median"])
    return ratios


def _bytes(files: list[str]) -> int:
    return sum(os.path.getsize(p) for p in files)


def markdown(report: dict) -> str:
    """The people's view: one table of rates, the ratios, and where dcx's time went."""
    eng, dcx, data = report["engine"], report["dcx"], report["data"]
    mo = report["model_only"]
    title = (f"### {eng['arch']} {eng['precision'].upper()} ({eng['backend']}), {eng['input_size']} px: "
             f"{data['counts']['ok']} images of {data['path']}")
    cpu, decoding = report["cpu"], report["decoding"]
    rows = [[f"dcx-infer (batch {eng['batch_size']}, {eng['decode_threads']} decode threads)",
             rep.fmt(dcx["images_per_s"]["median"]), rep.fmt_range(dcx["images_per_s"]),
             rep.fmt(cpu["dcx_ms_per_image"], 1), rep.mib(dcx["peak_rss_bytes"])]]
    if "peer" in report:
        peer = report["peer"]
        rows.append([f"peer: PIL + torchvision + DataLoader ({peer['workers']} workers), eager FP32, batch "
                     f"{peer['batch_size']}", rep.fmt(peer["images_per_s"]["median"]),
                     rep.fmt_range(peer["images_per_s"]), "–", rep.mib(peer["peak_rss_bytes"])])
    rows.append([f"model-only ({mo['backend']} {mo['precision']}, batch {mo['batch_size']}, prepared tensors)",
                 rep.fmt(mo["images_per_s"]), _range(mo), rep.fmt(cpu["model_ms_per_image"], 1), "–"])
    parts = [("decoding only: the engine's decoder (no inference)", decoding["engine_decoder"]),
             ("decoding only: DALI's codec alone (no resize, no checks)", decoding["codec_only"])]
    if "dct_scaled" in decoding:
        parts.append((f"decoding only: the engine's decoder, DCT-scaled JPEG "
                      f"({decoding['dct_scaled']['dct_scaled_files']} files scaled)", decoding["dct_scaled"]))
    if "dali_resize" in decoding:
        parts.append(("decoding only: the engine's decoder, DALI resizing as on a GPU", decoding["dali_resize"]))
    for label, part in parts:
        if part["images"]:
            rows.append([f"{label}, {part['images']} images", rep.fmt(part["images_per_s"]),
                         _range(part) if len(part.get("passes", ())) > 1 else "one pass",
                         rep.fmt(part["cpu_ms_per_image"], 1), "–"])
    after = report["loadavg_after"]
    lines = [title, "", f"Machine: {rep.machine_line(report['machine'])} before, {after[0] if after else '?'} after; "
             f"{report['settings']['repeat']} repetitions, median and min–max.", "",
             rep.table(["run", "images/s", "range", "CPU ms/image", "peak RSS"], rows), ""]
    ratios = report["ratios"]
    if "dcx_over_peer" in ratios:
        lines.append(f"- dcx / peer: **{ratios['dcx_over_peer']:.2f}x** (per repetition pair "
                     f"{rep.fmt_range(ratios['dcx_over_peer_pairs'], 2)}x)")
        lines.append(f"- whole processes, interpreter start, imports and exit included (the clocks above start "
                     f"after the imports of each command's module; dcx-infer's includes importing DALI and its "
                     f"runtime): dcx-infer "
                     f"{report['dcx']['process_wall_s']['median']:.2f} s, peer "
                     f"{report['peer']['process_wall_s']['median']:.2f} s: "
                     f"**{ratios['process_wall_peer_over_dcx']:.2f}x**")
        agree = report["peer_agreement"]
        lines.append(f"- same weights check, dcx vs peer: flag agreement {agree['flag_agreement']:.1%}, "
                     f"max |delta p| {agree['max_abs_delta_p']:.4f} (reference: {report['reference']['checkpoint']}, "
                     f"{report['reference']['resolved_from']})")
    lines.append(f"- dcx / model-only: **{ratios['dcx_over_model_only']:.0%}**")
    lines += _parity_lines(report)
    lines += _budget_lines(report)
    wall, setup = dcx["wall_s"]["median"], dcx["setup_s"]["median"]
    stage_rows = [[stage, rep.fmt(s["median"], 2), f"{s['median'] / wall:.0%}"] for stage, s in dcx["stage_s"].items()]
    lines += ["", f"dcx-infer stages (busy seconds, median; wall {wall:.2f} s, of which setup {setup:.2f} s "
              "(model load, pipeline builds; counted in images/s, as the peer's checkpoint load is); decode "
              "runs in a background thread and overlaps inference, so shares can sum past 100%; read = file "
              "bytes and headers, decode = DALI decode + resize, preprocess = geometry and assembly):", "",
              rep.table(["stage", "seconds", "of wall"], stage_rows), ""]
    return "\n".join(lines)


def _range(record: dict) -> str:
    low, high = record["images_per_s_range"]
    return f"{rep.fmt(low)}–{rep.fmt(high)}"


def _after_first(report: dict) -> str:
    """Where the rest of the ceiling went: the start (imports, model load, the first batch)
    against the pace after it."""
    cpu, dcx = report["cpu"], report["dcx"]
    if "after_first_over_ceiling" not in cpu:
        return ""
    return (f"; its first scores came after {dcx['first_scores_s']['median']:.2f} s (imports of the decoder "
            f"and the runtime, model load, pipeline builds, the first batch), and after them it ran "
            f"{dcx['images_per_s_after_first']['median']:.1f} img/s = {_shares(cpu['after_first_over_ceiling'])}")


def _shares(ratio: dict) -> str:
    """``93% of it`` and, over several repetitions, their range."""
    spread = f" ({ratio['min']:.0%}–{ratio['max']:.0%})" if ratio["n"] > 1 else ""
    return f"{ratio['median']:.0%}{spread} of it"


def _parity_lines(report: dict) -> list[str]:
    if "parity" not in report:
        return []
    parity = report["parity"]
    if "skipped" in parity:
        return [f"- parity gate: not run ({parity['skipped']})"]
    ref, eng, agree = parity["reference"], parity["engine"], parity["agreement"]
    gates = "; ".join(f"{g['name']} {g['value']:.4g} {'PASS' if g['passed'] else 'FAIL'}" for g in parity["gates"])
    return [f"- parity gate, this dcx-infer run vs the PyTorch reference on {parity['data']['scored_by_both']} "
            f"labelled images: **{'PASSED' if parity['passed'] else 'FAILED'}** ({gates}); sensitivity "
            f"{100 * ref['sensitivity']:.1f} -> {100 * eng['sensitivity']:.1f} %, specificity "
            f"{100 * ref['specificity']:.1f} -> {100 * eng['specificity']:.1f} %, {agree['disagreements']} "
            f"flags differ, max |delta p| {agree['max_abs_delta_p']:.4f}"]


def _measured_beside(ceilings: list[float]) -> str:
    if len(ceilings) == 1:
        return "model-only and the decoder measured right after the dcx-infer run"
    return ("medians; each repetition measured model-only and the decoder again right after its dcx-infer run, "
            f"ceilings {'/'.join(f'{c:.1f}' for c in ceilings)} img/s")


def _budget_lines(report: dict) -> list[str]:
    """What the CPU time per image allows on this machine (CPU runs only)."""
    cpu = report["cpu"]
    if "ceiling_images_per_s" not in cpu:
        return []
    cores, model, decoder = cpu["cores"], cpu["model_ms_per_image"], cpu["decoder_ms_per_image"]
    lines = ["", f"CPU budget (process CPU ms per image, every thread; dcx-infer's includes setup): decoding and "
             f"inference share {cores} cores, so end to end cannot beat {cores} x 1000 / (decode + model) images/s "
             "however they overlap.", "",
             f"- with this decoder: {cores} x 1000 / ({decoder:.1f} + {model:.1f}) = "
             f"**{cpu['ceiling_images_per_s']:.1f} img/s = {cpu['ceiling_over_model_only']:.0%} of model-only** "
             f"({_measured_beside(cpu['ceiling_per_repetition'])}); dcx-infer reaches "
             f"**{_shares(cpu['dcx_over_ceiling'])}**, each run against its own repetition's ceiling"
             + _after_first(report)]
    if "codec_ceiling_images_per_s" in cpu:
        floor = cpu["codec_ceiling_images_per_s"]
        vs_peer = (f", {floor / report['peer']['images_per_s']['median']:.2f}x the peer"
                   if "peer" in report else "")
        lines.append(f"- with DALI's codec alone as the whole decoder (no resize, no checks): {cores} x 1000 / "
                     f"({cpu['codec_ms_per_image']:.1f} + {model:.1f}) = **{floor:.1f} img/s = "
                     f"{cpu['codec_ceiling_over_model_only']:.0%} of model-only{vs_peer}**: the most any decoder "
                     "of these files could allow with this model on this CPU")
    return lines
