"""Text: .txt/.jsonl/.csv, the model's tokenizer.json, padding/truncation, input names and dtypes, bad tokenizers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto

from onnxcompress.config import DataConfig, TextConfig
from onnxcompress.data import feeds, input_specs, load_data
from onnxcompress.errors import InputError
from onnxcompress.sources import open_source

from conftest import run_ort
from .helpers import text_model, word_tokenizer

WORDS = "the cat sat on a mat dog ran far away".split()
SENTS = ["the cat sat", "a dog ran far away on the mat", "cat"]


def ids_of(s: str) -> list[int]:
    return [2] + [4 + WORDS.index(w) for w in s.split()] + [3]  # [CLS] words [SEP]


def expected(sents, length):
    ids = np.zeros((len(sents), length), np.int64)
    mask = np.zeros_like(ids)
    for r, s in enumerate(sents):
        t = ids_of(s)[:length]
        ids[r, :len(t)], mask[r, :len(t)] = t, 1
    return ids, mask


@pytest.fixture
def tok(tmp_path):
    return word_tokenizer(WORDS, tmp_path / "tokenizer.json")


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
def test_formats_tokenize_to_the_model_inputs(tmp_path, tok, fmt):
    p = tmp_path / f"d.{fmt}"
    if fmt == "txt":
        p.write_text("\n".join(SENTS) + "\n\n")
    elif fmt == "jsonl":
        p.write_text("".join(json.dumps({"sentence": s, "y": i}) + "\n" for i, s in enumerate(SENTS)))
    else:
        p.write_text("y,sentence\n" + "".join(f'{i},"{s}"\n' for i, s in enumerate(SENTS)))
    m = text_model(len(WORDS) + 4, seq=8)
    col = "text" if fmt == "txt" else "sentence"
    cfg = DataConfig(seed=None, text=TextConfig(tokenizer=str(tok), column=col, label_column=None if fmt == "txt" else "y"))
    ds = load_data(p, input_specs(m), cfg, m)
    b = next(ds.batches(3))
    ids, mask = expected(SENTS, 8)  # the model's static length 8: the long sentence is truncated (its [SEP] kept)
    ids[1, -1] = 3
    np.testing.assert_array_equal(b["input_ids"], ids)
    np.testing.assert_array_equal(b["attention_mask"], mask)
    np.testing.assert_array_equal(b["token_type_ids"], np.zeros_like(ids))
    assert b["input_ids"].dtype == np.int64
    assert (ds.labels is None) == (fmt == "txt") and (fmt == "txt" or ds.labels.tolist() == [0, 1, 2])
    out = np.concatenate([run_ort(m, dict(f))[0] for f in feeds(ds, 2)])
    np.testing.assert_allclose(out, run_ort(m, {"input_ids": ids, "attention_mask": mask,
                                                "token_type_ids": np.zeros_like(ids)})[0], rtol=1e-6, atol=1e-6)


def test_dynamic_padding_int32_and_names(tmp_path, tok):
    p = tmp_path / "d.txt"
    p.write_text("\n".join(SENTS))
    m = text_model(len(WORDS) + 4, dtype=TensorProto.INT32, names=("ids", "input_mask", "segment_ids"))
    ds = open_source(p, input_specs(m), DataConfig(seed=None, text=TextConfig(tokenizer=str(tok))), m)
    shapes = [b["ids"].shape for b in ds.batches(2)]
    assert shapes == [(2, 10), (1, 3)]  # each batch padded to its longest sample
    b = next(ds.batches(3))
    assert b["ids"].dtype == np.int32 and b["input_mask"].dtype == np.int32
    np.testing.assert_array_equal(b["ids"], expected(SENTS, 10)[0].astype(np.int32))


def test_csv_quoted_multiline_field(tmp_path, tok):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"the cat\nsat",1\n"a ""dog"" ran",0\n')
    m = text_model(len(WORDS) + 4)
    cfg = DataConfig(seed=None, text=TextConfig(tokenizer=str(tok), label_column="label"))
    ds = open_source(p, input_specs(m), cfg, m)
    assert len(ds) == 2 and ds.labels.tolist() == [1, 0]
    assert next(ds.batches(2))["input_ids"][0, :5].tolist() == ids_of("the cat sat")


def test_missing_and_mismatched_tokenizer(tmp_path, tok):
    p = tmp_path / "d.txt"
    p.write_text("the cat\n")
    m = text_model(len(WORDS) + 4)
    with pytest.raises(InputError, match="needs the model's tokenizer: pass --tokenizer"):
        load_data(p, input_specs(m), DataConfig(), m)
    with pytest.raises(InputError, match="tokenizer .*nope.json not found"):
        load_data(p, input_specs(m), DataConfig(text=TextConfig(tokenizer=str(tmp_path / "nope.json"))), m)
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(InputError, match="cannot read tokenizer .*bad.json"):
        load_data(p, input_specs(m), DataConfig(text=TextConfig(tokenizer=str(tmp_path / "bad.json"))), m)
    small = text_model(5)  # an embedding of 5 rows: this tokenizer (14 tokens) is not the model's
    with pytest.raises(InputError, match=r"has 14 tokens but the model's embedding table .* 5 rows"):
        load_data(p, input_specs(small), DataConfig(text=TextConfig(tokenizer=str(tok))), small)


def test_bad_text_records(tmp_path, tok):
    m = text_model(len(WORDS) + 4)
    cfg = DataConfig(text=TextConfig(tokenizer=str(tok)))
    (tmp_path / "d.jsonl").write_text('{"body": "the cat"}\n')
    with pytest.raises(InputError, match="record 1 has no key 'text'.*--text-column"):
        load_data(tmp_path / "d.jsonl", input_specs(m), cfg, m)
    (tmp_path / "d.csv").write_text("body\nthe cat\n")
    with pytest.raises(InputError, match="has no column 'text'"):
        load_data(tmp_path / "d.csv", input_specs(m), cfg, m)
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(InputError, match="holds no samples"):
        load_data(tmp_path / "e.txt", input_specs(m), cfg, m)


def test_a_bad_jsonl_line_anywhere_stops_at_open(tmp_path, tok):
    m = text_model(len(WORDS) + 4)
    (tmp_path / "d.jsonl").write_text('{"text": "the cat"}\n' * 50 + '{"text": "a dog"\n')
    from onnxcompress.sources.text import open_text

    with pytest.raises(InputError, match="record 51 is not valid JSON"):
        open_text(tmp_path / "d.jsonl", input_specs(m), DataConfig(text=TextConfig(tokenizer=str(tok))), m)
