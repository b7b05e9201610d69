"""dcx: screen chest X-ray archives with a trained classifier, from training to TensorRT.

The top-level folders install under one namespace, so nothing claims a generic
name such as ``train`` in site-packages.
"""
from setuptools import setup

PACKAGES = {
    "dcx.core": "core",
    "dcx.train": "train",
    "dcx.export": "export",
    "dcx.engine": "engine",
    "dcx.benchmarks": "benchmarks",
    "dcx.report": "report",
}

setup(
    name="dcx",
    version="0.1.0",
    description="High-throughput chest X-ray screening: training, ONNX/TensorRT export, DALI batch inference",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"dcx.report": ["report.css", "report.js"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "onnx>=1.16",
        "onnxruntime>=1.27",  # quantize_static's calibration cache: the INT8 export calibrates once for all its tries
        "onnxconverter-common>=1.14",
        "numpy>=1.24",
        "pillow>=10",
        "pydicom>=3.0",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
        "pyjpegls>=1.4",
        # Exact: dcx.engine.codec_rules encodes how this release scales bit depths per device
        # (its CPU decoder has a TODO that may change them); re-check with dcx-bench gpu-check.
        "nvidia-dali-cuda130==2.4.0",
        "click>=8.1",
        "matplotlib>=3.7",
        "requests>=2.31",  # DICOMweb (engine/dicomweb.py)
        "highdicom>=0.28",  # DICOM Structured Reports (engine/sr.py)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pyarrow>=14", "ray[data]==2.60.0", "openvino==2026.4.0"],
        # The cheapest CPU runtime measured here (benchmarks/README.md, "OpenVINO on the CPU"):
        # artefacts exported with dcx-export --target openvino run on it.
        "openvino": ["openvino==2026.4.0"],
        "parquet": ["pyarrow>=14"],
        # ONNX Runtime on CUDA 13 (with its CUDA and cuDNN wheels). It installs the same
        # ``onnxruntime`` package directory as the CPU build that install_requires brings, so
        # finish with: pip uninstall -y onnxruntime onnxruntime-gpu &&
        # pip install --no-deps onnxruntime-gpu==1.31.1 (README, "GPU and TensorRT").
        "gpu": ["onnxruntime-gpu[cuda,cudnn]==1.31.1"],
        # TensorRT runtimes for plans exported with --version-compatible (real wheels on PyPI).
        # The full builder (tensorrt-cu13) is a stub on PyPI that downloads from NVIDIA's index.
        "trt-runtime": ["tensorrt-lean-cu13-libs==11.4.0.106", "tensorrt-lean-cu13-bindings==11.4.0.106",
                        "tensorrt-dispatch-cu13-libs==11.4.0.106", "tensorrt-dispatch-cu13-bindings==11.4.0.106"],
        "ray": ["ray[data]==2.60.0", "pyarrow>=14"],
    },
    entry_points={
        "console_scripts": [
            "dcx-synth=dcx.train.synth_cli:main",
            "dcx-train=dcx.train.train_cli:main",
            "dcx-eval=dcx.train.eval_cli:main",
            "dcx-fit-ood=dcx.train.ood_cli:main",
            "dcx-calibrate=dcx.train.calibrate_cli:main",
            "dcx-export=dcx.export.cli:main",
            "dcx-infer=dcx.engine.cli:main",
            "dcx-merge=dcx.engine.merge:main",
            "dcx-report=dcx.report.cli:main",
            "dcx-bench=dcx.benchmarks.cli:main",
        ]
    },
)
