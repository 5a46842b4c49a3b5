"""Text: .txt (one sample per non-empty line), .jsonl or .csv (a named column), tokenized with the model's
tokenizer.json through the `tokenizers` library.

Only byte offsets of the samples are indexed up front; each batch seeks to its records and tokenizes them.
Model inputs are matched by name: *input_ids* / *attention_mask* / *token_type_ids* / *position_ids*, each cast
to the dtype the model declares (int64, int32, or float for a float mask).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from ..errors import InputError

FORMATS = (".txt", ".jsonl", ".csv")
ROLES = ("type_ids", "mask", "positions", "ids")  # matched in this order (token_type_ids also contains "ids")


def role(name: str) -> Optional[str]:
    n = name.lower()
    if "token_type" in n or "segment" in n:
        return "type_ids"
    if "mask" in n:
        return "mask"
    if "position" in n:
        return "positions"
    if "ids" in n or n in ("input", "tokens", "input_tokens"):
        return "ids"
    return None


def index_records(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(start, end) byte offsets of each sample record, and the CSV header (empty for .txt/.jsonl)."""
    starts, ends, header = [], [], []
    suffix = path.suffix.lower()
    with open(path, "rb") as f:
        pos = 0
        if suffix == ".csv":
            first = f.readline()
            header = next(csv.reader([first.decode("utf-8-sig")]), [])
            pos = len(first)
            rec_start, quotes = pos, 0
            for line in f:
                quotes += line.count(b'"')
                pos += len(line)
                if quotes % 2 == 0:  # a record ends where its quotes balance (a quoted field may hold newlines)
                    if line.strip():
                        starts.append(rec_start)
                        ends.append(pos)
                    rec_start, quotes = pos, 0
        else:
            for line in f:
                if line.strip():
                    starts.append(pos)
                    ends.append(pos + len(line))
                pos += len(line)
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64), header


class TextSource:
    def __init__(self, path: Path, tokenizer, specs, cfg, max_length: int, pad_to_max: bool):
        self.path = path
        self.suffix = path.suffix.lower()
        self.starts, self.ends, self.header = index_records(path)
        self.column, self.label_column = cfg.column, cfg.label_column
        if self.suffix == ".csv":
            for col in filter(None, (cfg.column, cfg.label_column)):
                if col not in self.header:
                    raise InputError(f"{path} has no column '{col}' (columns: {', '.join(self.header)}); pass the text "
                                     f"column with --text-column")
        self.tokenizer = tokenizer
        self.specs = specs
        self.roles = {s.name: role(s.name) for s in specs}
        self.max_length, self.pad_to_max = max_length, pad_to_max
        self.pad_id = _pad_id(tokenizer)
        self.names = [s.name for s in specs]
        self.description = f"text {path}"
        self.labels = self._scan() if cfg.label_column or self.suffix == ".jsonl" else None

    def __len__(self) -> int:
        return len(self.starts)

    def _records(self, indices) -> list:
        out = []
        with open(self.path, "rb") as f:
            for i in indices:
                f.seek(int(self.starts[i]))
                raw = f.read(int(self.ends[i] - self.starts[i])).decode("utf-8", errors="replace")
                out.append(self._parse(raw, int(i)))
        return out

    def _parse(self, raw: str, i: int):
        if self.suffix == ".txt":
            return {self.column: raw.strip()}
        if self.suffix == ".jsonl":
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path} record {i + 1} is not valid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(obj, dict) or self.column not in obj:
                keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                raise InputError(f"{self.path} record {i + 1} has no key '{self.column}' (found: {keys}); pass the text "
                                 f"key with --text-column")
            return obj
        row = next(csv.reader(io.StringIO(raw)), [])
        return dict(zip(self.header, row))

    def _scan(self) -> Optional[np.ndarray]:
        """Every record parsed once at open, in chunks (a bad .jsonl line stops the command before any work);
        the integer labels, if a label column is set."""
        out = []
        for lo in range(0, len(self), 4096):
            for i, rec in enumerate(self._records(range(lo, min(lo + 4096, len(self)))), lo):
                if self.label_column is None:
                    continue
                try:
                    out.append(int(rec[self.label_column]))
                except (KeyError, ValueError, TypeError):
                    raise InputError(f"{self.path} record {i + 1}: label column '{self.label_column}' is missing or not "
                                     f"an integer ({rec.get(self.label_column)!r}); give an integer label per record") from None
        return np.asarray(out, np.int64) if self.label_column else None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        texts = [str(r.get(self.column, "")) for r in self._records(indices)]
        encs = self.tokenizer.encode_batch(texts)
        length = self.max_length if self.pad_to_max else max(1, max(len(e.ids) for e in encs))
        ids = np.full((len(encs), length), self.pad_id, np.int64)
        mask = np.zeros((len(encs), length), np.int64)
        types = np.zeros((len(encs), length), np.int64)
        for r, e in enumerate(encs):
            n = min(len(e.ids), length)
            ids[r, :n], mask[r, :n], types[r, :n] = e.ids[:n], e.attention_mask[:n], e.type_ids[:n]
        by_role = {"ids": ids, "mask": mask, "type_ids": types,
                   "positions": np.broadcast_to(np.arange(length, dtype=np.int64), ids.shape)}
        return {s.name: np.ascontiguousarray(by_role[self.roles[s.name]].astype(s.dtype)) for s in self.specs}


