"""Task metrics against hand-computed values: ties, YOLO decoding/NMS/matching/AP, dense maps, CTC, embeddings,
the task guess, and user metrics."""
import numpy as np
import pytest

from onnxcompress.config import TaskConfig
from onnxcompress.errors import InputError
from onnxcompress.evaluate.compare import compare_outputs
from onnxcompress.evaluate.tasks import TaskRun, guess_task
from onnxcompress.evaluate.tasks.base import tie_agreement, topk_credit
from onnxcompress.evaluate.tasks.ctc import edit_distance, greedy_decode
from onnxcompress.evaluate.tasks.detection import average_precision, box_iou, match, nms, yolox_grid


def task(ref, cand, labels=None, **cfg):
    return compare_outputs(ref, cand, labels, TaskConfig(**cfg))["task"]


def test_tie_fractions():
    r = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    c = np.array([[1.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    assert tie_agreement(r, c).tolist() == pytest.approx([1 / 2, 1 / 3])
    assert topk_credit(c, np.array([0, 2]), 1).tolist() == pytest.approx([1.0, 1 / 3])
    assert topk_credit(c, np.array([1, 2]), 2).tolist() == pytest.approx([1 / 2, 2 / 3])
    with pytest.raises(InputError, match="labels hold class 7 but the output has 3 classes"):
        task({"y": r}, {"y": c}, np.array([0, 7]))


def yolo_rows(boxes_cxcywh, scores, anchors=32):
    """[A, 4+C] rows (no objectness), padded with zero-score anchors (a head has many more anchors than attributes)."""
    rows = np.concatenate([np.asarray(boxes_cxcywh, float), np.asarray(scores, float)], axis=1)
    pad = np.zeros((anchors - len(rows), rows.shape[1]))
    pad[:, :4] = [5, 5, 4, 4]
    return np.concatenate([rows, pad])


def test_nms_is_class_wise_and_matching_is_greedy():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)
    assert nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), 0.45).tolist() == [0, 3]
    # the same two overlapping boxes in different classes both survive the class-wise NMS
    rows = yolo_rows([[5, 5, 10, 10], [6, 6, 10, 10], [55, 55, 10, 10]], [[0.9, 0.0], [0.0, 0.8], [0.1, 0.05]])
    out = task({"o": rows[None].transpose(0, 2, 1)}, {"o": rows[None].transpose(0, 2, 1)}, name="detection")
    assert out["metrics"]["reference_detections"] == 2  # the third scores 0.1 < 0.25
    tp = match((boxes[:2], np.array([0.5, 0.9]), np.array([0, 0])), (boxes[:1], np.array([0])), 0.5)
    assert tp.tolist() == [0.0, 1.0]  # the better-scoring prediction takes the single truth box


def test_detection_recall_precision_and_map_by_hand():
    ref = yolo_rows([[10, 10, 8, 8], [40, 40, 8, 8], [70, 70, 8, 8], [90, 20, 8, 8]],
                    [[0.9, 0.0], [0.0, 0.8], [0.7, 0.0], [0.0, 0.0]])
    cand = ref.copy()
    cand[1, 4:] = [0.8, 0.0]  # class changed: misses FP32 box 1 and adds a box FP32 did not make
    cand[2, 4:] = [0.1, 0.0]  # dropped below the score threshold
    cand[3, 4:] = [0.0, 0.6]  # a new box
    labels = np.array([[[0, 6, 6, 14, 14], [1, 36, 36, 44, 44], [0, 66, 66, 74, 74], [-1, 0, 0, 0, 0]]], float)
    for transposed in (False, True):
        f = (lambda a: a[None].transpose(0, 2, 1)) if transposed else (lambda a: a[None])
        t = task({"o": f(ref)}, {"o": f(cand)}, labels, name="detection", objectness=False)  # v8 rows either way
        m = t["metrics"]
        assert m["reference_detections"] == 3 and m["candidate_detections"] == 3
        assert m["recall"] == pytest.approx(100 / 3) and m["precision"] == pytest.approx(100 / 3)
        assert m["f1"] == pytest.approx(100 / 3)
        assert m["reference_map50"] == pytest.approx(100.0)  # FP32 finds every labelled box
        # candidate: class 0 finds 1 of 2 boxes at rank 1 of 2 (AP 0.5), class 1 finds nothing (AP 0)
        assert m["map50"] == pytest.approx(25.0) and m["map50_drop"] == pytest.approx(75.0)


