"""Detection: YOLO v5/v8/X-style heads and PicoDet/GFL-style split heads, decoded and compared as boxes, not as a tensor.

Layouts: [N, anchors, 4+C(+1)] or [N, 4+C(+1), anchors] (the shorter axis holds the attributes); boxes
are (cx, cy, w, h); with objectness (v5/X: column 4) a box scores objectness x class probability.
Scores outside [0, 1] in the FP32 output are taken as logits (sigmoid). Raw YOLOX outputs (cell
offsets and log sizes per stride, `grid_strides` e.g. 8, 16, 32) are decoded on the grid first. Class-wise NMS at fixed
thresholds, then recall and precision of the candidate's boxes against the FP32 boxes (same class,
IoU >= match_iou), and mAP@match_iou of both models against box labels [N, M, 5] = (class, x1, y1, x2, y2)
in output coordinates (rows with class < 0 are padding). numpy NMS here: ORT's NonMaxSuppression would
need a session per batch for a few hundred boxes.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np

from ...errors import InputError
from .base import Outputs, TaskMetric, is_probability, percent, sigmoid

MAX_CANDIDATES = 4096  # highest-scoring boxes kept before NMS
MAX_DETECTIONS = 300
RECALL_DEFAULT = PRECISION_DEFAULT = 90.0  # % of the FP32 detections found / of the candidate's that FP32 made

Dets = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4] xyxy, scores [K], classes [K]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes [n, 4] x [m, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS; indices kept, best first."""
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size and len(keep) < MAX_DETECTIONS:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] <= iou]
    return np.array(keep, dtype=np.int64)


def match(pred: Dets, truth: tuple[np.ndarray, np.ndarray], iou: float) -> np.ndarray:
    """Greedy matching, best-scoring prediction first: 1 for a prediction that matches an unmatched
    truth box of its class with IoU >= iou (per prediction, in the prediction's order)."""
    pb, ps, pc = pred
    tb, tc = truth
    tp = np.zeros(len(pb))
    if not len(pb) or not len(tb):
        return tp
    m = box_iou(pb, tb)
    m[pc[:, None] != tc[None, :]] = -1.0
    used = np.zeros(len(tb), bool)
    for i in np.argsort(-ps, kind="stable"):
        row = np.where(used, -1.0, m[i])
        j = int(row.argmax())
        if row[j] >= iou:
            tp[i], used[j] = 1.0, True
    return tp


