"""Direct tests of the runtime base (runtime/session.py): sessions, thread budgets, reading tensors, datasets."""
import numpy as np
import onnxruntime as ort
import pytest

from onnxcompress.data import Dataset
from onnxcompress.errors import InputError
from onnxcompress.runtime.session import (default_threads, make_session, run_dataset, session_options,
                                          session_threads, with_outputs)

from conftest import make_data, run_ort, tiny_cnn


def test_session_threads_scopes_the_thread_budget_of_every_session_we_open():
    assert default_threads() is None and session_options().intra_op_num_threads == 0  # ORT's default
    with session_threads(1):
        assert default_threads() == 1
        opts = session_options(optimize=False)
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        assert session_options(threads=2).intra_op_num_threads == 2  # an explicit count wins
    assert default_threads() is None and session_options().intra_op_num_threads == 0
    assert session_options(quiet=True).log_severity_level == 4


def test_with_outputs_reads_intermediates_and_leaves_the_model_alone():
    model = tiny_cnn()
    before = model.SerializeToString()
    inner = [n.output[0] for n in model.graph.node][:2]
    copy = with_outputs(model, inner + inner[:1])  # duplicates collapse
    assert [o.name for o in copy.graph.output] == inner
    assert model.SerializeToString() == before
    x = make_data(4)["input"]
    sess = make_session(copy, optimize=False)
    got = sess.run(None, {"input": x})
    assert [g.shape[0] for g in got] == [4, 4]
    # the last intermediate feeds the rest of the graph: reading it changes nothing downstream
    np.testing.assert_array_equal(make_session(model, optimize=False).run(None, {"input": x})[0],
                                  run_ort(model, {"input": x})[0])


def test_run_dataset_equals_one_big_run_and_honours_the_limit():
    model = tiny_cnn()
    data = make_data(10)
    ds = Dataset([{"input": data["input"]}], None, "t")
    sess = make_session(model, optimize=False)
    out = run_dataset(sess, ds, batch_size=3)
    ref = run_ort(model, {"input": data["input"]})[0]
    name = model.graph.output[0].name
    np.testing.assert_allclose(out[name], ref, rtol=1e-6, atol=1e-6)
    assert run_dataset(sess, ds, batch_size=3, limit=4)[name].shape[0] == 4


def test_a_model_ort_cannot_load_is_one_line_input_error():
    model = tiny_cnn()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(InputError) as e:
        make_session(model)
    assert "cannot load" in str(e.value) and "\n" not in str(e.value)