def test_detection_objectness_and_logits():
    """v5/X: [N, A, 5+C], score = objectness x class; logits (outside [0, 1]) go through a sigmoid."""
    rows = np.zeros((32, 7))
    rows[:2] = [[10, 10, 8, 8, 0.5, 0.9, 0.1], [40, 40, 8, 8, 0.2, 0.9, 0.0]]  # scores 0.45 and 0.18
    t = task({"o": rows[None]}, {"o": rows[None]}, name="detection")
    assert t["metrics"]["reference_detections"] == 1
    logits = rows.copy()
    logits[:, 4:] = np.log(rows[:, 4:] + 1e-9) - np.log1p(-rows[:, 4:] + 1e-9)
    assert logits.min() < -1.0
    assert task({"o": logits[None]}, {"o": logits[None]}, name="detection")["metrics"]["reference_detections"] == 1
    none = rows.copy()
    none[:, 4] = 0.0
    t = task({"o": none[None]}, {"o": none[None]}, name="detection")
    assert "recall" not in t["metrics"] and "no detection scoring above 0.25" in t["unavailable"]["recall"]
    t = task({"o": rows[None]}, {"o": none[None]}, name="detection")  # the candidate finds nothing: F1 0, not undefined
    assert t["metrics"]["recall"] == 0.0 and t["metrics"]["f1"] == 0.0 and "precision" in t["unavailable"]
    with pytest.raises(InputError, match="YOLO-style output"):
        task({"o": np.zeros((1, 10))}, {"o": np.zeros((1, 10))}, name="detection")


def test_raw_yolox_outputs_are_decoded_on_the_grid():
    """YOLOX exported without decoding: [N, A, 5+C] with A = the cells of strides 8/16/32 (416x416: 3549);
    guessed from that exact count, decoded as (offset + cell) x stride and exp(log size) x stride."""
    grid, stride = yolox_grid(3549, (8, 16, 32))
    assert grid.shape == (3549, 2) and stride[0, 0] == 8 and stride[-1, 0] == 32 and yolox_grid(3550, (8, 16, 32)) is None
    y = np.zeros((1, 3549, 6))
    y[..., :2] = -0.3  # raw offsets can be negative: decoded boxes could not be
    i = 2 * 52 + 3  # stride-8 cell x=3, y=2
    y[0, i] = [0.5, 0.5, np.log(2.0), np.log(2.0), 0.9, 0.8]
    t = task({"output": y}, {"output": y})
    assert t["name"] == "detection" and "raw YOLOX" in t["why"] and t["metrics"]["reference_detections"] == 1
    from onnxcompress.evaluate.tasks.detection import Detection

    det = Detection(TaskConfig(grid_strides=(8, 16, 32)), "output")
    det._setup(y)
    boxes, scores, classes = det.decode(y)[0]
    assert boxes.tolist() == [[20.0, 12.0, 36.0, 28.0]] and scores[0] == pytest.approx(0.72)  # centre (28, 20), 16 px


def test_average_precision_all_points():
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.0, 1.0]), 2) == pytest.approx(1 * 0.5 + 2 / 3 * 0.5)


def test_segmentation_multiclass_and_probability_map():
    ref = np.zeros((1, 3, 2, 2))
    ref[0, 0] = [[5, 5], [0, 0]]
    ref[0, 1] = [[0, 0], [5, 0]]
    ref[0, 2] = [[0, 0], [0, 5]]
    cand = ref.copy()
    cand[0, 2, 1, 1] = 0.0
    cand[0, 1, 1, 1] = 6.0  # the class-2 pixel becomes class 1
    m = task({"s": ref}, {"s": cand}, name="segmentation")["metrics"]
    # class 0: 2/2, class 1: 1/2, class 2: 0/1 -> mIoU 50%
    assert m["pixel_agreement"] == pytest.approx(75.0) and m["miou"] == pytest.approx(50.0)
    prob = np.array([[[[0.9, 0.8], [0.1, 0.2]]]])
    cprob = np.array([[[[0.9, 0.2], [0.4, 0.2]]]])
    t = task({"p": prob}, {"p": cprob}, name="segmentation")
    assert t["name"] == "segmentation" and t["metrics"]["iou"] == pytest.approx(100 / 3)
    assert t["metrics"]["pixel_agreement"] == pytest.approx(50.0) and "miou" in t["unavailable"]
    assert t["default_gates"] == [["iou", ">=", 90.0]]


