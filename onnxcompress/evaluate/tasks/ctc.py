"""CTC sequence recognition: greedy decoding, then the decoded strings are compared.

Output [N, T, C] (per time step class scores, logits or probabilities; the runner gives every output
batch first, so a time-major [T, N, C] export arrives as [N, T, C]). Greedy decode:
argmax per step, collapse repeats, drop the blank (index `blank`, 0 by default). Sequence accuracy
(% of samples whose decoded sequence equals FP32's) and character agreement (1 - edit distance /
the longer length, averaged). With labels [N, L] (class indices padded with negative values): the
sequence accuracy of both models against them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import InputError
from .base import Outputs, TaskMetric, percent

CHAR_AGREEMENT_DEFAULT = 98.0  # % (1 - normalized edit distance against FP32, averaged)


def greedy_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    ids = scores.argmax(-1)
    keep = np.ones_like(ids, dtype=bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep &= ids != blank
    return [tuple(int(v) for v in row[k]) for row, k in zip(ids, keep)]


def edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Levenshtein distance (sequences are short: a row-by-row DP beats a dependency)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class CTC(TaskMetric):
    name = "ctc"
    words = {"sequence_accuracy": "sequence agreement with FP32", "char_agreement": "character agreement with FP32",
             "accuracy": "sequence accuracy against the labels", "accuracy_drop": "sequence accuracy drop"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.n = 0
        self.same = 0
        self.chars = 0.0
        self.labelled = 0
        self.correct = {"reference": 0, "candidate": 0}

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        r, c = ref[self.output], cand[self.output]
        if r.ndim != 3 or r.shape[2] < 2:
            raise InputError(f"ctc needs an [N, T, classes] output; '{self.output}' has shape {list(r.shape)}; "
                             "choose --task generic or the right --task-output")
        if self.config.blank >= r.shape[2]:
            raise InputError(f"the CTC blank index {self.config.blank} is not a class of '{self.output}' "
                             f"({r.shape[2]} classes); set the task's blank")
        rs, cs = greedy_decode(r, self.config.blank), greedy_decode(c, self.config.blank)
        for a, b in zip(rs, cs):
            self.n += 1
            self.same += a == b
            self.chars += 1.0 - edit_distance(a, b) / max(len(a), len(b), 1)
        if labels is None:
            return
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            self.unavailable["accuracy"] = "the labels are not class-index sequences [N, L] (padded with -1)"
            return
        for i, lab in enumerate(labels):
            truth = tuple(int(v) for v in lab if v >= 0)
            self.labelled += 1
            self.correct["reference"] += rs[i] == truth
            self.correct["candidate"] += cs[i] == truth

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.n:
            out["sequence_accuracy"] = percent(self.same, self.n)
            out["char_agreement"] = percent(self.chars, self.n)
        if self.labelled:
            out["reference_accuracy"] = percent(self.correct["reference"], self.labelled)
            out["accuracy"] = percent(self.correct["candidate"], self.labelled)
            out["accuracy_drop"] = out["reference_accuracy"] - out["accuracy"]
        else:
            self.unavailable.setdefault("accuracy", "the data has no label sequences")
            self.unavailable["accuracy_drop"] = self.unavailable["accuracy"]
        return out

    def primary(self, labels: bool) -> str:
        return "char_agreement"

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        return [("char_agreement", ">=", CHAR_AGREEMENT_DEFAULT)]
