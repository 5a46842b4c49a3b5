"""Sweeps: a grid of PipelineConfig values over many models, one `convert` job per (model, config), on a local
process pool or a Ray cluster; resumable (finished jobs are skipped), merged into one report.

    from onnxcompress.sweep import read_grid, run_sweep
    report = run_sweep(["a.onnx", "b.onnx"], read_grid("grid.yaml"), "out/", calibration="calib.npz")
"""
from __future__ import annotations

from .grid import check_grid, expand, read_grid
from .jobs import JobSpec, run_job
from .run import SweepProgress, plan, run_sweep, with_gates

__all__ = ["JobSpec", "SweepProgress", "check_grid", "expand", "plan", "read_grid", "run_job", "run_sweep", "with_gates"]
