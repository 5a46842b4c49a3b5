"""Loading a user's torch model: a factory (`pkg.module:fn` or `path/to/file.py:fn`) plus weights
(`.pt`/`.pth` via torch.load(weights_only=True), or `.safetensors`), and input specs from strings."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from .errors import InputError
from .export import TensorSpec, import_torch

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool", "uint8", "int8")


def parse_input_spec(text: str) -> TensorSpec:
    """`NAME:1x3x224x224[:dtype]`. A dim written as a name (`N`, `batch`, `seq`) is dynamic and keeps the
    name (inputs sharing a name share the size); `seq=16` sets the example size (default 1 for axis 0,
    else 8). With no named dim, axis 0 is dynamic as `batch` (export --static-batch turns that off)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InputError(f"input spec '{text}' does not parse; write NAME:1x3x224x224 or NAME:1x128:int64")
    name, shape_s = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in _DTYPES:
        raise InputError(f"input spec '{text}': unknown dtype '{dtype}'; use one of {', '.join(_DTYPES)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:/-]*", name):
        raise InputError(f"input spec '{text}': input name '{name}' is not valid; use letters, digits and _")
    dims, dynamic, names = [], [], []
    for i, d in enumerate(shape_s.split("x")):
        if re.fullmatch(r"[0-9]+", d) and int(d) > 0:
            dims.append(int(d))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(=[1-9][0-9]*)?", d):
            dims.append(int(d.split("=")[1]) if "=" in d else (1 if i == 0 else 8))
            dynamic.append(i)
            names.append(d.split("=")[0])
        else:
            raise InputError(f"input spec '{text}': dimension '{d}' is not a positive integer or a name; write e.g. 1x3x224x224 or Nx3x224x224")
    if not dynamic:
        return TensorSpec(name, tuple(dims), dtype, (0,), ("batch",))
    return TensorSpec(name, tuple(dims), dtype, tuple(dynamic), tuple(names))


def resolve_factory(factory: str):
    """Return the callable named by `pkg.module:fn` or `path/to/file.py:fn`."""
    if ":" not in factory:
        raise InputError(f"factory '{factory}' has no ':'; write package.module:function or path/to/file.py:function")
    mod_name, _, fn_name = factory.rpartition(":")
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise InputError(f"factory file {path} not found; check the path in '{factory}'")
        spec = importlib.util.spec_from_file_location(f"_onnxcompress_factory_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code: report its error in one line
            raise InputError(f"importing {path} failed ({type(exc).__name__}: {exc}); fix the file") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise InputError(f"cannot import module '{mod_name}' ({exc}); check the factory '{factory}' and PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"'{fn_name}' is not a callable in {mod_name}; check the factory '{factory}'")
    return fn


def load_weights(path: str | Path) -> dict:
    """A state_dict from `.safetensors` or a pickle loaded with weights_only=True (no code runs)."""
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file {p} not found; check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{p} is not a valid safetensors file ({exc}); re-save the weights") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError/...; all mean "refused"
        what = "it holds code or objects other than tensors" if "Unsupported" in str(exc) or "GLOBAL" in str(exc) \
            else f"{type(exc).__name__}"
        raise InputError(f"{p} cannot be loaded safely with torch.load(weights_only=True) ({what}); "
                         "save a plain state_dict (torch.save(model.state_dict(), path)) or use .safetensors") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"{p} holds a {type(obj).__name__}, not a state_dict; save model.state_dict()")
    return obj


def load_module(factory: str, weights: Optional[str | Path] = None):
    """Build the module from the factory and load weights strictly (missing/unexpected keys are errors)."""
    torch = import_torch()
    fn = resolve_factory(factory)
    try:
        module = fn()
    except Exception as exc:  # noqa: BLE001 - user code
        raise InputError(f"factory '{factory}' raised {type(exc).__name__}: {exc}; it must build the model with no arguments") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"factory '{factory}' returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        sd = load_weights(weights)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise InputError(f"weights {weights} do not fit the model from '{factory}': {str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    return module.eval()


def load_any(source: str, weights: Optional[str | Path] = None):
    """A factory string (`pkg.module:fn`, `file.py:fn`), a TorchScript file, or a torch.export `.pt2`."""
    torch = import_torch()
    p = Path(source)
    if p.suffix == ".pt2":
        if not p.is_file():
            raise InputError(f"exported program {p} not found; check the path")
        try:
            return torch.export.load(str(p)).module()
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
            raise InputError(f"{p} is not a torch.export program ({type(exc).__name__}); save it with torch.export.save") from None
    if p.suffix in (".ts", ".torchscript", ".jit") or (p.is_file() and ":" not in source):
        if not p.is_file():
            raise InputError(f"TorchScript file {p} not found; check the path")
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{p} is not a TorchScript archive ({type(exc).__name__}); save it with torch.jit.save, "
                             "or pass a factory file.py:function with --weights") from None
        if weights:
            raise InputError("--weights goes with a factory; a TorchScript file carries its own weights")
        return module.eval()
    return load_module(source, weights)
