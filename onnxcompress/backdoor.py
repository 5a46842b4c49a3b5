"""The back door: every model we write is checked first, and a model that fails is never written.

verify() runs onnx.checker (full check), loads the model in ONNX Runtime with graph optimizations off and
on, and runs one inference on a real sample (the caller's data, else synthetic inputs): outputs must equal
the reference model's for exact passes (simplify, prune --zeroed-only) and be finite (where the reference's
are) for the others. A failure is our bug: errors.InternalError (exit 3), one line naming the pass and the
first offending node. Only regressions count: a check the input model fails too is recorded, not blamed.
This is onnx_ir's `ensures()` for every written model.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx

from .errors import InternalError
from .passes.base import PassRecord, Skip

RTOL, ATOL = 1e-4, 1e-5  # exact passes: fp32 summation-order noise only (atol scaled by the output's magnitude)
SYNTHETIC_SIZES = (32, 224, 1600)  # dynamic non-batch dims tried after data.random_data's default
SIGNAL_ONLY = 224  # above this, only 1-D signals (rank <= 2 inputs) grow: an image at 1600 x 1600 costs GBs


class OrtFailure(RuntimeError):
    """ONNX Runtime refused to load or run a model (its pybind exceptions do not share a useful base class)."""


def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as s

    return (s.Fail, s.InvalidGraph, s.InvalidArgument, s.NotImplemented, s.RuntimeException, s.InvalidProtobuf,
            s.NoSuchFile, s.NoModel, s.EPFail, s.EngineError)


def session(model: onnx.ModelProto, optimize: bool = False):
    import onnxruntime as ort

    from .runtime.session import session_options

    # quiet: ORT's C++ warnings and errors would flood stderr; a failure is raised, not logged
    opts = session_options(optimize=optimize, quiet=True)
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise OrtFailure(_first_line(exc)) from None


def run_model(model_or_session, feeds: dict[str, np.ndarray], optimize: bool = False) -> dict[str, np.ndarray]:
    """Outputs by name (ORT, CPU, optimizations off unless `optimize`); OrtFailure when ORT refuses."""
    sess = session(model_or_session, optimize) if isinstance(model_or_session, onnx.ModelProto) else model_or_session
    import onnxruntime as ort

    names = [o.name for o in sess.get_outputs()]
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # probing shapes that do not fit prints ORT errors we already catch
    try:
        return dict(zip(names, sess.run(names, feeds, quiet)))
    except _ort_errors() as exc:
        raise OrtFailure(_first_line(exc)) from None


# -- inputs ---------------------------------------------------------------------------------------

def feeds_from(data, model: onnx.ModelProto, samples: int = 2) -> Optional[dict[str, np.ndarray]]:
    """One small run of the user's data (a data.Dataset) in the model's input layout (a fixed batch size
    respected): data.example_feed."""
    from .data import example_feed

    if data is None:
        return None
    return dict(example_feed(data, samples, model))


def synthetic_feeds(model: onnx.ModelProto, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Candidate random inputs, smallest first: data.random_data in the model's layout, then every dynamic
    non-batch dim at 32 and 224 (a CNN with five stride-2 stages needs more than 8 pixels), then 1-D signals
    at 1600 samples (an STFT front end needs a window's worth)."""
    from .data import example_feed, input_specs, model_layout, random_data
    from .errors import InputError

    specs = input_specs(model)
    try:
        layout = model_layout(model)
        yield dict(example_feed(random_data(layout, 1, seed=seed), 1, layout))
    except (IndexError, ValueError, InputError, StopIteration):
        pass  # a layout the shapes cannot settle: the plain shapes below still run most models
    rng = np.random.default_rng(seed)
    batch_param = specs[0].shape[0] if specs and specs[0].shape and isinstance(specs[0].shape[0], str) else None
    for size in SYNTHETIC_SIZES:
        feeds = {}
        for s in specs:
            free = [a for a, d in enumerate(s.shape) if not (isinstance(d, int) and d > 0)]
            state_like = len(free) == 1 and free[0] > 0  # [2, N, 128]: a fixed first dim, one free dim = the batch
            shape = []
            for axis, d in enumerate(s.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif axis == 0 or state_like or (batch_param is not None and d == batch_param):
                    shape.append(1)
                else:
                    shape.append(size if size <= SIGNAL_ONLY or len(s.shape) <= 2 else SIGNAL_ONLY)
            feeds[s.name] = _random(rng, tuple(shape), s.dtype)
        yield feeds


def _random(rng, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, shape).astype(dtype)
    return np.full(shape, "a", dtype=object)


def run_on_sample(model: onnx.ModelProto) -> tuple[Optional[dict], dict | str]:
    """(feeds, outputs) for the first synthetic input the model runs on, else (None, why not)."""
    try:
        sess = session(model)
    except OrtFailure as exc:
        return None, f"ONNX Runtime cannot load it: {exc}"
    why = "no synthetic input"
    for feeds in synthetic_feeds(model):
        try:
            return feeds, run_model(sess, feeds)
        except OrtFailure as exc:
            why = str(exc)
    return None, why


# -- comparisons ----------------------------------------------------------------------------------

def compare_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Optional[str]:
    """None when every reference output is matched (same shape; floats within RTOL / ATOL x magnitude,
    NaN/inf in the same places; others equal), else a short description of the first difference."""
    for name, r in ref.items():
        if name not in got:
            return f"output '{name}' is missing"
        g = got[name]
        if np.shape(r) != np.shape(g):
            return f"output '{name}' has shape {list(np.shape(g))}, expected {list(np.shape(r))}"
        if _differs(r, g):
            return f"output '{name}' differs ({_diff_text(r, g)})"
    return None


def _differs(r: np.ndarray, g: np.ndarray) -> bool:
    r, g = np.asarray(r), np.asarray(g)
    if r.size == 0:
        return False
    if np.issubdtype(r.dtype, np.floating) or np.issubdtype(g.dtype, np.floating):
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        fin = np.isfinite(r64)
        scale = max(1.0, float(np.abs(r64[fin]).max())) if fin.any() else 1.0
        close = np.isclose(g64, r64, rtol=RTOL, atol=ATOL * scale, equal_nan=True)
        return not bool(close.all())
    return not np.array_equal(r, g)


def _diff_text(r: np.ndarray, g: np.ndarray) -> str:
    try:
        d = np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64))
        d = d[np.isfinite(d)]
        return f"max abs diff {float(d.max()):.3g}" if d.size else "non-finite values differ"
    except (TypeError, ValueError):
        return "values differ"


