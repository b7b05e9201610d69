"""INT8 study: the INT8 variants dcx-export can make of one checkpoint -- target (which graph and
runtime), weight range (8-bit, or 7-bit as the CPU targets use) and the first convolution in float
or not -- each run by its own runtime against PyTorch FP32 on the checkpoint's validation split,
with dcx-export's gates.

    python -m dcx.benchmarks.int8_study CKPT WORKDIR     (from the repository root; JSON lines on stdout)

The table in benchmarks/README.md ("INT8 accuracy on real images") was made with it.
"""
import importlib.util
import json
import sys
import time
from pathlib import Path

from dcx.core.checkpoint import load_model
from dcx.engine.backends import open_backend
from dcx.export import precision as P, samples as S, verify
from dcx.export.onnx_export import export_onnx, save_onnx_artefact

#: (target, 7-bit weights, layers left in float); the tensorrt graph is run by ONNX Runtime here.
VARIANTS = [(target, seven_bit, keep) for target in ("cpu", "openvino") for seven_bit in (False, True)
            for keep in ((), ("first_conv",))] + [("tensorrt", False, ())]


def main(args: list[str]) -> None:
    if len(args) != 2:
        sys.exit(__doc__)
    ckpt, work = Path(args[0]), Path(args[1])
    work.mkdir(parents=True, exist_ok=True)
    model, card = load_model(ckpt)
    fp32 = export_onnx(model, card, work / "fp32.onnx")
    ref = verify.pytorch_runner(model, card)
    validation, _ = S.evaluation_samples(card, None)
    chosen, _ = S.calibration_samples(card, None, 512)
    rows = []
    for target, seven_bit, keep in VARIANTS:
        if target == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        t = time.perf_counter()
        proto = P.quantize_int8(fp32, (x.numpy() for x, _ in S.Batches(chosen, card)), target=target,
                                keep_float=keep, seven_bit_weights=seven_bit)
        secs = time.perf_counter() - t
        name = f"{target}-{'7' if seven_bit else '8'}bit-{'+'.join(keep) or 'all'}.onnx"
        out = save_onnx_artefact(proto, card, "int8", work / name, runtime=P.RUNTIME_OF_TARGET[target])
        with open_backend(out, device="cpu") as backend:
            report = verify.accuracy(ref, backend.infer, card, S.Batches(validation, card))
            runtime = backend.name
        deltas, agree = report["deltas"], report["agreement"]
        row = dict(target=target, runtime=runtime, weights="7-bit" if seven_bit else "8-bit",
                   keep_float="+".join(keep) or "-", calib=len(chosen), n=report["n"],
                   d_sens=deltas["sensitivity"], d_spec=deltas["specificity"], d_auc=deltas["auc"],
                   agree=agree["flag_agreement"], max_dp=agree["max_abs_delta_p"], mean_dp=agree["mean_abs_delta_p"],
                   passed=not verify.accuracy_problems(report), calib_s=round(secs, 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    (work / "study.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
