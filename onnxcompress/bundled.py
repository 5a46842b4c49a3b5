"""The files the repository ships for the demo (`onnxcompress demo`): the Fashion-MNIST model and its
calibration and validation arrays. They exist in a clone (pip install -e .), not in a wheel."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO / "models" / "fashion_net.onnx"
BUNDLED_CALIB = REPO / "calibration" / "fashion_calib.npz"
BUNDLED_VAL = REPO / "calibration" / "fashion_val.npz"


def bundled_files() -> tuple[Path, Path, Path]:
    """(model, calibration, validation); InputError (exit 2) naming the first one missing."""
    for p in (BUNDLED_MODEL, BUNDLED_CALIB, BUNDLED_VAL):
        if not p.is_file():
            raise InputError(f"bundled file {p} is missing; run the demo from a clone of the repository (pip install -e .)")
    return BUNDLED_MODEL, BUNDLED_CALIB, BUNDLED_VAL