def _nonfinite(outs: dict[str, np.ndarray], ref: Optional[dict[str, np.ndarray]]) -> Optional[str]:
    """The first output with NaN/inf where the reference (if any) is finite."""
    for name, v in outs.items():
        v = np.asarray(v)
        if not np.issubdtype(v.dtype, np.floating):
            continue
        bad = ~np.isfinite(v)
        if ref is not None and name in ref and np.shape(ref[name]) == v.shape:
            bad &= np.isfinite(np.asarray(ref[name], np.float64))
        if bad.any():
            return name
    return None


# -- finding the first offending node -------------------------------------------------------------

_NODE_PATTERNS = (r"Name:\s*'([^']+)'", r"node name:\s*([^),]+)", r"in node \(([^)]+)\)", r"Node \(([^)]+)\)",
                  r"Name: (\S+) OpType", r"node '([^']+)'")


def node_in_message(msg: str) -> Optional[str]:
    for pat in _NODE_PATTERNS:
        m = re.search(pat, msg)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return None


def _intermediates(model: onnx.ModelProto, feeds: dict) -> Optional[dict[str, np.ndarray]]:
    from .runtime.session import with_outputs

    names = [o for n in model.graph.node for o in n.output if o]
    try:
        return run_model(with_outputs(model, names), feeds)
    except OrtFailure:
        return None


