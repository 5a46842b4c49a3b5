"""Smoke test of the real-model corpus harness (benchmarks/zoo.py): its judges fail when they should, and one small
PaddlePaddle model from the cache goes through two commands with no traceback and no invalid model written.

Slow (builds data and runs the CLI in subprocesses); skipped when the zoo cache or scikit-image is absent.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CACHE = Path.home() / ".cache" / "onnxcompress-zoo"


@pytest.fixture(scope="module")
def zoo():
    sys.path.insert(0, str(BENCH))
    try:
        import zoo as z
        import zoo_judge as j
    finally:
        sys.path.remove(str(BENCH))
    return z, j


def test_judges_separate_agreement_from_disagreement(zoo):
    _, J = zoo
    rng = np.random.default_rng(0)
    logits = [[rng.normal(size=(1, 10)).astype(np.float32)] for _ in range(20)]
    ok, msg = J.j_classify(logits, logits, None, None)
    assert ok and msg == "top-1 agreement 20/20"
    shuffled = [[np.roll(o[0], 3, axis=1)] for o in logits]
    assert not J.j_classify(logits, shuffled, None, None)[0]
    assert J._ctc([0, 3, 3, 0, 3, 5, 5, 0], blank=0) == (3, 3, 5)
    # a YOLOv8 head with one confident box; the candidate moves it by half its size: recall 0
    head = np.zeros((1, 6, 4), np.float32)
    head[0, :4, 0], head[0, 4, 0] = [100, 100, 40, 40], 0.9
    moved = head.copy()
    moved[0, 0, 0] += 40
    judge = J.JUDGES["yolov8"]
    assert judge([[head]], [[head]], None, None)[0]
    ok, msg = judge([[head]], [[moved]], None, None)
    assert not ok and "0/1" in msg
    assert J.equal([[np.ones(3, np.float32)]], [[np.ones(3, np.float32)]])[0]
    assert not J.equal([[np.ones(3, np.float32)]], [[np.full(3, 1.01, np.float32)]])[0]


def test_paddle_classifier_simplify_and_exact_prune(zoo, tmp_path):
    pytest.importorskip("skimage")
    model = CACHE / "models" / "ppocr_cls.onnx"
    if not model.exists():
        pytest.skip(f"zoo cache absent ({model}); run benchmarks/zoo.py once to fetch it")
    z, _ = zoo
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "ppocr_cls.onnx").symlink_to(model)
    out = tmp_path / "zoo.json"
    assert z.main(["--cache", str(cache), "--models", "ppocr_cls", "--commands", "simplify,prune-0", "--json", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [c["command"] for c in cells] == ["simplify", "prune-0"]
    for c in cells:
        assert c["class"] in z.CODES, c
        assert c["class"] not in ("TRACEBACK", "INVALID-WRITTEN", "CRASH", "TIMEOUT"), c