def test_ctc_greedy_decode_and_edit_distance():
    ids = np.array([[0, 3, 3, 0, 3, 5, 5, 0]])
    assert greedy_decode(np.eye(6)[ids]) == [(3, 3, 5)]
    assert greedy_decode(np.eye(6)[ids], blank=3) == [(0, 0, 5, 0)]  # the blank separates the two 0s
    assert edit_distance((1, 2, 3), (1, 3)) == 1 and edit_distance((), (4, 4)) == 2
    ref = np.eye(6)[np.array([[0, 1, 0, 2, 0], [0, 4, 4, 0, 0]])]
    cand = np.eye(6)[np.array([[0, 1, 0, 0, 0], [0, 4, 4, 0, 0]])]
    labels = np.array([[1, 2], [4, -1]])
    t = task({"p": ref}, {"p": cand}, labels)
    assert t["name"] == "ctc"
    m = t["metrics"]
    assert m["sequence_accuracy"] == 50.0 and m["char_agreement"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert m["reference_accuracy"] == 100.0 and m["accuracy"] == 50.0 and m["accuracy_drop"] == 50.0


def test_embedding_neighbours_and_rank_correlation():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    t = task({"embedding": ref}, {"embedding": ref})
    assert t["name"] == "embedding" and t["metrics"]["nn_agreement"] == 100.0
    assert t["metrics"]["rank_correlation"] == pytest.approx(1.0) and t["metrics"]["cosine"] == pytest.approx(1.0)
    swapped = ref[[0, 2, 1, 3]]  # samples 1 and 2 trade places: every neighbour changes
    m = task({"embedding": ref}, {"embedding": swapped})["metrics"]
    assert m["nn_agreement"] == 0.0 and m["rank_correlation"] < 0.0


@pytest.mark.parametrize("shape_fn, expected", [
    (lambda r: r.standard_normal((4, 10)), "classification"),
    (lambda r: r.standard_normal((4, 1)), "generic"),
    (lambda r: r.standard_normal((4, 3, 16, 16)), "segmentation"),
    (lambda r: r.random((4, 1, 16, 16)), "segmentation"),
    (lambda r: np.abs(r.standard_normal((4, 7, 100))), "detection"),
    (lambda r: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(r.standard_normal((4, 20, 6)))), "ctc"),
    (lambda r: (lambda e: np.log(e / e.sum(-1, keepdims=True)))(np.exp(r.standard_normal((4, 20, 6)))), "ctc"),
    (lambda r: r.standard_normal((4, 20, 6)), "generic"),
])
def test_guess_task(shape_fn, expected):
    y = shape_fn(np.random.default_rng(0))
    if expected == "detection":
        y[:, 4:] = np.random.default_rng(1).random((4, 3, 100))  # scores in [0, 1]
    assert guess_task({"out": y})[0] == expected
    unit = np.random.default_rng(2).standard_normal((4, 32))
    assert guess_task({"out": unit / np.linalg.norm(unit, axis=1, keepdims=True)})[0] == "embedding"
    assert guess_task({"sentence_embedding": np.ones((4, 8))})[0] == "embedding"


def test_user_metric(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy as np\n"
                 "def score(ref, cand, labels):\n"
                 "    return {'mean_gap': float(np.abs(ref['y'] - cand['y']).mean()), 'n': len(labels)}\n"
                 "def bad(ref, cand, labels):\n    return [1]\n")
    run = TaskRun(TaskConfig(), f"{f}:score")
    ref, cand = np.zeros((3, 4)), np.ones((3, 4))
    run.update({"y": ref[:2]}, {"y": cand[:2]}, np.array([0, 1]))
    run.update({"y": ref[2:]}, {"y": cand[2:]}, np.array([2]))
    m = run.result()["metrics"]
    assert m["mean_gap"] == 1.0 and m["n"] == 3.0 and "agreement" in m
    for spec, msg in ((f"{f}:bad", "returned list"), (f"{f}:nope", "has no function 'nope'"),
                      (f"{tmp_path / 'x.py'}:f", "not FILE.py:FUNCTION")):
        with pytest.raises(InputError, match=msg):
            r = TaskRun(TaskConfig(), spec)
            r.update({"y": ref}, {"y": cand}, None)
            r.result()
