"""Static post-training quantization into QDQ int8 graphs via onnxruntime.quantization.

ORT does the QDQ insertion (we don't rewrite it); we choose the settings for the target, pre-process
(shape inference, BN folding), feed the calibration data, and refuse non-finite scales.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..data import Dataset
from ..errors import InputError
from ..io import is_big, save_model
from ..passes.base import PassRecord
from .audit import audit
from .calibrate import calibrate
from .target import choose

_QTYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def _preprocess(model: onnx.ModelProto, tmp: Path) -> Path:
    src, dst = tmp / "in.onnx", tmp / "pre.onnx"
    big = is_big(model)
    save_model(model, src)  # onnx.save_model would move the caller's tensors to external data
    if big:  # ORT's pre-processing re-optimizes and rewrites 2+ GB (~30 s here): simplify/prune already ran
        return src
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=big,
                      external_data_location="pre.onnx.data")
    return dst


def quantize(model: onnx.ModelProto, calibration: Optional[Dataset], config) -> tuple[onnx.ModelProto, PassRecord]:
    """Quantize `model` (config: QuantConfig). Static needs calibration data; dynamic does not."""
    rec = PassRecord("quantize")
    choice = choose(config.target, config.activation_type, config.weight_type, config.reduce_range, config.per_channel)
    rec.stats["target"] = choice.to_dict()
    mode = "static" if config.mode == "auto" else config.mode
    rec.stats["mode"] = mode
    with tempfile.TemporaryDirectory(prefix="onnxcompress-q-") as d:
        tmp = Path(d)
        pre = _preprocess(model, tmp)
        out = tmp / "q.onnx"
        big = is_big(model)
        if big:
            rec.skip("pre-process", "model over 2 GB: ORT's quant_pre_process (BN folding, shape inference) skipped")
        common = dict(per_channel=choice.per_channel, reduce_range=choice.reduce_range,
                      weight_type=_QTYPES[choice.weight_type], use_external_data_format=big)
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(config.op_types) or None,
                             nodes_to_exclude=list(config.exclude) or None, **common)
        else:
            if calibration is None:
                raise InputError("static quantization needs calibration data; pass --calibration DATA.npz (or use --mode dynamic)")
            n = min(len(calibration), config.calibration_samples)
            big = is_big(model)
            pre_model = onnx.load(str(pre), load_external_data=not big)  # big: calibrate from the file
            cal = calibrate(pre_model, calibration.batches(config.batch_size, n), config.calibration, config.percentile,
                            model_path=pre if big else None)
            rec.stats["calibration"] = cal.to_dict()
            cache = tmp / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
                k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in cal.ranges.items()
            }), cache)
            quantize_static(
                str(pre), str(out), None, calibration_cache_path=str(cache),
                quant_format=QuantFormat.QDQ, activation_type=_QTYPES[choice.activation_type],
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=list(config.op_types) or None,
                nodes_to_exclude=list(config.exclude) or None,
                # QuantizeBias=False: ORT still fuses into QLinearConv (it quantizes the float bias at
                # session init; measured: same kernels, same latency), the file loses the per-channel
                # bias scales and DequantizeLinear nodes (-5% on the bundled model), and the bias is exact.
                extra_options={"QuantizeBias": False},
                **common,
            )
        qmodel = onnx.load(str(out))
    check_finite_scales(qmodel)
    if not is_big(qmodel):
        fusion = audit(qmodel)
        rec.stats["fusion"] = {k: fusion[k] for k in ("int8_mac_share", "int8_nodes", "compute_nodes")}
        rec.stats["fusion"]["float_islands"] = [f"{r['node']} ({r['op']} -> {r['kernel']})" for r in fusion["float_islands"]]
    counts = _count_q(qmodel)
    rec.stats.update(counts)
    rec.changed = [f"{k}={v}" for k, v in counts.items()]
    if config.exclude:
        for name in config.exclude:
            rec.skip(name, "excluded: kept in FP32 by request")
    return qmodel, rec


def check_finite_scales(model: onnx.ModelProto) -> None:
    """Refuse a model with a NaN/Inf/zero quantization scale, naming the tensor."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1 and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]])
            if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                raise InputError(
                    f"quantization produced a non-finite or zero scale for tensor '{node.input[0]}'; "
                    "check the calibration data for Inf/NaN or exclude that node"
                )


def _count_q(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear"),
            "dynamic_quant_nodes": ops.count("DynamicQuantizeLinear") + ops.count("MatMulInteger")}
