"""The interface every emulated (or remote) target implements, and the `--platform` spec.

A backend runs ONNX Runtime on another instruction set: it is set up once (cached), then runs models on
feeds and hands back the outputs, and the graph ORT optimizes there (`optimized_model_filepath`). The
qemu-chroot backend (qemu.py) is the first; a docker/podman `--platform linux/arm64` or an armv7 chroot
implements the same five methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import onnx

from ..errors import ConfigError

Progress = Optional[Callable[[str], None]]
ModelLike = Union[str, Path, onnx.ModelProto]

# arch -> the CPU types its emulator offers, the first the default (cortex-a76: Raspberry Pi 5 / current
# phones, with the dot-product instructions; cortex-a72: Raspberry Pi 4, without; max: every feature qemu
# has, i8mm included)
CPUS: dict[str, tuple[str, ...]] = {"arm64": ("cortex-a76", "cortex-a72", "max")}
ARCH_ALIASES = {"arm64": "arm64", "aarch64": "arm64"}


@dataclass(frozen=True)
class PlatformSpec:
    arch: str
    cpu: str

    def __str__(self) -> str:
        return f"{self.arch}:{self.cpu}"


def parse_platform(text: str) -> PlatformSpec:
    """'arm64' / 'arm64:cortex-a72' / 'aarch64:max' -> PlatformSpec; anything else is one ConfigError line."""
    arch, _, cpu = str(text).strip().lower().partition(":")
    known = ", ".join(f"{a}[:{'|'.join(c)}]" for a, c in CPUS.items())
    if arch not in ARCH_ALIASES:
        raise ConfigError(f"--platform '{text}' is not a known target; use {known}")
    arch = ARCH_ALIASES[arch]
    cpu = cpu.strip() or CPUS[arch][0]
    if cpu not in CPUS[arch]:
        raise ConfigError(f"--platform '{text}': CPU type '{cpu}' is not one of {', '.join(CPUS[arch])}; "
                          f"e.g. --platform {arch}:{CPUS[arch][1]}")
    return PlatformSpec(arch, cpu)


@dataclass
class TargetRun:
    """What one emulator start returns: per model, the outputs of every feed (in order), and the
    graphs ORT optimized there; `info`: the target's ORT version, machine and CPU features."""

    outputs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    optimized: dict[str, onnx.ModelProto] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One emulated target. `available()` says what is missing (with the install command) before any work."""

    arch: str = ""
    name: str = ""

    @abstractmethod
    def available(self) -> Optional[str]:
        """None when this machine can set the target up and run it; else one line: what is missing and the fix."""

    @abstractmethod
    def status(self, size: bool = True) -> dict[str, Any]:
        """{"ready": bool, "path", "onnxruntime", "python", "size_bytes" (size=True), "why" (when not ready)}."""

    @abstractmethod
    def setup(self, progress: Progress = None, force: bool = False) -> dict[str, Any]:
        """Build the target once and cache it (idempotent: a ready target is left as it is); returns status()."""

    @abstractmethod
    def clean(self) -> bool:
        """Remove the cached target; False when there was none."""

    @abstractmethod
    def run_models(self, models: dict[str, ModelLike], feeds: Sequence[dict[str, np.ndarray]], cpu: str,
                   optimized: bool = True, progress: Progress = None) -> TargetRun:
        """Run each model on every feed on CPU type `cpu` (one intra-op thread) in one emulator start;
        `optimized`: also hand back the graph ORT optimized there for each model."""

    def run(self, model: ModelLike, feeds: Sequence[dict[str, np.ndarray]], cpu: str) -> list[dict[str, np.ndarray]]:
        """The outputs of `model` on every feed, on the target."""
        return self.run_models({"model": model}, feeds, cpu, optimized=False).outputs["model"]

    def optimized_model(self, model: ModelLike, cpu: str) -> onnx.ModelProto:
        """The graph ORT writes on the target after its optimizations (what its kernels run)."""
        return self.run_models({"model": model}, [], cpu, optimized=True).optimized["model"]


def get_backend(arch: str, root: Optional[Path] = None) -> Backend:
    """The backend for `arch` (today: the qemu chroot); `root` overrides the cache directory."""
    from .qemu import QemuChroot

    arch = ARCH_ALIASES.get(arch.lower(), arch.lower())
    if arch not in CPUS:
        raise ConfigError(f"target '{arch}' is not known; targets: {', '.join(CPUS)}")
    return QemuChroot(arch, root)