def yolox_grid(anchors: int, strides: tuple[int, ...]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Cell coordinates [A, 2] and strides [A, 1] of raw YOLOX outputs for a square input whose grids
    give exactly `anchors` cells (size = sqrt(A / sum(1 / s^2))), or None when no size does."""
    size = int(round(np.sqrt(anchors / sum(1.0 / st ** 2 for st in strides))))
    if any(size % st for st in strides) or sum((size // st) ** 2 for st in strides) != anchors:
        return None
    grids, steps = [], []
    for st in strides:
        g = size // st
        yv, xv = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        steps.append(np.full((g * g, 1), st))
    return np.concatenate(grids).astype(np.float64), np.concatenate(steps).astype(np.float64)


SPLIT_STRIDES = (8, 16, 32, 64, 128)  # per level, largest grid first (PicoDet, GFL, NanoDet heads)


def split_heads(outputs) -> Optional[list[tuple[str, str]]]:
    """(score output, box output) per level, largest grid first, for heads that write them apart (PicoDet, GFL,
    NanoDet: scores [N, A, C] in [0, 1] and box values [N, A, 4] distances or [N, A, 4 x bins] distributions per
    level), or None. Each level's anchor count pairs exactly one score and one box output."""
    by_anchors: dict[int, list[str]] = defaultdict(list)
    for name, y in outputs.items():
        if isinstance(y, np.ndarray) and y.ndim == 3 and y.shape[1] > 1:
            by_anchors[y.shape[1]].append(name)
    levels = []
    for a in sorted(by_anchors, reverse=True):
        names = by_anchors[a]
        if len(names) != 2:
            return None
        probs = [n for n in names if is_probability(outputs[n])]
        boxes = [n for n in names if n not in probs and outputs[n].shape[2] % 4 == 0]
        if len(probs) != 1 or len(boxes) != 1:
            return None
        levels.append((probs[0], boxes[0]))
    if len(levels) < 2 or len(levels) > len(SPLIT_STRIDES):
        return None
    if len({outputs[s].shape[2] for s, _ in levels}) != 1 or len({outputs[b].shape[2] for _, b in levels}) != 1:
        return None
    return levels if split_grid([outputs[s].shape[1] for s, _ in levels]) is not None else None


def split_grid(anchors: list[int]) -> Optional[tuple[int, int]]:
    """(H, W) of an input whose grids at strides 8, 16, 32, ... (ceil division) have exactly these anchor counts,
    or None. The taller grid is taken when both orientations fit (boxes then compare as a transposed image)."""
    s0 = SPLIT_STRIDES[0]
    for gh in range(int(np.sqrt(anchors[0])), anchors[0] + 1):
        if anchors[0] % gh:
            continue
        h, w = gh * s0, anchors[0] // gh * s0
        if all(-(-h // st) * -(-w // st) == a for st, a in zip(SPLIT_STRIDES, anchors)):
            return h, w
    return None


def average_precision(scores: np.ndarray, tp: np.ndarray, n_truth: int) -> float:
    """All-point interpolated AP (VOC 2010+)."""
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    ctp, cfp = np.cumsum(tp[order]), np.cumsum(1 - tp[order])
    rec = np.concatenate([[0.0], ctp / n_truth, [1.0]])
    prec = np.concatenate([[1.0], ctp / np.maximum(ctp + cfp, 1e-12), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    return float(np.sum((rec[1:] - rec[:-1]) * prec[1:]))


class Detection(TaskMetric):
    name = "detection"
    words = {"recall": "detection recall against FP32", "precision": "detection precision against FP32",
             "f1": "detection F1 against FP32", "map50": "mAP@0.5 against the box labels",
             "map50_drop": "mAP@0.5 drop"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tp = self.n_ref = self.n_cand = 0
        self.layout: Optional[tuple[bool, bool, bool]] = None  # transposed, objectness, logits
        self.ap_preds = {"reference": defaultdict(list), "candidate": defaultdict(list)}  # class -> [(score, tp)]
        self.n_truth: dict[int, int] = defaultdict(int)
        self.labelled = False
        self.levels: Optional[list[tuple[str, str]]] = None  # split score/box outputs per level (PicoDet)
        self.split_hw: Optional[tuple[int, int]] = None

    def _setup_split(self, ref) -> bool:
        """PicoDet-style heads: scores and boxes per level in separate outputs (split_heads)."""
        self.levels = split_heads(ref) if self.output in ref else None
        if not self.levels or self.output not in {n for pair in self.levels for n in pair}:
            self.levels = None
            return False
        self.split_hw = split_grid([ref[s].shape[1] for s, _ in self.levels])
        bins = ref[self.levels[0][1]].shape[2] // 4
        self.layout = (False, False, False)
        self.layout_text = (f"{len(self.levels)} levels of split scores [N, A, {ref[self.levels[0][0]].shape[2]}] and "
                            f"boxes [N, A, 4{' x ' + str(bins) + ' bins' if bins > 1 else ''}] (input "
                            f"{self.split_hw[0]}x{self.split_hw[1]})")
        return True

    def decode_split(self, out) -> list[Dets]:
        """Anchor centres ((col, row) + 0.5) x stride; distances l, t, r, b in strides (the expectation over bins
        when the head writes distributions); class-wise NMS as for YOLO heads."""
        h, w = self.split_hw
        per_sample = []
        for i in range(len(out[self.levels[0][0]])):
            boxes, scores, classes = [], [], []
            for (sname, bname), st in zip(self.levels, SPLIT_STRIDES):
                sc, d = out[sname][i].astype(np.float64), out[bname][i].astype(np.float64)
                gw = -(-w // st)
                a = np.arange(sc.shape[0])
                ctr = np.stack([a % gw, a // gw], 1) + 0.5
                bins = d.shape[1] // 4
                if bins > 1:
                    d = d.reshape(-1, 4, bins)
                    d = np.exp(d - d.max(-1, keepdims=True))
                    d = (d / d.sum(-1, keepdims=True)) @ np.arange(bins)
                boxes.append(np.concatenate([ctr - d[:, :2], ctr + d[:, 2:]], 1) * st)
                scores.append(sc.max(1))
                classes.append(sc.argmax(1))
            b, s_, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
            keep = np.flatnonzero(s_ > self.config.score_threshold)
            keep = keep[np.argsort(-s_[keep], kind="stable")[:MAX_CANDIDATES]]
            b, s_, c = b[keep], s_[keep], c[keep]
            offset = (2 * np.abs(b).max() + 1.0) if len(b) else 0.0
            kept = nms(b + (c * offset)[:, None], s_, self.config.nms_iou) if len(b) else keep
            per_sample.append((b[kept], s_[kept], c[kept]))
        return per_sample

    def _setup(self, y: np.ndarray) -> None:
        if y.ndim != 3 or min(y.shape[1:]) < 5:
            raise InputError(f"detection needs a YOLO-style output [N, anchors, 4+classes(+1)] or [N, 4+classes(+1), "
                             f"anchors]; '{self.output}' has shape {list(y.shape)}; choose --task generic or the right --task-output")
        transposed = y.shape[1] < y.shape[2]
        obj = (not transposed) if self.config.objectness is None else self.config.objectness
        rows = np.swapaxes(y, 1, 2) if transposed else y
        if obj and rows.shape[2] < 6:
            raise InputError(f"'{self.output}' has {rows.shape[2]} attributes per box: too few for 4 box values, "
                             "objectness and classes; set the task's objectness to false")
        self.layout = (transposed, obj, not is_probability(rows[..., 4:]))
        self.grid = yolox_grid(rows.shape[1], self.config.grid_strides) if self.config.grid_strides else None
        if self.config.grid_strides and self.grid is None:
            raise InputError(f"'{self.output}' has {rows.shape[1]} anchors, which no square input gives with grid strides "
                             f"{list(self.config.grid_strides)}; check the task's grid_strides")
        self.layout_text = (f"{'[N, 4+C, anchors]' if transposed else '[N, anchors, 4+C]'}, "
                            f"{'objectness x class' if obj else 'class'} scores{' (sigmoid of logits)' if self.layout[2] else ''}")

    def decode(self, y: np.ndarray) -> list[Dets]:
        transposed, obj, logits = self.layout
        rows = np.swapaxes(y, 1, 2) if transposed else y
        out = []
        for p in rows.astype(np.float64):
            cls = p[:, 5:] if obj else p[:, 4:]
            if logits:
                cls = sigmoid(cls)
            scores = cls * (sigmoid(p[:, 4:5]) if logits else p[:, 4:5]) if obj else cls
            c = scores.argmax(1)
            s = scores[np.arange(len(scores)), c]
            keep = np.flatnonzero(s > self.config.score_threshold)
            keep = keep[np.argsort(-s[keep], kind="stable")[:MAX_CANDIDATES]]
            xy, wh = p[keep, :2], p[keep, 2:4]
            if self.grid is not None:  # raw YOLOX: offsets from the cell, log sizes, in strides
                grid, stride = self.grid[0][keep], self.grid[1][keep]
                xy, wh = (xy + grid) * stride, np.exp(np.clip(wh, -10, 10)) * stride
            boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
            offset = (2 * np.abs(boxes).max() + 1.0) if len(boxes) else 0.0  # classes never overlap
            kept = nms(boxes + (c[keep] * offset)[:, None], s[keep], self.config.nms_iou) if len(keep) else keep
            out.append((boxes[kept], s[keep][kept], c[keep][kept]))
        return out

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        r, c = ref[self.output], cand[self.output]
        if self.layout is None and not self._setup_split(ref):
            self._setup(r)
        rd, cd = (self.decode_split(ref), self.decode_split(cand)) if self.levels else (self.decode(r), self.decode(c))
        for a, b in zip(rd, cd):
            self.tp += int(match(b, (a[0], a[2]), self.config.match_iou).sum())
            self.n_ref += len(a[0])
            self.n_cand += len(b[0])
        if labels is None:
            return
        if labels.ndim != 3 or labels.shape[2] != 5:
            self.unavailable["map50"] = (f"the labels (shape {list(labels.shape)}) are not boxes [N, M, 5] = "
                                         "(class, x1, y1, x2, y2)")
            return
        self.labelled = True
        for i, lab in enumerate(labels.astype(np.float64)):
            lab = lab[lab[:, 0] >= 0]
            truth = (lab[:, 1:], lab[:, 0].astype(np.int64))
            for cls in truth[1]:
                self.n_truth[int(cls)] += 1
            for who, dets in (("reference", rd[i]), ("candidate", cd[i])):
                tp = match(dets, truth, self.config.match_iou)
                for s, k, t in zip(dets[1], dets[2], tp):
                    self.ap_preds[who][int(k)].append((s, t))

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {"reference_detections": float(self.n_ref), "candidate_detections": float(self.n_cand)}
        if self.n_ref:
            out["recall"] = percent(self.tp, self.n_ref)
        else:
            self.unavailable["recall"] = (f"the FP32 model made no detection scoring above {self.config.score_threshold:g} "
                                          "on this data; validate on real images")
        if self.n_cand:
            out["precision"] = percent(self.tp, self.n_cand)
        else:
            self.unavailable["precision"] = "the candidate made no detection on this data"
        if self.n_ref:  # 2 tp / (FP32 boxes + candidate boxes): the harmonic mean of recall and precision, and 0
            # (not undefined) when the candidate finds nothing, so the accuracy search can see it improve
            out["f1"] = percent(2 * self.tp, self.n_ref + self.n_cand)
        else:
            self.unavailable["f1"] = self.unavailable["recall"]
        if self.labelled and self.n_truth:
            for who in ("reference", "candidate"):
                aps = []
                for cls, n in self.n_truth.items():
                    pairs = self.ap_preds[who].get(cls, [])
                    s = np.array([p[0] for p in pairs])
                    t = np.array([p[1] for p in pairs])
                    aps.append(average_precision(s, t, n) if pairs else 0.0)
                out[("reference_" if who == "reference" else "") + "map50"] = 100.0 * float(np.mean(aps))
            out["map50_drop"] = out["reference_map50"] - out["map50"]
        else:
            self.unavailable.setdefault("map50", "the data has no box labels")
            self.unavailable["map50_drop"] = self.unavailable["map50"]
        return out

    def primary(self, labels: bool) -> str:
        return "f1"

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        return [("recall", ">=", RECALL_DEFAULT), ("precision", ">=", PRECISION_DEFAULT)]
