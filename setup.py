"""dcx: screen chest X-ray archives with a trained classifier, from training to TensorRT.

The top-level folders install under one namespace, so nothing claims a generic
name such as ``train`` in site-packages.
"""
from setuptools import setup

PACKAGES = {
    "dcx.train": "train",
    "dcx.export": "export",
    "dcx.engine": "engine",
    "dcx.benchmarks": "benchmarks",
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
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxconverter-common>=1.14",
        "numpy>=1.24",
        "pillow>=10",
        "pydicom>=3.0",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pyjpegls>=1.4",
        "nvidia-dali-cuda130>=2.0",
        "click>=8.1",
        "matplotlib>=3.7",
        "requests>=2.31",  # DICOMweb (engine/dicomweb.py)
        "highdicom>=0.28",  # DICOM Structured Reports (engine/sr.py)
    ],
    extras_require={
        "test": ["pytest>=8", "pyarrow>=14", "ray[data]==2.60.0"],
        "parquet": ["pyarrow>=14"],
        # What a GPU box adds. TensorRT's PyPI packages fetch their libraries from
        # NVIDIA's index at install time, so this extra needs that index reachable.
        "gpu": ["tensorrt>=10.1", "onnxruntime-gpu>=1.18"],
        "ray": ["ray[data]==2.60.0", "pyarrow>=14"],
    },
    entry_points={
        "console_scripts": [
            "dcx-synth=dcx.train.synth_cli:main",
            "dcx-train=dcx.train.train_cli:main",
            "dcx-eval=dcx.train.eval_cli:main",
            "dcx-export=dcx.export.cli:main",
            "dcx-infer=dcx.engine.cli:main",
            "dcx-merge=dcx.engine.merge:main",
            "dcx-bench=dcx.benchmarks.cli:main",
        ]
    },
)
