import pytest

from omnistage.stages.worker.stage import StageRequest
from omnistage.stages.kinds.python import PythonStage, load_callable


def add(a, b):
    return {"sum": a + b, "diff": a - b}


def scaled(x, params):
    if x < 0:
        raise ValueError("negative input")
    return x * params["k"]


def test_calls_user_function_per_request_in_batches():
    engine = PythonStage(add, ("sum", "diff"), max_batch=2)
    for i in range(3):
        engine.add(StageRequest(f"r{i}", {"a": i, "b": 1}, {}))
    first = engine.step()
    assert [o.rid for o in first] == ["r0", "r1"] and engine.has_work()
    assert first[1].ports == {"sum": 2, "diff": 0} and first[1].finished
    engine.abort("r2")
    assert not engine.has_work()


def test_single_output_params_and_user_errors_fail_only_that_request():
    engine = PythonStage(scaled, ("y",), max_batch=4)
    engine.add(StageRequest("ok", {"x": 3}, {"k": 2}))
    engine.add(StageRequest("bad", {"x": -1}, {"k": 2}))
    ok, bad = engine.step()
    assert ok.ports == {"y": 6}
    assert bad.error == "ValueError: negative input" and bad.finished


def test_a_function_that_breaks_its_declared_outputs_fails_its_request_not_the_stage():
    stage = PythonStage(lambda a, b: {"summ": a + b} if a else {"sum": b, "diff": 0}, ("sum", "diff"), max_batch=4)
    stage.add(StageRequest("wrong", {"a": 1, "b": 1}, {}))
    stage.add(StageRequest("right", {"a": 0, "b": 1}, {}))
    wrong, right = stage.step()
    assert wrong.finished and "must return a dict with keys ['sum', 'diff'], got ['summ']" in wrong.error
    assert right.error is None and right.ports == {"sum": 1, "diff": 0}


def test_load_callable_by_import_path():
    assert load_callable("omnistage.examples_lib:shout")("hi.") == "HI!"
    with pytest.raises(ModuleNotFoundError):
        load_callable("no_such_module:fn")
