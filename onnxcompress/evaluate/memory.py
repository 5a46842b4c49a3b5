"""Peak memory of running a model, measured in a fresh Python process per model and provider.

How: the child imports onnxruntime and loads the feed, then resets the kernel's peak-RSS counter
(`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), notes VmRSS, creates the session and runs it; the
peak is VmHWM from /proc/self/status. `model_mb` = peak - RSS before the session (what loading and
running the model costs); `peak_rss_mb` = the whole process's peak. Where /proc is missing or the reset
is refused, the peak falls back to resource.getrusage().ru_maxrss (which then includes import spikes);
`method` says which was used. No psutil needed.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np


def _status_mb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(model: str | Path, feed: dict[str, np.ndarray], provider: str = "cpu", threads: int = 1,
                   runs: int = 5) -> dict:
    """{"peak_rss_mb", "model_mb", "baseline_mb", "method"}, or {"error": "..."} when the child failed."""
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "feed.npz", **feed)
        out = subprocess.run([sys.executable, "-m", "onnxcompress.evaluate.memory", str(model), str(Path(d) / "feed.npz"),
                              provider, str(threads), str(runs)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(model: str, feed_path: str, provider: str, threads: int, runs: int) -> None:
    import onnxruntime  # noqa: F401 - import cost is not the model's

    from ..runtime.session import make_session

    with np.load(feed_path) as z:
        feed = {k: z[k] for k in z.files}
    hwm = _reset_peak() and _status_mb("VmHWM") is not None
    before = _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sess = make_session(model, provider, threads=threads)
    for _ in range(runs):
        sess.run(None, feed)
    peak = _status_mb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak, 2), "model_mb": round(max(peak - before, 0.0), 2),
                      "baseline_mb": round(before, 2), "method": "VmHWM after clear_refs" if hwm else "ru_maxrss"}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
