"""Demo data for the real-data paths, made at run time (nothing downloaded, nothing large in the repository):
an ImageFolder of Fashion-MNIST PNGs written from the bundled arrays, and a small text encoder with its own
tokenizer.json (trained here with the `tokenizers` library on generated sentences)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # models/fashion_net.py: the bundled arrays are (x/255 - MEAN) / STD
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def fashion_pixels(npz: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images (N, 28, 28) and labels back from the bundled normalized arrays (exact: they were x/255)."""
    with np.load(npz) as d:
        x, y = d["input"], (d["labels"] if "labels" in d.files else None)
    return np.rint((x[:, 0] * FASHION_STD + FASHION_MEAN) * 255).clip(0, 255).astype(np.uint8), y


def write_fashion_folder(npz: str | Path, out: str | Path, limit: int | None = None, fmt: str = "png",
                         size: int | None = None, rgb: bool = False) -> Path:
    """One subfolder per class (00_tshirt, 01_trouser, ...), files named by their row in `npz` (sorted
    order = array order within a class). `size`/`rgb` upscale and colour them (for decoding benchmarks)."""
    from PIL import Image

    px, y = fashion_pixels(npz)
    out = Path(out)
    n = len(px) if limit is None else min(limit, len(px))
    for i in range(n):
        label = int(y[i]) if y is not None else 0
        d = out / f"{label:02d}_{FASHION_CLASSES[label]}"
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(px[i])
        if size:
            im = im.resize((size, size), Image.BILINEAR)
        if rgb:
            im = im.convert("RGB")
        im.save(d / f"{i:05d}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    for k, name in enumerate(FASHION_CLASSES):  # every class folder exists (an empty one would be an error)
        if not (out / f"{k:02d}_{name}").exists():
            raise ValueError(f"class {name} has no image in the first {n} rows; use a larger limit")
    return out


def fashion_data_config():
    """The DataConfig that turns the PNGs back into the bundled model's input (1 channel, its mean/std)."""
    from ..config import DataConfig, ImageConfig

    return DataConfig(seed=None, image=ImageConfig(preset="unit", mean=(FASHION_MEAN,), std=(FASHION_STD,)))


_ADJ = "small big red old new quiet loud happy sad bright dark fast slow warm cold".split()
_NOUN = "cat dog bird car house tree river city model song book train boat garden phone".split()
_VERB = "sees likes finds follows builds paints moves watches answers carries".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} a {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
            for _ in range(n)]


def write_text_demo(out: str | Path, n: int = 400, dim: int = 32, seed: int = 0) -> dict[str, Path]:
    """sentences.txt, tokenizer.json (WordPiece with [CLS]/[SEP], trained here) and encoder.onnx: token +
    position embeddings, a two-layer MLP per token, masked mean pooling, a 2-class head (inputs input_ids,
    attention_mask, token_type_ids [N, L] int64). Random weights: for calibration and agreement, not accuracy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = sentences(n, seed)
    (out / "sentences.txt").write_text("\n".join(text) + "\n")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, show_progress=False, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(text + sentences(200, seed + 1), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(str(out / "tokenizer.json"))
    vocab, max_len = tok.get_vocab_size(), 64
    rng = np.random.default_rng(seed)

    def w(name, *shape, s=None):
        return numpy_helper.from_array((rng.standard_normal(shape) * (s or 1 / np.sqrt(shape[0]))).astype(np.float32), name)

    inits = [w("tok_emb", vocab, dim, s=0.5), w("pos_emb", max_len, dim, s=0.1), w("type_emb", 2, dim, s=0.1),
             w("w1", dim, 4 * dim), w("w2", 4 * dim, dim), w("head", dim, 2),
             numpy_helper.from_array(np.zeros(4 * dim, np.float32), "b1"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"), numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one")]
    n = helper.make_node
    nodes = [n("Gather", ["tok_emb", "input_ids"], ["te"]), n("Gather", ["type_emb", "token_type_ids"], ["ty"]),
             n("Shape", ["input_ids"], ["shp"]), n("Slice", ["shp", "one", "axis2", "zero"], ["len"]),
             n("Slice", ["pos_emb", "zero", "len", "zero"], ["pe"]),
             n("Add", ["te", "ty"], ["e1"]), n("Add", ["e1", "pe"], ["e"]),
             n("MatMul", ["e", "w1"], ["h1"]), n("Add", ["h1", "b1"], ["h1b"]), n("Relu", ["h1b"], ["a1"]),
             n("MatMul", ["a1", "w2"], ["h2"]), n("Add", ["e", "h2"], ["h"]),
             n("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT), n("Unsqueeze", ["mf", "axis2"], ["m3"]),
             n("Mul", ["h", "m3"], ["hm"]), n("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
             n("ReduceSum", ["mf", "axis1"], ["cnt"], keepdims=1), n("Div", ["s", "cnt"], ["pooled"]),
             n("MatMul", ["pooled", "head"], ["logits"])]
    ins = [helper.make_tensor_value_info(k, TensorProto.INT64, ["N", "L"]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "text_encoder", ins, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxcompress-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out / "encoder.onnx"))
    (out / "data.json").write_text(json.dumps({"text": {"tokenizer": str(out / "tokenizer.json"), "max_length": max_len}}, indent=2) + "\n")
    return {"model": out / "encoder.onnx", "tokenizer": out / "tokenizer.json", "text": out / "sentences.txt",
            "data_config": out / "data.json"}