def first_nonfinite_node(model: onnx.ModelProto, feeds: dict, ref_model: Optional[onnx.ModelProto] = None
                         ) -> Optional[str]:
    """The first node (graph order) whose float output has NaN/inf while its inputs are finite, and, when a
    reference is given, the same-named reference tensor is finite."""
    vals = _intermediates(model, feeds)
    if vals is None:
        return None
    ref_vals = _intermediates(ref_model, feeds) if ref_model is not None else None
    def newly_bad(o: str) -> bool:
        v = vals.get(o)
        if not isinstance(v, np.ndarray) or not np.issubdtype(v.dtype, np.floating) or np.isfinite(v).all():
            return False
        if ref_vals is None or o not in ref_vals or np.shape(ref_vals[o]) != v.shape:
            return True
        return _nonfinite({o: v}, {o: ref_vals[o]}) is not None

    bad = {o for o in vals if newly_bad(o)}
    for n in model.graph.node:
        outs = [o for o in n.output if o in bad]
        if outs and not any(i in bad for i in n.input):
            return n.name or f"{n.op_type} -> {outs[0]}"
    return None


def first_differing_node(model: onnx.ModelProto, reference: onnx.ModelProto, feeds: dict) -> Optional[str]:
    """The first node (graph order) whose output differs from the same-named reference tensor."""
    vals, ref_vals = _intermediates(model, feeds), _intermediates(reference, feeds)
    if vals is None or ref_vals is None:
        return None
    for n in model.graph.node:
        for o in n.output:
            if o in ref_vals and o in vals and np.shape(ref_vals[o]) == np.shape(vals[o]) and _differs(ref_vals[o], vals[o]):
                return n.name or f"{n.op_type} -> {o}"
    return None


# -- verify / save --------------------------------------------------------------------------------

def _fail(pass_name: str, what: str, node: Optional[str]) -> InternalError:
    at = f" at node '{node}'" if node else ""
    return InternalError(f"pass '{pass_name}' broke the model{at}: {_short(what)}; nothing was written "
                         "(a bug in onnxcompress, not in your input)")


def _short(msg: str) -> str:
    """The first of several shape-inference errors, at most 240 characters."""
    first = msg.find("(op_type:")
    second = msg.find("(op_type:", first + 1) if first >= 0 else -1
    if second > 0:
        msg = msg[:second].rstrip()
    return msg if len(msg) <= 240 else msg[:237] + "..."


def verify(model: onnx.ModelProto, *, pass_name: str, reference: Optional[onnx.ModelProto] = None,
           feeds: Optional[dict[str, np.ndarray]] = None, exact: bool = False,
           record: Optional[PassRecord] = None) -> PassRecord:
    """Check a model before it is written (see the module docstring). Raises InternalError on a regression;
    returns a record of what was checked and what was skipped and why (also merged into `record`)."""
    from .io import is_big

    rec = PassRecord(f"backdoor:{pass_name}")
    rec.stats.update(checker=False, ort_load=[], inference=None)
    try:
        if is_big(model):
            rec.skip("model", "over 2 GB: checked by path when written (save_verified); ORT load and inference skipped")
            return rec
        if reference is not None and is_big(reference):  # it cannot be serialized for ORT in memory
            rec.skip("reference", "the input model is over 2 GB: outputs checked finite, not compared")
            reference, exact = None, False
        _check(model, pass_name, reference, rec)
        sessions = _load(model, pass_name, reference, rec)
        _infer(model, sessions, pass_name, reference, feeds, exact, rec)
        return rec
    finally:
        if record is not None:  # merged once: on_best may verify the same record's model several times
            record.stats["backdoor"] = rec.stats
            record.skipped[:] = [s for s in record.skipped if not s.target.startswith("backdoor:")]
            record.skipped.extend(Skip(f"backdoor: {s.target}", s.reason) for s in rec.skipped)


def _check(model, pass_name, reference, rec) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
        rec.stats["checker"] = "full"
        return
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        msg = str(exc).strip().replace("\n", " ")[:300]
        if reference is None or _passes_full_check(reference):
            raise _fail(pass_name, f"onnx.checker: {msg}", node_in_message(msg)) from None
        rec.skip("checker", f"full check skipped: the input model fails it too ({msg[:150]})")
    try:
        onnx.checker.check_model(model)
        rec.stats["checker"] = "basic"
    except onnx.checker.ValidationError as exc:
        msg = str(exc).strip().replace("\n", " ")[:300]
        raise _fail(pass_name, f"onnx.checker: {msg}", node_in_message(msg)) from None


def _passes_full_check(model) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False


