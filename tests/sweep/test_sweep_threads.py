"""A job's sessions get the CPUs given to its worker as ORT intra-op threads (runtime.session.session_threads)."""
from __future__ import annotations

from conftest import tiny_cnn
from onnxcompress.runtime.session import default_threads, make_session, session_threads


def test_session_threads_is_scoped():
    model = tiny_cnn()
    assert default_threads() is None
    with session_threads(1):
        assert default_threads() == 1
        assert make_session(model).get_session_options().intra_op_num_threads == 1
        assert make_session(model, threads=2).get_session_options().intra_op_num_threads == 2  # explicit wins
    assert default_threads() is None
    assert make_session(model).get_session_options().intra_op_num_threads == 0  # ORT's default outside
