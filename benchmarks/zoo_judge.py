"""Judging a written model with ONNX Runtime alone: validity (checker, ORT load with optimizations on and off, one
real sample, finite outputs), quality by the task's own output, and batch-1 speed against FP32.

Every judge gets per-sample outputs of the FP32 model and of the candidate (lists of output lists) and returns
(ok, one-line measurement). Samples are fed one at a time (batch 1), which every model accepts (some have the batch
fixed at 1); `whole` models read all samples as one sequence in one call.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort


def session(path, opt: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if opt else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(data: dict, m) -> list[dict]:
    """One feed per sample in the model's layout (sample axis 0, or m.layout's axis; const inputs as they are)."""
    if m.whole:
        return [dict(data)]
    n = next(v.shape[int(m.layout.get(k, 0))] for k, v in data.items() if m.layout.get(k) != "const")
    out = []
    for i in range(n):
        f = {}
        for k, v in data.items():
            lay = m.layout.get(k, "0")
            f[k] = v if lay == "const" else np.take(v, [i], axis=int(lay))
        out.append(f)
    return out


def run(sess: ort.InferenceSession, fs: list[dict]) -> list[list[np.ndarray]]:
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in f.items() if k in names}) for f in fs]


def validity(path, fs: list[dict]) -> str | None:
    """None when the model is valid: full checker, loads with optimizations on and off, runs a real sample, finite."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the checker's own exception types vary by version
        return f"checker: {str(exc).strip().splitlines()[0][:160]}"
    for opt in (True, False):
        try:
            outs = run(session(path, opt), fs[:1])[0]
        except Exception as exc:
            return f"ORT (opt {'on' if opt else 'off'}): {str(exc).strip().splitlines()[0][:160]}"
        bad = [i for i, o in enumerate(outs) if np.issubdtype(o.dtype, np.floating) and not np.isfinite(o).all()]
        if bad:
            return f"output {bad[0]} not finite (opt {'on' if opt else 'off'})"
    return None


def equal(ref, cand) -> tuple[bool, str]:
    worst = 0.0
    for r, c in zip(ref, cand):
        for a, b in zip(r, c):
            if a.shape != b.shape:
                return False, f"output shape {b.shape} != {a.shape}"
            if a.dtype.kind in "iub" and not np.array_equal(a, b):
                return False, "integer outputs differ"
            if a.dtype.kind == "f" and a.size:  # float reassociation only: error relative to the output's scale
                worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)))
    return worst < 1e-4, f"max |diff| / max |ref| {worst:.1e}"


# --- task metrics ---------------------------------------------------------------------------------------------

def _cos(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def j_cosine(ref, cand, fs, m):
    c = float(np.mean([_cos(r[0], k[0]) for r, k in zip(ref, cand)]))
    return c >= 0.99, f"cosine {c:.4f}"


def _allowed(n: int, share: float) -> int:
    return max(1, int(np.floor(n * share)))


def j_classify(ref, cand, fs, m):
    a = [int(np.argmax(r[0].reshape(-1))) == int(np.argmax(k[0].reshape(-1))) for r, k in zip(ref, cand)]
    miss = len(a) - sum(a)
    return miss <= _allowed(len(a), 0.05), f"top-1 agreement {sum(a)}/{len(a)}"


def _ctc(ids, blank) -> tuple:
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(int(i))
        prev = i
    return tuple(out)


def _ctc_judge(strings_ref, strings_cand):
    eq = sum(a == b for a, b in zip(strings_ref, strings_cand))
    n = len(strings_ref)
    empty = sum(len(s) == 0 for s in strings_ref)
    return n - eq <= _allowed(n, 0.1), f"CTC strings equal {eq}/{n} (FP32 empty: {empty})"


def j_ctc(ref, cand, fs, m):  # [1, T, C] probabilities, blank 0 (PP-OCR)
    dec = lambda o: _ctc(np.argmax(o[0][0], -1), 0)
    return _ctc_judge([dec(r) for r in ref], [dec(k) for k in cand])


def j_ctc_tnc(ref, cand, fs, m):  # [T, 1, C] logits, blank last (captcha-whisperer)
    dec = lambda o: _ctc(np.argmax(o[0][:, 0], -1), o[0].shape[-1] - 1)
    return _ctc_judge([dec(r) for r in ref], [dec(k) for k in cand])


def j_ctc_tnc0(ref, cand, fs, m):  # [T, 1, C] logits, blank 0 (ddddocr; its declared output shape [1, seqlen] is wrong)
    dec = lambda o: _ctc(np.argmax(o[0][:, 0], -1), 0)
    return _ctc_judge([dec(r) for r in ref], [dec(k) for k in cand])


def j_textdet(ref, cand, fs, m):
    inter = union = 0
    for r, k in zip(ref, cand):
        a, b = r[0] > 0.3, k[0] > 0.3
        inter += int(np.logical_and(a, b).sum())
        union += int(np.logical_or(a, b).sum())
    iou = inter / max(union, 1)
    return iou >= 0.85, f"text-map IoU {iou:.3f} ({union} px)"


def _iou(a, b):
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def _nms(boxes, scores, cls, thr=0.45):
    order, keep = np.argsort(-scores), []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        ious = _iou(boxes[i:i + 1], boxes[rest])[0]
        order = rest[(ious < thr) | (cls[rest] != cls[i])]
    return boxes[keep], cls[keep]


def _xywh(b):
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def dec_yolov8(o, conf=0.2):
    p = o[0][0].T  # [A, 4 + nc]
    s, c = p[:, 4:].max(1), p[:, 4:].argmax(1)
    k = s >= conf
    return _nms(_xywh(p[k, :4]), s[k], c[k])


def dec_yolox(o, conf=0.1, size=416):
    p = o[0][0].copy()
    grids, strides = [], []
    for st in (8, 16, 32):
        g = size // st
        yv, xv = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((g * g, 1), st))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    p[:, :2] = (p[:, :2] + grid) * stride
    p[:, 2:4] = np.exp(np.clip(p[:, 2:4], -10, 10)) * stride
    sc = p[:, 4:5] * p[:, 5:]
    s, c = sc.max(1), sc.argmax(1)
    k = s >= conf
    return _nms(_xywh(p[k, :4]), s[k], c[k])


