#!/usr/bin/env bash
# Download the cp312 wheels the lent GPU machine lacks into .whl/ (git-ignored) and print the one
# device call that runs `dcx-bench gpu-check` there (benchmarks/README.md, "GPU check").
#
#   benchmarks/gpu_wheels.sh          nvImageCodec + nvJPEG + nvJPEG2000, pydicom and its plugins,
#                                     the TensorRT dispatch runtime: about 45 MB, one call
#   benchmarks/gpu_wheels.sh --dali   also DALI and its dependencies (about 250 MB), split into
#                                     folders of at most 55 MiB under .whl-dali/ (git-ignored), each
#                                     carried to /tmp/dali by one call before the final one
#
# The machine (GUIDE 8) has Python 3.12, torch 2.11+cu130, torchvision 0.26, onnx, a CPU
# onnxruntime, click, pillow, numpy; no network. Versions below are the ones dcx is tested with.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PYTHON=${PYTHON:-python3}
INDEX=${DCX_WHEEL_INDEX:-https://pypi.org/simple}
CARRY_LIMIT_MIB=60

download() {  # download DIR NAME==VERSION...
    local dir=$1; shift
    mkdir -p "$dir"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_39_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --index-url "$INDEX" -d "$dir" "$@"
}

download .whl \
    nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 \
    pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 pyjpegls==1.5.1 \
    pylibjpeg-rle==2.2.0 tensorrt-dispatch-cu13-libs==11.4.0.106 tensorrt-dispatch-cu13-bindings==11.4.0.106
size=$(du -sm .whl | cut -f1)
echo "wheels: .whl/ ($size MiB; $(ls .whl | wc -l) files)"
if [ "$size" -gt "$CARRY_LIMIT_MIB" ]; then
    echo "error: .whl/ is over the $CARRY_LIMIT_MIB MiB a call may carry; remove stale versions" >&2
    exit 1
fi

# The command run on the machine, from the repository root: install the wheels, make the checkout
# importable as `dcx` (a folder of links, as setup.py maps the top-level folders), run the check.
# One pip call for every wheel (--target --upgrade replaces whole top-level folders such as nvidia/),
# then nvidia/ made to span the machine's own nvidia/ too (torch's CUDA wheels live there).
WHEELS='.whl/*.whl'
SETUP_DCX='echo "__path__ = __import__(\"pkgutil\").extend_path(__path__, __name__)" >/tmp/site/nvidia/__init__.py; mkdir -p /tmp/dcx/dcx && : >/tmp/dcx/dcx/__init__.py && for d in core train export engine benchmarks; do [ -d $d ] && ln -sfn $PWD/$d /tmp/dcx/dcx/$d; done; export PYTHONPATH=/tmp/dcx:/tmp/site PYTHONUNBUFFERED=1;'
CHECK='set -o pipefail; timeout 420 python3 -c "import sys; from dcx.benchmarks.cli import main; sys.argv[0] = \"dcx-bench\"; main()" gpu-check --out $OUT 2>&1 | tee $OUT/gpu-check.log'

if [ "${1:-}" = "--dali" ]; then
    # DALI's wheel (199 MB) is over what one call carries: split it (and pack the rest) into
    # folders of at most 55 MiB, each carried by one call to /tmp/dali on the warm machine.
    rm -rf .whl-dali && mkdir -p .whl-dali/all
    download .whl-dali/all nvidia-dali-cuda130==2.4.0 nvidia-libnvcomp-cu13==5.3.0.16 astunparse==1.6.3 \
        gast==0.7.0 libcst==1.9.0 makefun==1.16.0 nvtx==0.2.17 optree==0.20.0
    (cd .whl-dali/all && for w in *.whl; do
        if [ "$(stat -c %s "$w")" -gt $((55 << 20)) ]; then split -b 55m -d "$w" "$w.part-" && rm "$w"; fi
    done)
    part=0 used=0
    for f in $(ls -S .whl-dali/all); do
        bytes=$(stat -c %s ".whl-dali/all/$f")
        if [ $((used + bytes)) -gt $((55 << 20)) ]; then part=$((part + 1)) used=0; fi
        mkdir -p ".whl-dali/$part" && mv ".whl-dali/all/$f" ".whl-dali/$part/" && used=$((used + bytes))
    done
    rmdir .whl-dali/all
    echo "DALI: $((part + 1)) folders .whl-dali/0 .. .whl-dali/$part; send these calls back to back (the machine"
    echo "keeps /tmp only while warm, 30 s after a call), then the final call below:"
    for i in $(seq 0 "$part"); do
        echo "  run(command='mkdir -p /tmp/dali && cp .whl-dali/$i/* /tmp/dali/ && ls -l /tmp/dali', carry=['.whl-dali/$i'], timeout_s=120)"
    done
    UNPACK='(cd /tmp/dali && for f in *.part-00; do w=${f%.part-00}; cat "$w".part-* >"$w" && rm "$w".part-*; done) || exit 1;'
    WHEELS='.whl/*.whl /tmp/dali/*.whl'
fi

INSTALL="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS || exit 1;"
COMMAND="${UNPACK:-}$INSTALL $SETUP_DCX $CHECK"
echo
echo "device call (from the repository root of the session's checkout, with this branch merged):"
echo "  run(command=<below>, carry=['.whl'], timeout_s=480)"
echo
echo "$COMMAND"
echo
echo "command length: ${#COMMAND} characters (at most 2000)"
