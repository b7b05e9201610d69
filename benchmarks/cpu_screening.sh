#!/usr/bin/env bash
# CPU screening at 224 px, end to end and rerunnable: train resnet18 and densenet121 on the real
# images, export each to the INT8 graph for OpenVINO (calibrated on the training split; where
# dcx-export refuses it for failing the accuracy gates, FP32 for OpenVINO instead), then one
# `dcx-bench throughput` invocation per model: dcx-infer against the peer, model-only,
# decoding-only and the CPU budget, with the parity gate.
# This is how benchmarks/README.md's CPU tables are made (issue 14's targets).
#
#   bash benchmarks/cpu_screening.sh [OUT]          # OUT default /tmp/dcx-cpu-screening
#   DATA=/path/to/cxr-dev LONG=1 bash benchmarks/cpu_screening.sh
#
# DATA defaults to ../shared/data/cxr-dev beside this checkout (300 labelled radiographs). LONG=1
# adds the 10,000-file memory runs (hard links to DATA; about 10 min more). A step whose output
# exists is skipped, so a cut-off run picks up where it stopped. Needs `pip install -e ".[test]"`
# (dcx with OpenVINO). Takes 25-40 min on 2 cores; nothing else should run meanwhile.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${DATA:-$root/../shared/data/cxr-dev}
out=${1:-/tmp/dcx-cpu-screening}
[ -d "$data" ] || { echo "no data at $data (set DATA)"; exit 1; }
mkdir -p "$out"
cd "$out"
echo "dcx cpu screening: data $data, output $out, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"

train() {  # NAME ARCH: 10 epochs from scratch (no pretrained weights here), 70/30 patient-grouped split, seed 0
    [ -f "$1/best.pt" ] || dcx-train --data "$data" --arch "$2" --img-size 224 --epochs 10 \
        --weights none --val-fraction 0.3 --seed 0 --out "$1"
}
export_best() {  # NAME ARCH: the INT8 graph for OpenVINO; where dcx-export refuses it (its
    # accuracy gates), FP32 for OpenVINO: the best CPU artefact dcx exports for that model
    local int8=$1/$2-int8-ov.onnx fp32=$1/$2-fp32-ov.onnx
    if [ -f "$int8" ] || [ -f "$fp32" ]; then return; fi
    if [ ! -f "$1/int8-refused.log" ] && ! dcx-export "$1/best.pt" --precision int8 --target openvino \
            --out "$int8" 2>&1 | tee "$1/int8-export.log"; then
        mv "$1/int8-export.log" "$1/int8-refused.log"
    fi
    [ -f "$int8" ] || dcx-export "$1/best.pt" --precision fp32 --target openvino --out "$fp32"
}
bench() {  # NAME ARCH DATA TAG [ARGS...]: one invocation, JSON and Markdown reports
    local name=$1 arch=$2 files=$3 tag=$4 engine
    shift 4
    engine=$(ls "$name/$arch"-*-ov.onnx)
    [ -f "reports/$name-$tag.json" ] || dcx-bench throughput --engine "$engine" \
        --data "$files" --out "reports/$name-$tag.json" --markdown "reports/$name-$tag.md" "$@"
}

mkdir -p reports
train r18 resnet18
train d121 densenet121
export_best r18 resnet18
export_best d121 densenet121
bench r18 resnet18 "$data" 300 --repeat 3
bench d121 densenet121 "$data" 300 --repeat 3
if [ "${LONG:-0}" = 1 ]; then
    [ -d cxr-10k ] || dcx-bench archive "$data" cxr-10k --n 10000
    for model in "r18 resnet18" "d121 densenet121"; do
        # shellcheck disable=SC2086
        bench $model cxr-10k 10k --no-peer --no-parity --repeat 1 --no-warmup
    done
fi
echo "reports: $out/reports/*.md"
