"""Atomic writes: a writer killed with SIGKILL mid-write leaves the old file or none, never a corrupt one."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WRITER = """
import sys
from pathlib import Path
from onnxcompress.io import atomic_write_bytes
target = Path(sys.argv[1])
i = 0
while True:
    i += 1
    atomic_write_bytes(target, bytes([i % 251]) * (8 << 20))  # 8 MiB of one byte value per version
    print(i, flush=True)
"""


def _intact(p: Path) -> bool:
    data = p.read_bytes()
    return len(data) == 8 << 20 and data.count(data[:1]) == len(data)


def test_sigkill_mid_write_never_leaves_a_corrupt_file(tmp_path):
    target = tmp_path / "model.onnx"
    for delay in (0.0, 0.003, 0.01, 0.02, 0.05):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        proc.stdout.readline()  # one full version is on disk; the next write is under way
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert target.exists()
        assert _intact(target), f"corrupt file after SIGKILL at +{delay}s: {hashlib.md5(target.read_bytes()).hexdigest()}"