def dec_picodet(o, conf=0.5, hw=(800, 608)):
    boxes, scores, classes = [], [], []
    for lvl, st in enumerate((8, 16, 32, 64)):
        sc, dist = o[lvl][0], o[lvl + 4][0]
        gh, gw = -(-hw[0] // st), -(-hw[1] // st)
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        ctr = (np.stack([xv, yv], -1).reshape(-1, 2) + 0.5) * st
        d = dist.reshape(-1, 4, 8)
        d = np.exp(d - d.max(-1, keepdims=True))
        d = (d / d.sum(-1, keepdims=True)) @ np.arange(8) * st
        boxes.append(np.concatenate([ctr - d[:, :2], ctr + d[:, 2:]], 1))
        scores.append(sc.max(1))
        classes.append(sc.argmax(1))
    b, s, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
    k = s >= conf
    return _nms(b[k], s[k], c[k], 0.5)


def _det_judge(decode: Callable):
    def judge(ref, cand, fs, m):
        found = total = 0
        for r, k in zip(ref, cand):
            (rb, rc), (kb, kc) = decode(r), decode(k)
            total += len(rb)
            if len(rb) and len(kb):
                iou = _iou(rb, kb) * (rc[:, None] == kc[None, :])
                found += int((iou.max(1) >= 0.5).sum())
        if total == 0:
            return j_cosine(ref, cand, fs, m)[0], "no FP32 detections; " + j_cosine(ref, cand, fs, m)[1]
        rec = found / total
        return rec >= 0.9, f"recall of FP32 detections {found}/{total} = {rec:.2f} @IoU0.5"
    return judge


def j_vad(ref, cand, fs, m):
    p = np.concatenate([r[0].ravel() for r in ref])
    q = np.concatenate([k[0].ravel() for k in cand])
    agree, mad = float(np.mean((p > 0.5) == (q > 0.5))), float(np.mean(np.abs(p - q)))
    return agree >= 0.95 and mad <= 0.05, f"decision agreement {agree:.3f}, mean |dp| {mad:.3f} (speech share {np.mean(p > 0.5):.2f})"


def j_embedding(ref, cand, fs, m):
    def pool(outs, f):
        o = outs[0].astype(np.float64)
        if o.ndim == 3 and "attention_mask" in f:
            w = f["attention_mask"][0].astype(np.float64)[:, None]
            return (o[0] * w).sum(0) / w.sum()
        return o.ravel()
    e = np.stack([pool(r, f) for r, f in zip(ref, fs)])
    g = np.stack([pool(k, f) for k, f in zip(cand, fs)])
    cos = float(np.mean([_cos(a, b) for a, b in zip(e, g)]))
    nn = lambda x: np.argmax((x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T - 2 * np.eye(len(x)), 1)
    agree = float(np.mean(nn(e) == nn(g)))
    return cos >= 0.98 and agree >= 0.9, f"cosine {cos:.4f}, nearest-neighbour agreement {agree:.2f}"


JUDGES = {"cosine": j_cosine, "classify": j_classify, "ctc": j_ctc, "ctc_tnc": j_ctc_tnc, "ctc_tnc0": j_ctc_tnc0,
          "textdet": j_textdet, "yolov8": _det_judge(dec_yolov8), "yolox": _det_judge(dec_yolox),
          "picodet": _det_judge(dec_picodet), "vad": j_vad, "score": j_vad, "embedding": j_embedding}


def speedup(ref_path, cand_path, f: dict, runs: int = 30) -> tuple[float, float, float]:
    """Batch 1, one thread, optimizations on, interleaved: (FP32 ms, int8 ms, FP32/int8) as medians."""
    a, b = session(ref_path), session(cand_path)
    na, nb = {i.name for i in a.get_inputs()}, {i.name for i in b.get_inputs()}
    fa, fb = {k: v for k, v in f.items() if k in na}, {k: v for k, v in f.items() if k in nb}
    for _ in range(3):
        a.run(None, fa), b.run(None, fb)
    ta, tb = [], []
    for _ in range(runs):
        t = time.perf_counter(); a.run(None, fa); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); b.run(None, fb); tb.append(time.perf_counter() - t)
    ma, mb = float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3
    return ma, mb, ma / mb
