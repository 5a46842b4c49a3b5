"""Quantization: target detection, calibration, QDQ int8 via onnxruntime.quantization."""
