"""Peak memory of running a model: measured in a fresh process per model (ru_maxrss after loading the
model and running it, minus the process's RSS before the session existed), so models do not share
allocator state and the number is what a deployment process would see."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_memory_mb(model: str | Path, feed: dict[str, np.ndarray], provider: str = "cpu", threads: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "feed.npz", **feed)
        out = subprocess.run([sys.executable, "-m", "onnxcompress.evaluate.memory", str(model), str(Path(d) / "feed.npz"),
                              provider, str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout)


def _main(model: str, feed_path: str, provider: str, threads: int) -> None:
    import onnxruntime  # noqa: F401 - import cost is not the model's

    from .runner import make_session

    feed = dict(np.load(feed_path))
    before = _rss_mb()
    sess = make_session(model, provider, threads=threads)
    for _ in range(5):
        sess.run(None, feed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "model_mb": peak - before, "baseline_mb": before}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
