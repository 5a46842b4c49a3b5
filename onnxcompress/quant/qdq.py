"""Static post-training quantization into QDQ int8 graphs via onnxruntime.quantization.

ORT does the QDQ insertion (we don't rewrite it); we choose the settings for the target, pre-process
(shape inference, BN folding), apply our accuracy passes (cross-layer equalization, SmoothQuant before
calibration; bias correction after), feed our streaming calibration ranges, keep excluded nodes truly
in FP32 (ORT leaves their inputs quantized), and refuse non-finite scales.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
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
try:
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
except ImportError:  # onnxruntime-openvino ships an older onnxruntime (1.24 here) without the calibration cache API
    import onnxruntime as _ort

    from ..errors import MissingDependency

    raise MissingDependency(f"onnxruntime {_ort.__version__} lacks quantization.calibrate.save_tensors_data, which "
                            "quantize needs; quantize in an environment with a newer onnxruntime (pip install -U onnxruntime)") from None
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..config import QuantConfig
from ..data import Dataset, example_feed, feeds
from ..errors import InputError, InternalError
from ..io import is_big, save_model
from ..passes.base import PassRecord
from .audit import audit
from .calibrate import CalibrationResult, calibrate
from .presets import default_plan, mixed_range_concats
from .target import TargetChoice, choose

_QTYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_KEEP_DQ = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity",
            "Gather", "Slice", "Split", "Concat", "Expand", "Tile", "MaxPool", "Resize", "DepthToSpace", "SpaceToDepth"}


def _zero_sensitive(model: onnx.ModelProto) -> set[str]:
    """Nodes whose float result blows up where int8 rounding turns a small positive input into 0, so they
    read the float tensor (a mel spectrogram's Log gave -inf outputs; measured): Log, Reciprocal, a Div by
    a computed tensor, a Pow with a computed or negative exponent. A Div by a constant (hardswish's /6) is
    not: it stays quantizable."""
    consts = {i.name: i for i in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    out = set()
    for n in model.graph.node:
        if n.op_type in ("Log", "Reciprocal"):
            out.add(n.name)
        elif n.op_type in ("Div", "Pow") and len(n.input) > 1:
            c = consts.get(n.input[1])
            if c is None or (n.op_type == "Pow" and (onnx.numpy_helper.to_array(c) < 0).any()):
                out.add(n.name)
    return out


@dataclass
class Prepared:
    """A model ready for (repeated) quantization: pre-processed, passes applied, ranges collected.
    The fallback search quantizes it many times with different exclusions and calibrates once."""

    model: onnx.ModelProto  # pre-processed FP32 (BN folded, CLE/SmoothQuant applied); loaded without data when big
    path: Optional[Path]  # the file of a big model (calibration and quantization read it from disk)
    choice: TargetChoice
    mode: str
    op_types: tuple[str, ...] = ()  # what ORT quantizes (empty = all it can)
    op_types_why: str = ""
    auto_exclude: tuple[str, ...] = ()  # kept FP32 by the model-family defaults (attention MatMuls)
    float_nodes: tuple[str, ...] = ()  # a hybrid's transformer-region nodes ORT leaves float (besides auto_exclude)
    regions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # settings chosen for the user, with the reason
    calibration: Optional[CalibrationResult] = None
    records: list[PassRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def quantized_kind(model: onnx.ModelProto) -> Optional[str]:
    """What quantization a model already has, in words, or None (the front door's check)."""
    from ..frontdoor import quantized_kind as found

    return found(model)


def opset_of(model: onnx.ModelProto) -> int:
    from ..io import model_opset

    return model_opset(model) or 1


def check_quantizable(model: onnx.ModelProto) -> None:
    """Refuse, in one line, models quantize cannot take: already quantized, or below opset 10."""
    kind = quantized_kind(model)
    if kind:
        raise InputError(f"model is already quantized: {kind}; quantize the FP32 original instead, "
                         "or use inspect/validate/bench on it")
    opset = opset_of(model)
    if opset < 10:
        raise InputError(f"model opset {opset} is below 10, where QuantizeLinear/DequantizeLinear first exist; "
                         "re-export it at opset 13 or later")


def _preprocess(model: onnx.ModelProto, tmp: Path, notes: list[str]) -> tuple[Path, bool]:
    src, dst = tmp / "in.onnx", tmp / "pre.onnx"
    save_model(model, src)  # onnx.save_model would move the caller's tensors to external data
    if is_big(model):  # ORT's pre-processing re-optimizes and rewrites 2+ GB (~30 s here): simplify/prune already ran
        return src, False
    if opset_of(model) < 11:
        # ORT's pre-processing converts opset 10 to 11 with onnx.version_converter, whose Resize adapter
        # is not exact (measured: max error 1.25 on a 4x4 linear upsample): the model is quantized as it is
        notes.append("opset 10: ORT's pre-processing (BN folding, conversion to opset 11) skipped: its opset "
                     "conversion changes Resize results; re-export at opset 13 or later (per-channel weights, BN folding)")
        return src, False
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst, True


def prepare(model: onnx.ModelProto, calibration: Optional[Dataset], config: QuantConfig, workdir: Path) -> Prepared:
    """Pre-process, apply the FP32 accuracy passes and calibrate (static). `workdir` must outlive the result."""
    check_quantizable(model)
    choice = choose(config.target, config.activation_type, config.weight_type, config.reduce_range, config.per_channel)
    notes = []
    opset = opset_of(model)
    if opset < 13 and choice.per_channel:  # DequantizeLinear's `axis` is opset 13: ORT would write it anyway
        why = (f"per-tensor weights: the model is opset {opset}, and per-channel DequantizeLinear (its 'axis') needs "
               "opset 13; re-export at opset 13 or later for per-channel weights")
        choice = dataclasses.replace(choice, per_channel=False, why=f"{choice.why}; {why}")
        notes.append(why)
    mode = ("static" if calibration is not None else "dynamic") if config.mode == "auto" else config.mode
    hardswish = None
    if mode == "static" and not is_big(model):  # ORT has no int8 HardSwish: see quant/rewrite.py
        from .rewrite import write_out_hardswish

        model, hardswish = write_out_hardswish(model, frozenset(config.exclude))
    pre_path, done = _preprocess(model, workdir, notes)
    big = is_big(model)
    prep = Prepared(onnx.load(str(pre_path), load_external_data=not big), pre_path if big else None, choice, mode)
    prep.notes = notes
    if hardswish is not None and hardswish.changed:
        prep.records.append(hardswish)
    if not big:
        from .fold import flat_gemm_bias, fold_conv_affine

        prep.model, rec = fold_conv_affine(prep.model)
        rec.stats["gemm_bias_flattened"] = flat_gemm_bias(prep.model)
        if rec.stats["folded"] or rec.stats["gemm_bias_flattened"]:
            prep.records.append(rec)
    plan = default_plan(prep.model, tuple(config.op_types))
    prep.op_types, prep.op_types_why, prep.auto_exclude = plan.op_types, plan.why, plan.attention
    prep.float_nodes, prep.regions = plan.float_nodes, plan.regions
    if plan.spectral:
        from .presets import SPECTRAL_WHY

        prep.auto_exclude = tuple(dict.fromkeys(prep.auto_exclude + plan.spectral))
        prep.skipped.append((", ".join(plan.spectral[:3]) + (f" and {len(plan.spectral) - 3} more" if len(plan.spectral) > 3
                                                              else ""), SPECTRAL_WHY))
    if not done and big:
        prep.skipped.append(("pre-process", "model over 2 GB: ORT's quant_pre_process (BN folding, shape inference) skipped"))
    if mode == "dynamic":
        return prep
    if calibration is None:
        raise InputError("static quantization needs calibration data; pass --calibration DATA.npz (or use --mode dynamic)")
    n = min(len(calibration), config.calibration_samples)
    if not big:
        prep.model = _fp32_passes(prep, calibration, config, n)
    prep.calibration = calibrate(prep.model, calibration, config.calibration, config.percentile, model_path=prep.path,
                                 samples=n, batch_size=config.batch_size)  # runs sized to the data's memory budget
    if not config.op_types:  # a Concat of very different ranges would erase the smaller input (YOLO heads)
        mixed = mixed_range_concats(prep.model, prep.calibration.ranges)
        prep.auto_exclude = tuple(dict.fromkeys(prep.auto_exclude + tuple(name for name, _ in mixed)))
        prep.skipped.extend(mixed)
    return prep


def _fp32_passes(prep: Prepared, calibration: Dataset, config: QuantConfig, n: int) -> onnx.ModelProto:
    model = prep.model
    if config.equalize or (config.equalize is None and not prep.choice.per_channel):
        from .equalize import equalize

        model, rec = equalize(model)
        prep.records.append(rec)
    if config.smooth_quant is not None:
        from .smooth import smooth_quant

        model, rec = smooth_quant(model, calibration, alpha=config.smooth_quant, samples=min(n, 128))
        prep.records.append(rec)
    return model


def quantize_prepared(prep: Prepared, config: QuantConfig, workdir: Path, exclude: tuple[str, ...] = (),
                      calibration: Optional[Dataset] = None) -> tuple[onnx.ModelProto, PassRecord]:
    """QDQ (or dynamic) quantization of a prepared model; `exclude` adds to config.exclude."""
    rec = PassRecord("quantize")
    rec.stats["target"] = prep.choice.to_dict()
    rec.stats["mode"] = prep.mode
    rec.stats["op_types"] = {"quantized": list(prep.op_types) or ("per region" if prep.regions else "all"),
                             "why": prep.op_types_why, "kept_fp32_by_default": list(prep.auto_exclude)}
    if prep.regions:
        rec.stats["op_types"]["regions"] = dict(prep.regions)
    rec.stats["notes"] = list(prep.notes)
    for target, reason in prep.skipped:
        rec.skip(target, reason)
    for note in prep.notes:
        rec.skip("settings", note)
    excluded = tuple(dict.fromkeys(tuple(config.exclude) + tuple(exclude)))
    everything_fp32 = tuple(dict.fromkeys(excluded + prep.auto_exclude))
    big = prep.path is not None
    src = prep.path or workdir / "prepared.onnx"
    if not big:
        save_model(prep.model, src)
    out = workdir / "q.onnx"
    common = dict(per_channel=prep.choice.per_channel, reduce_range=prep.choice.reduce_range,
                  weight_type=_QTYPES[prep.choice.weight_type], use_external_data_format=big,
                  op_types_to_quantize=list(prep.op_types) or None,
                  nodes_to_exclude=list(dict.fromkeys(everything_fp32 + prep.float_nodes)) or None)
    if prep.mode == "dynamic":
        quantize_dynamic(str(src), str(out), **common)
    else:
        cal = prep.calibration
        rec.stats["calibration"] = cal.to_dict()
        cache = workdir / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
            k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in cal.ranges.items()
        }), cache)
        quantize_static(
            str(src), str(out), None, calibration_cache_path=str(cache),
            quant_format=QuantFormat.QDQ, activation_type=_QTYPES[prep.choice.activation_type],
            calibrate_method=CalibrationMethod.MinMax,
            # QuantizeBias=False: ORT still fuses into QLinearConv (it quantizes the float bias at
            # session init; measured: same kernels, same latency), the file loses the per-channel
            # bias scales and DequantizeLinear nodes (-5% on the bundled model), and the bias is exact.
            # (below opset 11 ORT's session-init bias quantization inserts Round, an opset-11 op: the model
            # would not load; there ORT's quantizer quantizes the bias itself)
            extra_options={"QuantizeBias": opset_of(prep.model) < 11},
            **common,
        )
    qmodel = onnx.load(str(out))
    # ops outside op_types read a tensor's shared DequantizeLinear when another consumer is quantized
    # (a LayerNorm output feeding both a projection and the residual Add): give them the float tensor
    # (data-movement ops keep the DequantizeLinear: ORT moves Q/DQ across them to reach the int8 op)
    float_nodes = set(prep.float_nodes) | _zero_sensitive(prep.model)
    unquantized = tuple(n.name for n in qmodel.graph.node if n.name and n.op_type not in _KEEP_DQ and (
        (prep.op_types and n.op_type not in prep.op_types) or n.name in float_nodes))
    if (everything_fp32 or unquantized) and prep.mode == "static":
        rec.stats["float_inputs_restored"], left = keep_fp32(qmodel, prep.model, everything_fp32 + unquantized,
                                                             exact=_zero_sensitive(prep.model))
        for why in left:
            rec.skip("keep-fp32", why)
    if prep.mode == "static":
        rec.stats["shape_reads_moved"] = shapes_after_dq(qmodel)
        rec.stats["scalar_requant_folded"] = fold_scalar_requant(qmodel)
        from .fold import subgraph_reads_dq  # a subgraph reading a Conv whose Relu ORT dropped reads the DQ

        rec.stats["subgraph_reads_dequantized"] = subgraph_reads_dq(qmodel, prep.model)
    for r in prep.records:
        rec.counts[r.name] = len(r.changed)
        rec.stats[r.name] = r.stats
        rec.skipped.extend(r.skipped)
    if config.bias_correction and prep.mode == "static" and calibration is not None and not big:
        from .biascorr import bias_correct

        qmodel, brec = bias_correct(prep.model, qmodel, calibration,
                                    samples=sample_cap(prep.model, calibration, min(config.calibration_samples, config.bias_samples)))
        rec.counts[brec.name] = len(brec.changed)  # biases corrected
        rec.stats[brec.name] = brec.stats
        rec.skipped.extend(brec.skipped)
    _finish(qmodel, rec, excluded, calibration)
    return qmodel, rec


