"""passes.base: the typed pass record and the stage loop (run_stages)."""
import pytest

from onnxcompress.errors import InputError, PassError
from onnxcompress.passes.base import PassRecord, Skip, StageRecord, run_stages, split_step
from onnxcompress.progress import Callbacks, progress_of


def test_record_fields_are_typed_and_serialize():
    rec = PassRecord("simplify")
    rec.changed.append("conv1")
    rec.counts["Identity removed"] = 3
    rec.files.append("out/m.onnx")
    rec.skip("relu", "not foldable")
    assert rec.skipped == [Skip("relu", "not foldable")]
    assert rec.to_dict() == {"name": "simplify", "changed": ["conv1"], "counts": {"Identity removed": 3},
                             "files": ["out/m.onnx"], "skipped": [{"target": "relu", "reason": "not foldable"}],
                             "stats": {}}


class Step:
    def __init__(self, name, fail=None, quiet=False):
        self.name, self.fail, self.quiet = name, fail, quiet

    def __call__(self, model, ctx):
        if self.fail:
            raise self.fail
        ctx.append(self.name)
        return (model or 0) + 1, StageRecord(self.name, f"{self.name}.onnx")


def test_run_stages_composes_in_order_and_times_each():
    said, ctx = [], []
    model, recs = run_stages(None, [Step("a", quiet=True), Step("b"), Step("c")], ctx, say=said.append)
    assert model == 3 and ctx == ["a", "b", "c"] and said == ["b", "c"]
    assert [r.name for r in recs] == ["a", "b", "c"] and all(r.seconds >= 0 for r in recs)


def test_run_stages_names_the_failing_stage_and_keeps_library_errors():
    with pytest.raises(PassError, match=r"stage 'c' failed: KeyError: 'x' \(stages run before it: a, b\)"):
        run_stages(None, [Step("a"), Step("b"), Step("c", KeyError("x"))], [])
    with pytest.raises(InputError, match="bad"):  # keeps its exit code
        run_stages(None, [Step("a", InputError("bad"))], [])


def test_progress_of_every_shape():
    said, ticks = [], []
    p = progress_of(said.append)
    p.say("x")
    p.tick(1, 2, "y")  # a plain message callback drops ticks
    assert said == ["x"] and p.ticks is None
    both = progress_of(Callbacks(said.append, lambda *a: ticks.append(a)))
    both.tick(1, 2, "y")
    assert ticks == [(1, 2, "y")] and progress_of(None).ticks is None
    with pytest.raises(TypeError):
        progress_of(3)


def test_split_step_reads_the_sub_step_convention():
    skipped = [{"target": "c1", "reason": "reconstruct: too few samples"}, {"target": "c2", "reason": "depthwise"}]
    assert split_step(skipped, "reconstruct") == ([("c1", "too few samples")], [("c2", "depthwise")])
