import numpy as np
import pytest

from onnxcompress.evaluate.compare import compare_outputs, output_metrics, sqnr, topk


def test_topk():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 2])
    assert topk(logits, labels, 1) == pytest.approx(200 / 3)
    assert topk(logits, labels, 2) == pytest.approx(200 / 3)
    assert topk(logits, labels, 3) == 100.0


def test_output_metrics_hand_computed():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    cand = np.array([[1.0, 0.5], [0.0, 2.0]])
    m = output_metrics(ref, cand)
    assert m["agreement"] == 100.0
    assert m["cosine"] == pytest.approx((1 / np.sqrt(1.25) + 1.0) / 2)
    assert m["cosine_min"] == pytest.approx(1 / np.sqrt(1.25))
    assert m["sqnr_db"] == pytest.approx(10 * np.log10(5 / 0.25))
    assert m["max_abs_error"] == 0.5 and m["max_rel_error"] == 0.25
    assert sqnr(ref, ref) == float("inf")


def test_compare_with_labels():
    ref = {"y": np.array([[2.0, 1.0], [0.0, 1.0]])}
    cand = {"y": np.array([[0.0, 1.0], [0.0, 1.0]])}
    r = compare_outputs(ref, cand, np.array([0, 1]))
    assert r["reference_top1"] == 100.0 and r["candidate_top1"] == 50.0 and r["top1_drop"] == 50.0
    assert r["outputs"]["y"]["agreement"] == 50.0
