"""Export: checkpoints to ONNX (FP32/FP16/INT8 Q/DQ) and TensorRT plans, verified against PyTorch."""
