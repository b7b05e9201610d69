"""INT8 calibration study: CPU-target INT8 variants (method x sample count x float layers) of one
checkpoint, each against PyTorch FP32 on the checkpoint's validation split, with dcx-export's gates.

    python -m dcx.benchmarks.int8_study CKPT WORKDIR     (from the repository root; JSON lines on stdout)

The table in benchmarks/README.md ("INT8 accuracy on real images") was made with it.
"""
import json
import sys
import time
from pathlib import Path

from dcx.core.card import load_model
from dcx.engine.backends import open_backend
from dcx.export import precision as P, samples as S, verify
from dcx.export.onnx_export import export_onnx, save_onnx_artefact

def main(args: list[str]) -> None:
    if len(args) != 2:
        sys.exit(__doc__)
    ckpt, work = Path(args[0]), Path(args[1])
    work.mkdir(parents=True, exist_ok=True)
    model, card = load_model(ckpt)
    fp32 = export_onnx(model, card, work / "fp32.onnx")
    ref = verify.pytorch_runner(model, card)
    validation, _ = S.evaluation_samples(card, None)
    variants = [(m, n, f) for m in ("minmax", "percentile") for n in (64, 512) for f in ((), ("first_conv",))]
    rows = []
    for method, n, keep in variants:
        chosen, _ = S.calibration_samples(card, None, n)
        t = time.perf_counter()
        proto = P.quantize_int8(fp32, (x.numpy() for x, _ in S.Batches(chosen, card)), target="cpu", method=method,
                                keep_float=keep)
        secs = time.perf_counter() - t
        out = save_onnx_artefact(proto, card, "int8", work / f"{method}-{n}-{'+'.join(keep) or 'all'}.onnx")
        with open_backend(out, device="cpu") as backend:
            report = verify.accuracy(ref, backend.infer, card, S.Batches(validation, card))
        deltas, agree = report["deltas"], report["agreement"]
        row = dict(method=method, calib=len(chosen), keep_float="+".join(keep) or "-", n=report["n"],
                   d_sens=deltas["sensitivity"], d_spec=deltas["specificity"], d_auc=deltas["auc"],
                   agree=agree["flag_agreement"], max_dp=agree["max_abs_delta_p"], mean_dp=agree["mean_abs_delta_p"],
                   passed=not verify.accuracy_problems(report), calib_s=round(secs, 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    (work / "study.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
