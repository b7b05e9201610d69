"""Export: checkpoints to ONNX (FP32/FP16/INT8 Q/DQ) and TensorRT plans, verified against PyTorch.

Modules, in the order an export runs through them:

- ``cli``            ``dcx-export``: options and defaults -> :class:`pipeline.ExportRequest`
- ``pipeline``       one export start to finish (ONNX, verification, then the plan)
- ``onnx_export``    PyTorch -> FP32 ONNX (``image`` -> ``probs``, ``cam``), card in the metadata
- ``precision``      FP32 ONNX -> FP16 graph, or calibrated INT8 Q/DQ graph
- ``samples``        which images calibrate and verify, read exactly as in training
- ``verify``         artefact vs PyTorch: parity, and screening metrics on the validation split
- ``tensorrt_build`` ONNX -> TensorRT plan

What an artefact is (tensor names, the sidecar, ``read_card``) lives in
:mod:`dcx.core.artefact`, where the engine reads it too.
"""
