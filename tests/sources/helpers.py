"""Tiny models and data files for the source tests (made in-test: no downloads)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def image_model(shape=("N", 3, 8, 8), layout="NCHW", classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """x -> (Transpose for NHWC) -> GlobalAveragePool -> Flatten -> Gemm(classes); logits depend on every channel."""
    c = shape[1] if layout == "NCHW" else shape[3]
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((classes, c)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    nodes, x = [], "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        x = "xt"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "img", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def text_model(vocab: int, seq=None, dtype=TensorProto.INT64, names=("input_ids", "attention_mask", "token_type_ids"),
               dim: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Embedding lookup (+ type embedding), masked mean over the sequence, Gemm -> 2 logits."""
    rng = np.random.default_rng(seed)
    ids, mask, types = names
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((2, dim)).astype(np.float32), "temb"),
             numpy_helper.from_array(rng.standard_normal((2, dim)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Gather", ["emb", ids], ["e"]),
             helper.make_node("Gather", ["temb", types], ["t"]),
             helper.make_node("Add", ["e", "t"], ["et"]),
             helper.make_node("Cast", [mask], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
             helper.make_node("Mul", ["et", "m3"], ["em"]),
             helper.make_node("ReduceSum", ["em", "ax"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["mf", "ax"], ["cnt"], keepdims=1),
             helper.make_node("Div", ["s", "cnt"], ["mean"]),
             helper.make_node("Gemm", ["mean", "w"], ["logits"], transB=1)]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    ins = [helper.make_tensor_value_info(n, dtype, ["N", seq if seq else "L"]) for n in names]
    g = helper.make_graph(nodes, "txt", ins, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def audio_model(length: int = 400, rank: int = 2) -> onnx.ModelProto:
    """x [N, T] (or [N, 1, T]) -> ReduceMean and ReduceMax over time -> 2 outputs per sample."""
    shape = ["N", length] if rank == 2 else ["N", 1, length]
    ax = numpy_helper.from_array(np.array([-1], np.int64), "ax")
    nodes = [helper.make_node("ReduceMean", ["x", "ax"], ["mean"], keepdims=0),
             helper.make_node("ReduceMax", ["x", "ax"], ["max"], keepdims=0)]
    out_shape = ["N"] if rank == 2 else ["N", 1]
    g = helper.make_graph(nodes, "aud", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("mean", TensorProto.FLOAT, out_shape),
                           helper.make_tensor_value_info("max", TensorProto.FLOAT, out_shape)], [ax])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def write_wav(path: Path, x: np.ndarray, rate: int, fmt: str = "pcm16") -> None:
    """x: (frames, channels) in [-1, 1]. pcm16 via the stdlib, float32 written by hand (format 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if fmt == "pcm16":
        import wave

        with wave.open(str(path), "wb") as w:
            w.setnchannels(x.shape[1])
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.clip(np.rint(x * 32767), -32768, 32767).astype("<i2").tobytes())
        return
    data = x.astype("<f4").tobytes()
    ch = x.shape[1]
    fmt_chunk = struct.pack("<HHIIHH", 3, ch, rate, rate * ch * 4, ch * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def word_tokenizer(words: list[str], path: Path, cls_sep: bool = True) -> Path:
    """A WordLevel tokenizer.json over `words` ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3), made with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if cls_sep:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))
    return path
