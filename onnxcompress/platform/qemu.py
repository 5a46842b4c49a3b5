"""The qemu-user chroot backend: a Debian root filesystem of the target's architecture, with Python and
ONNX Runtime's official wheel for that architecture (the host's ORT version), run under qemu-user.

Set-up (once, cached under ~/.cache/onnxcompress/targets/<arch>):
  1. debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 (downloads, unpacks)
  2. chroot ... /debootstrap/debootstrap --second-stage (runs the target's dpkg through binfmt + qemu)
  3. pip download onnxruntime==<host's> --platform manylinux_2_28_aarch64 --only-binary=:all: (+ numpy),
     pip install --target <rootfs>/opt/onnxcompress/site (host pip, no code runs)
  4. a smoke run: the target's ORT imports and reports the host's version
The tree is built beside the cache (<dir>/rootfs.partial) and renamed when complete: an interrupted set-up
leaves no half target, and the next set-up starts that step over.

Runs: models and feeds are written into <rootfs>/tmp/<run>/, `target_runner.py` runs there under
`chroot <rootfs> qemu-aarch64-static /usr/bin/python3` with QEMU_CPU set to the CPU type (the CPU
features ORT's kernels see come from qemu's hwcaps), and the outputs come back as an npz.
/proc is not mounted in the chroot on purpose: ORT's cpuinfo would read the host's x86 /proc/cpuinfo and
crash; without it, it takes the features from the auxiliary vector qemu sets.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from ..errors import InputError, InternalError
from .base import Backend, ModelLike, Progress, TargetRun

DEFAULT_CACHE = Path.home() / ".cache" / "onnxcompress" / "targets"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"  # Debian 12: Python 3.11, glibc 2.36 (manylinux_2_28 fits)
QEMU = {"arm64": "qemu-aarch64-static"}
DEB_ARCH = {"arm64": "arm64"}
WHEEL_PLATFORM = {"arm64": "manylinux_2_28_aarch64"}
BINFMT = {"arm64": "qemu-aarch64"}
SITE = "opt/onnxcompress/site"
INSTALL = "apt-get install -y debootstrap qemu-user-static binfmt-support"


def host_ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


class QemuChroot(Backend):
    name = "qemu-chroot"

    def __init__(self, arch: str = "arm64", root: Optional[Path] = None) -> None:
        self.arch = arch
        self.dir = Path(root) if root is not None else DEFAULT_CACHE / arch
        self.rootfs = self.dir / "rootfs"
        self.marker = self.dir / "target.json"

    # -- what this machine has -------------------------------------------------------------------------
    def missing(self) -> list[str]:
        out = []
        if os.geteuid() != 0:
            out.append("root (debootstrap and chroot need it)")
        for tool in ("debootstrap", QEMU[self.arch], "chroot"):
            if shutil.which(tool) is None:
                out.append(tool)
        return out

    def available(self) -> Optional[str]:
        miss = self.missing()
        if not miss:
            return None
        return (f"the emulated {self.arch} target needs {', '.join(miss)}; as root run: {INSTALL} "
                f"(then: onnxcompress target setup {self.arch})")

    def _binfmt(self, say) -> None:
        """The second stage runs the target's dpkg and shell scripts: the kernel must hand arm64 binaries to qemu."""
        name = BINFMT[self.arch]
        mnt = Path("/proc/sys/fs/binfmt_misc")
        if not (mnt / "status").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mnt)], capture_output=True)
        entry = mnt / name
        if not entry.exists() or "enabled" not in entry.read_text():
            if shutil.which("update-binfmts"):
                subprocess.run(["update-binfmts", "--enable", name], capture_output=True)
        if not entry.exists() or "enabled" not in entry.read_text():
            raise InputError(f"the kernel does not run {self.arch} binaries through qemu (no binfmt entry {name}); "
                             f"as root run: {INSTALL} && update-binfmts --enable {name}")
        say(f"binfmt: {name} registered ({entry.read_text().splitlines()[1].strip()})")

    # -- cache -------------------------------------------------------------------------------------------
    def _read_marker(self) -> dict[str, Any]:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return {}

    def status(self, size: bool = True) -> dict[str, Any]:
        info = self._read_marker()
        host = host_ort_version()
        st: dict[str, Any] = {"arch": self.arch, "backend": self.name, "path": str(self.dir),
                              "host_onnxruntime": host, "ready": False}
        if not self.rootfs.is_dir() or not info:
            partial = (self.dir / "rootfs.partial").exists()
            st["why"] = ("an interrupted set-up left a partial tree" if partial else "not set up") + \
                f"; run: onnxcompress target setup {self.arch}"
            return st
        st.update({k: info.get(k) for k in ("onnxruntime", "python", "suite", "created", "cpu_features")})
        if size:
            st["size_bytes"] = _du(self.dir)
        if info.get("onnxruntime") != host:
            st["why"] = (f"the target has onnxruntime {info.get('onnxruntime')}, the host {host}; run: "
                         f"onnxcompress target setup {self.arch} (reinstalls the wheel)")
            return st
        st["ready"] = True
        return st

    def clean(self) -> bool:
        if not self.dir.exists():
            return False
        shutil.rmtree(self.dir)
        return True

    # -- set-up ------------------------------------------------------------------------------------------
    def setup(self, progress: Progress = None, force: bool = False) -> dict[str, Any]:
        say = progress or (lambda _m: None)
        problem = self.available()
        if problem:
            raise InputError(problem)
        if force:
            self.clean()
        st = self.status(size=False)
        if st["ready"]:
            say(f"{self.arch} target already set up in {self.dir} (onnxruntime {st['onnxruntime']}); nothing to do")
            return self.status()
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        step = lambda msg: say(f"[{time.perf_counter() - t0:5.0f} s] {msg}")  # noqa: E731
        if not self.rootfs.is_dir():
            self._binfmt(step)
            partial = self.dir / "rootfs.partial"
            if partial.exists():
                step(f"removing the partial tree of an interrupted set-up ({partial})")
                shutil.rmtree(partial)
            step(f"1/4 debootstrap --foreign: downloading Debian {SUITE} {self.arch} (minbase + python3)")
            self._cmd(["debootstrap", f"--arch={DEB_ARCH[self.arch]}", "--foreign", "--variant=minbase",
                       "--include=python3", SUITE, str(partial), MIRROR], "debootstrap (first stage)", step)
            shutil.copy2(shutil.which(QEMU[self.arch]), partial / "usr" / "bin" / QEMU[self.arch])
            step("2/4 debootstrap --second-stage: installing the packages under emulation (the slow step)")
            self._cmd(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"],
                      "debootstrap (second stage)", step)
            for deb in (partial / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                deb.unlink()
            partial.rename(self.rootfs)
        self._install_ort(step)
        step("4/4 smoke run: the target's onnxruntime")
        info = self._probe()
        if info.get("onnxruntime") != host_ort_version():
            raise InternalError(f"target set-up: the {self.arch} python imports onnxruntime {info.get('onnxruntime')}, "
                                f"not the host's {host_ort_version()}")
        info.update(suite=SUITE, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                    setup_seconds=round(time.perf_counter() - t0, 1))
        self.marker.write_text(json.dumps(info, indent=1))
        step(f"done: {self.arch} target in {self.dir} (python {info['python']}, onnxruntime {info['onnxruntime']})")
        return self.status()

    def _python_version(self) -> str:
        found = sorted(p.name[len("python"):] for p in (self.rootfs / "usr" / "bin").glob("python3.*")
                       if p.name[len("python"):].replace(".", "").isdigit())
        if not found:
            raise InternalError(f"target set-up: no python3 in {self.rootfs}/usr/bin; run: onnxcompress target clean {self.arch}")
        return found[-1]

    def _install_ort(self, step) -> None:
        version, py = host_ort_version(), self._python_version()
        wheels, site = self.dir / "wheels", self.rootfs / SITE
        plat = ["--platform", WHEEL_PLATFORM[self.arch], "--python-version", py, "--implementation", "cp",
                "--only-binary=:all:"]
        step(f"3/4 pip download onnxruntime=={version} numpy for {WHEEL_PLATFORM[self.arch]}, python {py}; "
             f"pip install --target /{SITE}")
        import sys

        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        self._cmd(pip + ["download", "-q", "-d", str(wheels), *plat, f"onnxruntime=={version}", "numpy"],
                  "pip download (the target's onnxruntime wheel)")
        if site.exists():
            shutil.rmtree(site)
        self._cmd(pip + ["install", "-q", "--no-index", "--find-links", str(wheels), "--target", str(site), *plat,
                         f"onnxruntime=={version}", "numpy"], "pip install --target")

    def _cmd(self, argv: list[str], what: str, say=None) -> None:
        """Run a set-up command; `say` gets debootstrap's "I: ..." lines as they come (minutes of progress)."""
        lines: list[str] = []
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                line = line.rstrip()
                if line.strip():
                    lines = (lines + [line])[-20:]
                if say and line.startswith("I: "):
                    say(f"  {line[3:]}")
        if proc.returncode != 0:
            tail = lines[-1][:300] if lines else f"exit code {proc.returncode}"
            raise InputError(f"target set-up failed in {what}: {tail}; fix it and run onnxcompress target setup "
                             f"{self.arch} again (it resumes)")

    # -- runs ----------------------------------------------------------------------------------------------
    def _env(self, cpu: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                "PYTHONPATH": f"/{SITE}", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "QEMU_CPU": cpu}

    def _exec(self, args: list[str], cpu: str) -> subprocess.CompletedProcess:
        # qemu named explicitly: runs need no binfmt entry (only the set-up's dpkg does)
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # resolved here: the run's PATH is the target's
        argv = [chroot, str(self.rootfs), f"/usr/bin/{QEMU[self.arch]}", "/usr/bin/python3", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=self._env(cpu))

    def _probe(self, cpu: str = "cortex-a72") -> dict[str, Any]:
        run = self.run_models({}, [], cpu, optimized=False)
        return run.info

    def _require_ready(self) -> None:
        problem = self.available()
        if problem:
            raise InputError(problem)
        st = self.status(size=False)
        if not st["ready"]:
            problem = self.available()
            raise InputError(f"the emulated {self.arch} target is not ready: {st['why']} (about 5 minutes and 0.5 GB, once)")

    def run_models(self, models: dict[str, ModelLike], feeds: Sequence[dict[str, np.ndarray]], cpu: str,
                   optimized: bool = True, progress: Progress = None) -> TargetRun:
        if models or feeds:
            self._require_ready()
        from ..io import load_raw, save_model

        tmp = self.rootfs / "tmp"
        work = Path(tempfile.mkdtemp(prefix="onnxcompress-run-", dir=tmp))
        inside = lambda p: "/" + str(Path(p).relative_to(self.rootfs))  # noqa: E731
        try:
            job: dict[str, Any] = {"models": {}, "optimized": {}, "feeds": None,
                                   "outputs": inside(work / "out.npz"), "info": inside(work / "info.json")}
            names: dict[str, list[str]] = {}
            for i, (key, m) in enumerate(models.items()):
                proto = m if isinstance(m, onnx.ModelProto) else load_raw(m, check=False)
                names[key] = [o.name for o in proto.graph.output]
                save_model(proto, work / f"m{i}.onnx")
                job["models"][key] = inside(work / f"m{i}.onnx")
                if optimized:
                    job["optimized"][key] = inside(work / f"m{i}.opt.onnx")
            if feeds:
                np.savez(work / "feeds.npz", **{f"{i}/{k}": np.asarray(v) for i, f in enumerate(feeds) for k, v in f.items()})
                job["feeds"] = inside(work / "feeds.npz")
            shutil.copy2(Path(__file__).with_name("target_runner.py"), work / "target_runner.py")
            (work / "job.json").write_text(json.dumps(job))
            if progress:
                progress(f"running {', '.join(models) or 'a probe'} on {self.arch}:{cpu} under qemu "
                         f"({len(feeds)} runs each)")
            r = self._exec([inside(work / "target_runner.py"), inside(work / "job.json")], cpu)
            if r.returncode != 0:
                lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
                tail = lines[-1][:300] if lines else f"exit code {r.returncode}"
                raise InputError(f"ONNX Runtime on the emulated {self.arch}:{cpu} failed: {tail}")
            result = TargetRun(info=json.loads((work / "info.json").read_text()))
            result.info["cpu"] = cpu
            with np.load(work / "out.npz") as z:
                for key in models:
                    result.outputs[key] = [{name: z[f"{key}/{i}/{j}"] for j, name in enumerate(names[key])}
                                           for i in range(len(feeds))]
            for key, path in job["optimized"].items():
                result.optimized[key] = onnx.load(str(self.rootfs / path.lstrip("/")))
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
