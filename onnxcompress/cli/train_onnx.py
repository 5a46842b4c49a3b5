"""`prune-distill MODEL.onnx`: the ONNX source branch of prune-distill (train/onnx_distill.py).

Flags are parsed into PruneConfig / TrainConfig / DataConfig here; the library does the work."""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Optional

import click

from ..config import PruneConfig, TrainConfig
from ..errors import ConfigError, InputError


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'30m', '90s', '1h', '1800' -> seconds; None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--time-budget '{text}' is not a duration; use e.g. 30m, 90s, 1h or seconds (1800)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def run_onnx(source: str, output: str, data: str, val: Optional[str], cfg: TrainConfig, target_macs: Optional[float],
             calibration_samples: int, data_flags: dict, as_json: bool, student: Optional[str] = None) -> None:
    from ..data import model_layout
    from ..io import check_output_path, load_model
    from ..backdoor import feeds_from, save_verified
    from ..train.onnx_distill import prune_distill_onnx
    from .common import emit
    from .dataopts import build_data_config, open_data

    if cfg.epochs < 1 and cfg.time_budget is None:
        raise InputError("prune-distill of an ONNX model trains: give --epochs >= 1 or --time-budget")
    prune = PruneConfig(enabled=True, ratio=0.0 if target_macs is not None else cfg.ratio, target_macs=target_macs,
                        criterion=cfg.criterion, align=cfg.align, min_channels=cfg.min_channels,
                        calibration_samples=calibration_samples)
    prune.validate()
    if target_macs is None and cfg.ratio == 0 and student is None:
        raise InputError("nothing to prune: give --target-macs (e.g. 0.7), --ratio > 0 or --student PRUNED.onnx")
    out = check_output_path(output, source, data, val, student)
    model = load_model(source)
    given = load_model(student) if student else None
    layout = model_layout(model)
    dcfg = build_data_config(**data_flags)
    say = None if as_json else (lambda msg: click.echo(msg, err=True))
    train = open_data(data, layout, dcfg, model, say)
    held = open_data(val, layout, dataclasses.replace(dcfg, samples=None), model, say) if val else None
    trained, rec = prune_distill_onnx(model, train, prune, cfg, val=held, show=say,
                                      calibration_samples=calibration_samples, student=given)
    save_verified(trained, out, pass_name="prune-distill", feeds=feeds_from(held or train, trained), record=rec)
    s, d = rec.stats, rec.stats["distill"]
    first = d["history"][0]
    lines = [f"wrote {out} (written weights vs the torch student: max relative error {d['max_error_vs_torch']:.1e})",
             f"MACs {s['macs_before']:,} -> {s['macs_after']:,} ({s['macs_after'] / max(1, s['macs_before']):.2f}x); "
             f"params {s['params_before']:,} -> {s['params_after']:,}" if s.get("macs_before") else
             f"params {s['params_before']:,} -> {s['params_after']:,}",
             f"agreement with the original on {d['val_samples']} held-out samples: pruned {first['val_agreement']:.2f}% "
             f"(KL {first['val_kl']:.4f}) -> distilled {d['best_agreement']:.2f}% (KL {d['best_kl']:.4f}); "
             f"{d['samples_seen']:,} samples in {d['seconds']:.0f} s"]
    if not as_json:
        sys.stderr.flush()
    emit(as_json, rec.to_dict(), "\n".join(lines))
