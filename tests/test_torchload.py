import pickle

import pytest

torch = pytest.importorskip("torch")

from onnxcompress.errors import InputError  # noqa: E402
from onnxcompress.torchload import load_module, load_weights, parse_input_spec, resolve_factory  # noqa: E402

FACTORY = """
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3))
def not_a_module():
    return 3
"""


def test_parse_input_spec():
    s = parse_input_spec("input:Nx3x224x224")
    assert s.name == "input" and s.shape == (1, 3, 224, 224) and s.dynamic == (0,) and s.dtype == "float32"
    s = parse_input_spec("ids:1xseq=16:int64")
    assert s.shape == (1, 16) and s.dynamic == (1,) and s.dtype == "int64"


@pytest.mark.parametrize("bad", ["input", "input:", "input:1x0x3", "input:1x3:complex7", "input:1x-3", ":1x3"])
def test_bad_input_specs(bad):
    with pytest.raises(InputError, match="input spec"):
        parse_input_spec(bad)


def test_factory_from_file_and_weights(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text(FACTORY)
    m = load_module(f"{f}:build")
    w = tmp_path / "w.pt"
    sd = {k: v * 0 + 1 for k, v in m.state_dict().items()}
    torch.save(sd, w)
    m2 = load_module(f"{f}:build", w)
    assert torch.equal(m2[0].weight, torch.ones(3, 4))


@pytest.mark.parametrize("factory, needle", [
    ("nofactory", "has no ':'"),
    ("no_such_module_xyz:build", "cannot import module"),
    ("missing.py:build", "not found"),
    ("json:nothing_here", "not a callable"),
])
def test_bad_factories(factory, needle):
    with pytest.raises(InputError, match=needle):
        resolve_factory(factory)


def test_factory_returning_non_module(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(FACTORY)
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        load_module(f"{f}:not_a_module")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(InputError, match="weights_only"):
        load_weights(p)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_weights_named(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(FACTORY)
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_module(f"{f}:build", tmp_path / "w.pt")


def test_dim_names_and_default_batch():
    s = parse_input_spec("ids:Nxseq=16:int64")
    assert s.dynamic == (0, 1) and s.dim_names == ("N", "seq") and s.shape == (1, 16)
    s = parse_input_spec("x:1x3x8x8")
    assert s.dynamic == (0,) and s.dim_names == ("batch",)
    with pytest.raises(InputError, match="dimension 'seq=0'"):
        parse_input_spec("ids:1xseq=0")


def test_safetensors_torchscript_and_exported_program(tmp_path):
    from safetensors.torch import save_file

    from onnxcompress.torchload import load_any

    f = tmp_path / "mymodel.py"
    f.write_text(FACTORY)
    m = load_module(f"{f}:build")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 4)
    assert torch.equal(load_any(f"{f}:build", tmp_path / "w.safetensors")(x), m(x))
    torch.jit.save(torch.jit.trace(m, x), str(tmp_path / "m.ts"))
    assert torch.allclose(load_any(str(tmp_path / "m.ts"))(x), m(x))
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "m.pt2"))
    assert torch.allclose(load_any(str(tmp_path / "m.pt2"))(x), m(x))
    with pytest.raises(InputError, match="carries its own weights"):
        load_any(str(tmp_path / "m.ts"), tmp_path / "w.safetensors")
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a torch.export program"):
        load_any(str(tmp_path / "bad.pt2"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="not a valid safetensors"):
        load_weights(tmp_path / "bad.safetensors")
