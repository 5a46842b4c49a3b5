"""Emulated edge targets: run ONNX Runtime on another instruction set (arm64 under qemu) to check int8
numerics and fusion where the model will run. base.py: the Backend interface and `--platform` specs;
qemu.py: the qemu-user chroot backend; check.py: validate / inspect on a target; target_runner.py runs
inside the target."""
from .base import CPUS, Backend, PlatformSpec, TargetRun, get_backend, parse_platform
from .check import DEFAULT_SAMPLES, StepCounter, inspect_on_platform, output_scales, validate_on_platform

__all__ = ["CPUS", "DEFAULT_SAMPLES", "Backend", "PlatformSpec", "StepCounter", "TargetRun", "get_backend",
           "inspect_on_platform", "output_scales", "parse_platform", "validate_on_platform"]