ACTIVATION_VOLUME = 6_000_000  # input values per statistic read layer by layer (bias correction, sensitivity)


def sample_cap(model: onnx.ModelProto, data: Dataset, cap: int) -> int:
    """Samples for statistics that read every layer's tensors (pass by pass, each pass running both models over
    the samples): up to `cap`, fewer when one sample is large, at least 2. A layer's per-channel mean or SQNR from
    a few 800x608 images rests on millions of values already (ImageNet 224x224: 39 samples; PicoDet 800x608: 4;
    8 of them made its quantize -v spend over 300 s there, layout_cdla)."""
    per_sample = sum(int(np.prod(v.shape[1:])) if v.ndim else 1 for v in example_feed(data, 1, model).values())
    return max(2, min(cap, len(data), ACTIVATION_VOLUME // max(per_sample, 1)))


def _finish(qmodel: onnx.ModelProto, rec: PassRecord, excluded: tuple[str, ...],
            data: Optional[Dataset] = None) -> None:
    check_finite_scales(qmodel)
    if _toposort(qmodel):
        rec.stats["reordered"] = True
    if not is_big(qmodel):
        try:  # an attribute the opset does not allow (per-channel axis below 13) is caught here, before any write
            onnx.checker.check_model(qmodel)
        except onnx.checker.ValidationError as exc:
            raise InternalError(f"quantize produced an invalid model: {str(exc).strip().splitlines()[0]} "
                                f"({_bad_node(exc)})") from None
        # MAC shares on the shapes of one real sample (dynamic H x W would otherwise count nodes)
        fusion = audit(qmodel, feed=example_feed(data, 1, qmodel) if data is not None else None)
        rec.stats["fusion"] = {k: fusion[k] for k in ("int8_mac_share", "fused_share", "int8_nodes", "compute_nodes",
                                                      "share_basis") if k in fusion}
        rec.stats["fusion"]["float_islands"] = [f"{r['node']} ({r['op']} -> {r['kernel']})" for r in fusion["float_islands"]]
    counts = _count_q(qmodel)
    rec.stats.update(counts)
    rec.changed += [f"{k}={v}" for k, v in counts.items()]
    rec.stats["excluded"] = list(excluded)
    for name in excluded:
        rec.skip(name, "excluded: kept in FP32")


def quantize(model: onnx.ModelProto, calibration: Optional[Dataset], config: QuantConfig) -> tuple[onnx.ModelProto, PassRecord]:
    """Quantize `model` (config: QuantConfig). Static needs calibration data; dynamic does not."""
    with tempfile.TemporaryDirectory(prefix="onnxcompress-q-") as d:
        prep = prepare(model, calibration, config, Path(d))
        return quantize_prepared(prep, config, Path(d), calibration=calibration)


def keep_fp32(model: onnx.ModelProto, fp32: onnx.ModelProto, nodes: tuple[str, ...],
              exact: set[str] = frozenset()) -> tuple[int, list[str]]:
    """Feed excluded nodes the float tensor instead of DequantizeLinear(QuantizeLinear(x)).

    ORT's nodes_to_exclude only keeps the node's weights in float: its activation inputs still pass
    through Q->DQ, and ORT's optimizer then re-quantizes the float-weight node into an int8 kernel, so
    the exclusion changes nothing at run time. ORT also drops a Relu/Clip before a QuantizeLinear (the
    range clamps), so the float tensor may need that activation back: we restore it from `fp32`.
    Except: an input written by an int8 Conv keeps its DequantizeLinear (int8_conv_outputs), unless the
    node is in `exact` (zero-sensitive: it needs the float tensor).
    Returns (inputs rewired, reasons for inputs left quantized); unused Q/DQ nodes are removed."""
    prod = {o: n for n in model.graph.node for o in n.output}
    fprod = {o: n for n in fp32.graph.node for o in n.output}
    orig = {n.name: n for n in fp32.graph.node}
    conv_out = int8_conv_outputs(model)
    rewired, left = 0, []
    before: dict[str, list[onnx.NodeProto]] = {}  # restored activations, inserted before their consumer
    for node in model.graph.node:
        if node.name not in nodes or node.name not in orig:
            continue
        for i, name in enumerate(node.input):
            dq = prod.get(name)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or i >= len(orig[node.name].input):
                continue  # not an activation through Q->DQ (quantized weights of excluded nodes stay float)
            if q.input[0] in conv_out and node.name not in exact:
                new = _per_channel_dq(model, node, dq) if i == 0 and node.op_type in _WEIGHT_REQUANT else None
                if new is not None:
                    before.setdefault(node.name, []).append(new)
                    rewired += 1
                continue
            want = orig[node.name].input[i]
            src, act = q.input[0], fprod.get(want)
            same = src == want and (act is None or prod.get(src) is None or prod[src].op_type == act.op_type)
            if not same:
                # ORT folded a Relu/Clip into the producer (sometimes renaming its output to the
                # activation's name): apply the activation again, in float
                if act is None or act.op_type not in ("Relu", "Clip") or src not in (want, act.input[0]):
                    left.append(f"{node.name}: input '{want}' has no float version in the quantized graph")
                    continue
                restored = onnx.NodeProto()
                restored.CopyFrom(act)
                restored.name = f"{act.name}_fp32_for_{node.name}"
                restored.input[0] = src
                want = restored.output[0] = f"{want}_fp32_for_{node.name}"
                before.setdefault(node.name, []).append(restored)
                _copy_missing_inits(model, fp32, restored)
            node.input[i] = want
            rewired += 1
    if before:
        ordered = [m for n in model.graph.node for m in before.get(n.name, []) + [n]]
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    _drop_unused(model)
    return rewired, left


_WEIGHT_REQUANT = ("Conv", "ConvTranspose", "Gemm")  # ORT's WeightBiasQuantization targets


def _per_channel_dq(model: onnx.ModelProto, node: onnx.NodeProto, dq: onnx.NodeProto) -> Optional[onnx.NodeProto]:
    """Give an FP32-kept Conv/ConvTranspose/Gemm its own DequantizeLinear with the same scale repeated per
    channel (axis 1: the same values). ORT's WeightBiasQuantization quantizes the float weights of any such node
    whose input comes from a per-tensor DequantizeLinear (per-tensor weights; with a QuantizeLinear after it, a
    QLinearConv again): the layer would not stay FP32. Needs opset 13 (DequantizeLinear's axis); returns the new
    node (to insert before `node`, which now reads it), or None."""
    inits = {i.name: i for i in model.graph.initializer}
    w, scale = inits.get(node.input[1]) if len(node.input) > 1 else None, inits.get(dq.input[1])
    if opset_of(model) < 13 or w is None or scale is None or len(w.dims) < 2 or int(np.prod(scale.dims)) != 1:
        return None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        channels = w.dims[1] if trans_b else w.dims[0]
    elif node.op_type == "Conv":
        channels = w.dims[1] * next((a.i for a in node.attribute if a.name == "group"), 1)
    else:  # ConvTranspose: weight [C_in, C_out / group, ...]
        channels = w.dims[0]
    value = float(onnx.numpy_helper.to_array(scale).reshape(-1)[0])
    name = f"{dq.output[0]}_fp32_{node.name}"
    tensors = [onnx.numpy_helper.from_array(np.full(channels, value, np.float32), f"{name}_scale")]
    inputs = [dq.input[0], tensors[0].name]
    if len(dq.input) > 2 and dq.input[2] in inits:
        zp = onnx.numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)[0]
        tensors.append(onnx.numpy_helper.from_array(np.full(channels, zp, zp.dtype), f"{name}_zero_point"))
        inputs.append(tensors[1].name)
    model.graph.initializer.extend(tensors)
    node.input[0] = name
    return onnx.helper.make_node("DequantizeLinear", inputs, [name], name=name, axis=1)


def int8_conv_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs of Convs that read int8 weights (DequantizeLinear). ORT fuses DQ -> Conv -> Q into QLinearConv only
    with the QuantizeLinear: a float reader that took the raw Conv output instead would leave the Conv a float
    island (its weights dequantized on every run: measured 0.27x FP32 on a MobileNetV3 with Conv-only int8), so
    float readers keep reading DequantizeLinear (QLinearConv, then one DQ: the rounding every int8 reader sees).
    MatMul/Gemm need no such care: ORT runs DQ -> MatMul/Gemm -> float as MatMulIntegerToFloat/QGemm."""
    prod = {o: n for n in model.graph.node for o in n.output}
    return {n.output[0] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1
            and n.input[1] in prod and prod[n.input[1]].op_type == "DequantizeLinear"}


def shapes_after_dq(model: onnx.ModelProto) -> int:
    """Shape/Size nodes reading a float tensor that also goes to QuantizeLinear read the DequantizeLinear
    output instead (same shape). ORT fuses DQ -> op -> Q into an int8 kernel only when Q is the op's only
    consumer: a Shape reader left the attention out-projection Gemm of every exported
    nn.TransformerEncoder as a float island (measured: 12% of the quantized MACs)."""
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    moved = 0
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        dq = next((c for c in cons.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None)
        for c in cons.get(q.input[0], []) if dq is not None else []:
            if c.op_type in ("Shape", "Size"):
                c.input[0] = dq.output[0]
                moved += 1
    return moved


def fold_scalar_requant(model: onnx.ModelProto) -> int:
    """Q1 -> DQ -> Div|Mul by a positive scalar constant -> Q2, each the only reader of the one before: Q1 quantizes
    straight to Q2's grid (scale s2 * c for a Div, s2 / c for a Mul), and DQ, Div/Mul and Q2 go. ORT has no int8
    Div, so a written-out hardswish (x * Clip(x + 3, 0, 6) / 6, every opset-11/12 MobileNetV3 export) left
    DQ -> float Div -> Q after each int8 Mul: measured 0.62x -> 0.77x FP32 on PaddleOCR's direction classifier.
    One rounding instead of two, so the result is as close to FP32 or closer. Returns the number folded."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}

    def scalar(name: str) -> Optional[np.ndarray]:
        t = inits.get(name) if name in inits else consts.get(name)
        a = onnx.numpy_helper.to_array(t) if t is not None else None
        return a if a is not None and a.size == 1 else None

    def only_reader(name: str) -> bool:
        return readers.get(name, 0) == 1 and name not in outputs

    drop: set[int] = set()
    folded = 0
    for n in list(g.node):
        if n.op_type not in ("Div", "Mul") or len(n.input) != 2:
            continue
        c = scalar(n.input[1])
        dq = prod.get(n.input[0])
        q1 = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        q2 = next((m for m in g.node if m.op_type == "QuantizeLinear" and m.input[0] == n.output[0]), None)
        if (c is None or c.dtype != np.float32 or not np.isfinite(c).all() or float(c.reshape(-1)[0]) <= 0
                or q1 is None or q1.op_type != "QuantizeLinear" or q2 is None or id(q1) in drop
                or not (only_reader(q1.output[0]) and only_reader(dq.output[0]) and only_reader(n.output[0]))
                or len(q1.input) != 3 or len(q2.input) != 3 or q2.output[0] in outputs):
            continue
        s2, z1, z2 = scalar(q2.input[1]), scalar(q1.input[2]), scalar(q2.input[2])
        if s2 is None or z1 is None or z2 is None or z1.dtype != z2.dtype or scalar(q1.input[1]) is None:
            continue
        factor = float(c.reshape(-1)[0]) if n.op_type == "Div" else 1.0 / float(c.reshape(-1)[0])
        scale = onnx.numpy_helper.from_array(np.asarray(s2.reshape(()) * np.float32(factor), np.float32),
                                             f"{q2.input[1]}_folded_{n.name or n.output[0]}")
        g.initializer.append(scale)
        q1.input[1], q1.input[2] = scale.name, q2.input[2]
        for m in g.node:
            for k, x in enumerate(m.input):
                if x == q2.output[0]:
                    m.input[k] = q1.output[0]
        drop |= {id(dq), id(n), id(q2)}
        folded += 1
    if folded:
        keep = [m for m in g.node if id(m) not in drop]
        del g.node[:]
        g.node.extend(keep)
        _drop_unused(model)
    return folded


def _copy_missing_inits(model: onnx.ModelProto, fp32: onnx.ModelProto, node: onnx.NodeProto) -> None:
    have = {i.name for i in model.graph.initializer}
    model.graph.initializer.extend(i for i in fp32.graph.initializer if i.name in node.input and i.name not in have)


def _drop_unused(model: onnx.ModelProto) -> None:
    from .fold import _subgraph_reads

    inner = _subgraph_reads(model.graph)  # values If/Loop bodies read are used too
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output} | inner
    changed = True
    while changed:
        changed = False
        for n in list(model.graph.node):
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output):
                model.graph.node.remove(n)
                changed = True
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output} | inner
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


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


def _toposort(model: onnx.ModelProto) -> bool:
    """Order the nodes so that each comes after the producers of what it reads, counting the outer-scope
    values its If/Loop bodies read. ORT's quantizer can move a node that only a subgraph reads after that
    subgraph's node (ORT runs it, onnx.checker refuses it). Stable; returns True when it moved anything."""
    from .fold import _subgraph_reads

    nodes = list(model.graph.node)
    prod = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = []
    for i, n in enumerate(nodes):
        reads = set(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                reads |= {x for m in g.node for x in m.input} | _subgraph_reads(g)
        deps.append({prod[r] for r in reads if r in prod and prod[r] != i})
    import heapq

    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    left = [len(d) for d in deps]
    ready = [i for i, k in enumerate(left) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # Kahn's algorithm, lowest original index first (stable)
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            left[j] -= 1
            if left[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes) or order == list(range(len(nodes))):  # a cycle is left for the checker to name
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return True


def _bad_node(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "Name:" in line:
            return line.strip()
    return "node unknown"


def _count_q(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear"),
            "dynamic_quant_nodes": ops.count("DynamicQuantizeLinear") + ops.count("MatMulInteger")}
