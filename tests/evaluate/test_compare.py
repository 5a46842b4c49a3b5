"""compare.py: metrics checked against hand-computed values and against one-shot computation."""
import numpy as np
import pytest

from onnxcompress.config import TaskConfig
from onnxcompress.evaluate.compare import compare_batches, compare_outputs, output_metrics, sqnr, topk


def test_topk():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 2])
    assert topk(logits, labels, 1) == pytest.approx(200 / 3)
    assert topk(logits, labels, 2) == pytest.approx(200 / 3)  # row 1: label 2 is third
    assert topk(logits, labels, 3) == 100.0
    assert topk(logits, labels, 5) == 100.0  # k larger than the classes = all


def test_output_metrics_hand_computed():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    cand = np.array([[1.0, 0.5], [0.0, 2.0]])
    m = output_metrics(ref, cand)
    assert m["agreement"] == 100.0
    assert m["cosine"] == pytest.approx((1 / np.sqrt(1.25) + 1.0) / 2, rel=1e-12)
    assert m["cosine_min"] == pytest.approx(1 / np.sqrt(1.25), rel=1e-12)
    assert m["sqnr_db"] == pytest.approx(10 * np.log10(5 / 0.25), rel=1e-12)
    assert m["max_abs_error"] == 0.5 and m["max_rel_error"] == 0.25
    assert sqnr(ref, ref) == float("inf")


def test_sqnr_of_known_noise_and_agreement_flip():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 10))
    cand = ref * 1.1  # noise = 0.1 * signal -> exactly 20 dB, argmax unchanged, cosine 1
    m = output_metrics(ref, cand)
    assert m["sqnr_db"] == pytest.approx(20.0, abs=1e-9)
    assert m["agreement"] == 100.0 and m["cosine"] == pytest.approx(1.0, abs=1e-12)
    flipped = ref.copy()
    flipped[:25] = -flipped[:25]  # a negated row has a different argmax (unless all equal)
    assert output_metrics(ref, flipped)["agreement"] == 75.0
    assert output_metrics(ref, flipped)["cosine_min"] == pytest.approx(-1.0)


def test_no_argmax_on_outputs_without_a_class_axis():
    """A 3-D output (boxes, sequences, maps) gets tensor closeness only: argmax over its last axis means nothing."""
    ref = np.zeros((2, 3, 4))
    ref[..., 1] = 1.0
    cand = ref.copy()
    cand[0, 0] = [0, 0, 5, 0]
    assert "agreement" not in output_metrics(ref, cand)
    r = compare_outputs({"y": ref}, {"y": cand}, task=TaskConfig(name="generic"))
    assert "agreement" not in r["outputs"]["y"] and "agreement" not in r["task"]["metrics"]


def test_regression_output_has_no_agreement():
    ref = np.arange(6.0).reshape(6, 1)
    m = output_metrics(ref, ref + 1)
    assert "agreement" not in m and m["max_abs_error"] == 1.0 and m["max_rel_error"] == pytest.approx(1 / 5)


def test_batchwise_equals_one_shot():
    rng = np.random.default_rng(1)
    ref = {"y": rng.standard_normal((50, 7)), "z": rng.standard_normal((50, 2, 3))}
    cand = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in ref.items()}
    labels = rng.integers(0, 7, 50)
    whole = compare_outputs(ref, cand, labels)
    cuts = [0, 3, 20, 21, 50]
    parts = [({k: v[a:b] for k, v in ref.items()}, {k: v[a:b] for k, v in cand.items()}) for a, b in zip(cuts, cuts[1:])]
    split = compare_batches(parts, labels)
    for key in ("reference_top1", "candidate_top1", "reference_top5", "candidate_top5", "top1_drop"):
        assert split[key] == pytest.approx(whole[key], abs=1e-9)
    for k, v in whole["task"]["metrics"].items():
        assert split["task"]["metrics"][k] == pytest.approx(v, abs=1e-9), k
    for name in ref:
        for k, v in whole["outputs"][name].items():
            assert split["outputs"][name][k] == pytest.approx(v, rel=1e-12), (name, k)


def test_compare_with_labels():
    ref = {"y": np.array([[2.0, 1.0], [0.0, 1.0]])}
    cand = {"y": np.array([[0.0, 1.0], [0.0, 1.0]])}
    r = compare_outputs(ref, cand, np.array([0, 1]))
    assert r["reference_top1"] == 100.0 and r["candidate_top1"] == 50.0 and r["top1_drop"] == 50.0
    assert r["task"]["name"] == "classification" and r["task"]["metrics"]["agreement"] == 50.0


def test_ties_count_as_fractions():
    """int8 logits often tie at the top: a tie among k maxima is worth 1/k, whatever the tie-break."""
    logits = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 3.0, 3.0], [5.0, 0.0, 0.0]])
    labels = np.array([0, 2, 0, 0])
    assert topk(logits, labels, 1) == pytest.approx(100 * (1 / 2 + 1 / 3 + 0 + 1) / 4)
    assert topk(logits, labels, 2) == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)
    assert topk(logits[:, ::-1], 2 - labels, 1) == topk(logits, labels, 1)  # column order (tie-break) is irrelevant
    ref = {"y": np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]])}
    cand = {"y": np.array([[3.0, 3.0, 0.0], [0.0, 2.0, 2.0]])}
    r = compare_outputs(ref, cand, labels[:2])
    m = r["task"]["metrics"]
    # agreement: row 0 ref {0} vs cand {0,1} -> 1/2; row 1 {1,2} vs {1,2} -> 2/4
    assert m["agreement"] == pytest.approx(50.0)
    assert m["top1"] == pytest.approx(100 * (1 / 2 + 1 / 2) / 2) and m["reference_top1"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    assert r["candidate_top1"] == m["top1"]  # the same number at the top level (schema compatibility)
