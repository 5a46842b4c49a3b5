"""`--target auto` reads the host CPU: conftest pins the detection for every other test; this file checks it."""
from onnxcompress.quant import target
from onnxcompress.quant.target import detect_target as real_detect  # bound before conftest's autouse pin


def test_detection_reads_cpu_flags_and_auto_follows_it(monkeypatch):
    assert real_detect() in {"vnni", "avx2", "arm", "generic"}
    for host, act, rr in [("vnni", "uint8", False), ("avx2", "uint8", True), ("arm", "int8", False),
                          ("generic", "uint8", True)]:
        monkeypatch.setattr(target, "detect_target", lambda host=host: host)
        c = target.choose("auto")
        assert (c.target, c.activation_type, c.reduce_range) == (host, act, rr)
        assert c.why.startswith(f"detected CPU: {host}")


def test_explicit_target_and_forced_settings_win():
    c = target.choose("avx2", reduce_range=False, activation_type="int8")
    assert (c.target, c.activation_type, c.reduce_range) == ("avx2", "int8", False)
    assert "--target avx2" in c.why and "reduce_range forced to False" in c.why