def _pad_id(tok) -> int:
    pad = tok.padding
    if pad and pad.get("pad_id") is not None:
        return int(pad["pad_id"])
    for t in ("[PAD]", "<pad>", "<|pad|>", "[pad]"):
        i = tok.token_to_id(t)
        if i is not None:
            return int(i)
    return 0


def load_tokenizer(path: Optional[str]):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("text data needs the tokenizers library; pip install 'onnxcompress[text]'") from None
    if not path:
        raise InputError("text data needs the model's tokenizer: pass --tokenizer path/to/tokenizer.json")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"tokenizer {p} not found; pass the model's tokenizer.json with --tokenizer")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exception for any parse error
        msg = str(exc).splitlines()[0][:120]
        raise InputError(f"cannot read tokenizer {p} ({msg}); pass the model's tokenizer.json (tokenizers format)") from None


def embedding_rows(model: Optional[onnx.ModelProto], ids_name: str) -> Optional[tuple[str, int]]:
    """(node, rows) of the embedding table the token ids index (a Gather on an initializer), if found."""
    if model is None:
        return None
    inits = {i.name: i for i in model.graph.initializer}
    names = {ids_name}
    for node in model.graph.node:  # ids may be cast / reshaped before the lookup
        if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") and node.input and node.input[0] in names:
            names.add(node.output[0])
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in names and node.input[0] in inits:
            return node.name or node.output[0], int(inits[node.input[0]].dims[0])
    return None


def open_text(path, specs, config, model=None) -> tuple[TextSource, tuple[str, ...]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {p} not found; pass a .txt (one sample per line), .jsonl or .csv file")
    cfg = config.text
    tok = load_tokenizer(cfg.tokenizer)
    unknown = [s for s in specs if role(s.name) is None]
    if unknown or not specs:
        s = unknown[0] if unknown else None
        raise InputError(f"text data fills input_ids/attention_mask/token_type_ids/position_ids, but model input "
                         f"'{s.name if s else '?'}' is none of them; pass .npz arrays named after the inputs")
    for s in specs:
        if len(s.shape) != 2:
            raise InputError(f"text input '{s.name}' must be rank 2 (batch, sequence), the model declares {s.shape}; "
                             f"pass .npz arrays named after the inputs")
    ids = [s for s in specs if role(s.name) == "ids"]
    if not ids:
        raise InputError(f"the model has no token-ids input (inputs: {', '.join(s.name for s in specs)}); text data "
                         f"needs one named like input_ids")
    static = {s.shape[1] for s in specs if isinstance(s.shape[1], int) and s.shape[1] > 0}
    if len(static) > 1:
        raise InputError(f"the model's text inputs declare different sequence lengths {sorted(static)}; pass .npz arrays")
    model_len = next(iter(static), None)
    if cfg.max_length and model_len and cfg.max_length != model_len:
        raise InputError(f"max_length {cfg.max_length} differs from the model's static sequence length {model_len}; "
                         f"drop --max-length or set it to {model_len}")
    max_length = cfg.max_length or model_len or 128
    pad_to_max = model_len is not None or cfg.padding == "max_length"
    if cfg.padding == "dynamic" and model_len:
        raise InputError(f"the model's sequence length is static ({model_len}); dynamic padding cannot fit it, use "
                         f"padding max_length")
    emb = embedding_rows(model, ids[0].name)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if emb and vocab > emb[1]:
        raise InputError(f"tokenizer {cfg.tokenizer} has {vocab} tokens but the model's embedding table ({emb[0]}) has "
                         f"{emb[1]} rows: it is not this model's tokenizer; pass the model's own tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(max_length)
    src = TextSource(p, tok, specs, cfg, max_length, pad_to_max)
    if not len(src):
        raise InputError(f"text file {p} holds no samples; add one sample per line (or record)")
    return src, ()