def _load(model, pass_name, reference, rec) -> dict[bool, object]:
    sessions = {}
    for optimize in (False, True):
        label = "optimizations " + ("on" if optimize else "off")
        try:
            sessions[optimize] = session(model, optimize)
            rec.stats["ort_load"].append(label)
        except OrtFailure as exc:
            if reference is None or _loads(reference, optimize):
                raise _fail(pass_name, f"ONNX Runtime cannot load it ({label}): {exc}", node_in_message(str(exc))) from None
            rec.skip("ort", f"ONNX Runtime load ({label}) skipped: the input model does not load either ({exc})")
    return sessions


def _loads(model, optimize) -> bool:
    try:
        session(model, optimize)
        return True
    except OrtFailure:
        return False


def _infer(model, sessions, pass_name, reference, feeds, exact, rec) -> None:
    if not sessions:
        rec.skip("inference", "no ONNX Runtime session to run")
        return
    ref_sess = None
    if reference is not None:
        try:
            ref_sess = session(reference)
        except OrtFailure as exc:
            rec.skip("reference", f"the input model does not load in ONNX Runtime ({exc}); outputs not compared")
    attempts = [feeds] if feeds is not None else list(synthetic_feeds(model))
    source = "your data" if feeds is not None else "synthetic input"
    why = "no input to run"
    for sample in attempts:
        ref_out = None
        if ref_sess is not None:
            try:
                ref_out = run_model(ref_sess, sample)
            except OrtFailure as exc:
                why = f"the input model does not run on the {source} either ({exc})"
                continue
        ran = False  # once the model ran on this sample, a failure with the other session is ours
        for optimize, sess in sessions.items():
            label = "optimizations " + ("on" if optimize else "off")
            try:
                out = run_model(sess, sample)
                ran = True
            except OrtFailure as exc:
                if ref_out is None and feeds is None and not ran:
                    why = f"it does not run on the synthetic input and there is no reference to tell ({exc})"
                    break
                raise _fail(pass_name, f"ONNX Runtime fails to run it ({label}): {exc}", node_in_message(str(exc))) from None
            if exact and ref_out is not None and not optimize:
                diff = compare_outputs(ref_out, out)
                if diff:
                    node = first_differing_node(model, reference, sample)
                    raise _fail(pass_name, f"outputs differ from the input model's on {source}: {diff}", node)
            bad = _nonfinite(out, ref_out)
            if bad:
                node = first_nonfinite_node(model, sample, reference)
                raise _fail(pass_name, f"output '{bad}' has NaN/inf on {source} ({label})", node)
        else:
            rec.stats["inference"] = source
            rec.stats["compared"] = "equal" if exact and ref_out is not None else "finite"
            if exact and ref_out is None:
                rec.skip("inference", "exact pass without a reference model: outputs only checked finite")
            return
    rec.skip("inference", f"not run: {why}")


def save_verified(model: onnx.ModelProto, path: str | Path, *, pass_name: str,
                  reference: Optional[onnx.ModelProto] = None, feeds: Optional[dict[str, np.ndarray]] = None,
                  exact: bool = False, record: Optional[PassRecord] = None) -> Path:
    """verify() then io.save_model() (atomic). Nothing is written when the check fails. A model over 2 GB
    is written into a hidden folder beside `path`, checked there by path (onnx.checker, full), then moved
    into place (its .data file first)."""
    from .io import is_big, save_model

    p = Path(path)
    if not is_big(model):
        verify(model, pass_name=pass_name, reference=reference, feeds=feeds, exact=exact, record=record)
        return save_model(model, p)
    rec = verify(model, pass_name=pass_name, record=record)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.verify.", dir=p.parent if str(p.parent) else "."))
    try:
        staged = save_model(model, tmp / p.name)
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            msg = str(exc).strip().replace("\n", " ")[:300]
            raise _fail(pass_name, f"onnx.checker: {msg}", node_in_message(msg)) from None
        rec.stats["checker"] = "full (by path)"
        if record is not None:
            record.stats["backdoor"] = rec.stats
        data = tmp / (p.name + ".data")
        if data.exists():
            os.replace(data, p.parent / data.name)
        os.replace(staged, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
