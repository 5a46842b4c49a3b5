"""Loading and saving models: clear errors on bad files, atomic writes, never overwrite the input."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InputError

MAX_PROTOBUF = 2**31 - 1  # protobuf's hard limit; larger models need external data
MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    path = Path(path)
    _check_writable_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write into {path.parent} ({exc.strerror or exc}); choose another output folder") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write {path} ({exc.strerror or exc}); choose another output path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_writable_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"output folder {parent} is a file; choose an output path inside a folder")
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist; create it first or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable; choose another -o path")


def check_output_path(out: str | Path, *inputs: str | Path) -> Path:
    """Refuse to write over an input file, and check the folder before any work is done."""
    out = Path(out)
    for src in inputs:
        if src is not None and out.resolve() == Path(src).resolve():
            raise InputError(f"output path {out} is the input file; choose a different -o path (inputs are never modified)")
    if out.exists() and out.is_dir():
        raise InputError(f"output path {out} is a folder; give a file name such as {out / 'model.onnx'}")
    _check_writable_dir(out)
    return out


def load_model(path: str | Path, *, check: bool = True, load_external: bool = True,
               canonical: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, turning every kind of bad file into a one-line InputError, then pass it through
    the front door (frontdoor.canonicalize: Constant weights -> initializers, float64 -> float32, opset
    upgrade, NaN/inf policy). canonical=False returns the file's graph as it is (still checked)."""
    model = load_raw(path, check=check, load_external=load_external)
    if canonical:
        from .frontdoor import canonicalize

        model, _ = canonicalize(model, where=str(path), check_weights=check, inplace=True)
    elif check:
        check_finite_weights(model, path)
    return model


def load_raw(path: str | Path, *, check: bool = True, load_external: bool = True) -> onnx.ModelProto:
    """The file's model, parsed and (check=True) passed through onnx.checker; no front door."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file {p} not found; check the path")
    if p.is_dir():
        raise InputError(f"model path {p} is a folder; give the .onnx file inside it")
    if p.stat().st_size == 0:
        raise InputError(f"model file {p} is empty; re-export the model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is not an ONNX model (protobuf parse failed: {_first_line(exc)}); pass a valid .onnx file") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise InputError(f"{p} parses as protobuf but holds no ONNX graph; pass a valid .onnx file")
    if load_external and _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
            raise InputError(
                f"{p} refers to external data that cannot be read ({_first_line(exc)}); keep the .data file beside the model"
            ) from None
    opset = model_opset(model)
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"{p} uses opset {opset}, outside the supported {MIN_OPSET}..{MAX_OPSET}; re-export with --opset 17")
    if check:
        try:
            # Large models: check by path (the checker cannot take >2GB protos in memory).
            if is_big(model) or _uses_external_data(model):
                onnx.checker.check_model(str(p))
            else:
                onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            raise InputError(f"{p} fails onnx.checker ({_first_line(exc)}); fix or re-export the model") from None
    return model


def check_finite_weights(model: onnx.ModelProto, where: str | Path = "model") -> None:
    """NaN in a weight is refused; +-inf only where it would make a quantization scale non-finite
    (frontdoor.check_finite_weights has the policy)."""
    from .frontdoor import check_finite_weights as check_weights

    check_weights(model, str(where))


def is_big(model: onnx.ModelProto) -> bool:
    """Over protobuf's 2 GiB limit (upb cannot even compute the size of such a message: that means big)."""
    from google.protobuf.message import EncodeError

    if sum(tensor_nbytes(t) for t in model.graph.initializer) > MAX_PROTOBUF:
        return True
    try:
        return model.ByteSize() > MAX_PROTOBUF
    except EncodeError:
        return True


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Size of a tensor's data from its shape and type (touching raw_data would copy it)."""
    import numpy as np

    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
    n = 1
    for d in t.dims:
        n *= d
    return n * itemsize


def model_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(model)
    )


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save atomically. Models over 2 GB go to `<name>.data` beside the file (written first, then the .onnx).

    The large model is not copied: each big tensor's bytes are written to the data file, the tensor is
    pointed at it just long enough to serialize the (small) graph, then restored."""
    p = Path(path)
    _check_writable_dir(p)
    if not is_big(model) and not _uses_external_data(model):
        atomic_write_bytes(p, model.SerializeToString())
        return p
    data_name = p.name + ".data"
    fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=p.parent)
    moved: list[tuple[onnx.TensorProto, bytes]] = []
    try:
        os.chmod(tmp_data, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            offset = 0
            for t in _all_tensors(model):
                if t.data_location == onnx.TensorProto.EXTERNAL or tensor_nbytes(t) < 1024 or not t.HasField("raw_data"):
                    continue
                pad = (-offset) % 4096  # page-aligned offsets, as onnx writes them
                f.write(b"\0" * pad)
                offset += pad
                data = t.raw_data
                f.write(data)
                moved.append((t, data))
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
                offset += len(data)
            f.flush()
            os.fsync(f.fileno())
        header = model.SerializeToString()
        os.replace(tmp_data, p.parent / data_name)
        atomic_write_bytes(p, header)
    except OSError as exc:
        raise InputError(f"cannot write {p} ({exc.strerror or exc}); choose another output path") from None
    finally:
        Path(tmp_data).unlink(missing_ok=True)
        for t, data in moved:  # the caller's model is left as it was
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = data
    return p


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def model_size(path: str | Path) -> int:
    """Bytes on disk including an external data file written beside it."""
    p = Path(path)
    size = p.stat().st_size
    data = p.parent / (p.name + ".data")
    return size + (data.stat().st_size if data.exists() else 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
