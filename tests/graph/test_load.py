import pytest

from omnistage.errors import GraphConfigError
from omnistage.graph.load import parse_graph

GOOD = """
name: g
models:
  lm: {path: "tiny:qwen2", dtype: float32}
stages:
  llm:
    kind: ar
    model: lm
    inputs: {messages: request.messages}
    outputs: {text: response.text}
    batching: {max_batch: 4}
    options: {max_tokens: 8}
"""


def test_good_graph_is_frozen_and_typed():
    config = parse_graph(GOOD)
    llm = config.stages["llm"]
    assert llm.batching.max_batch == 4 and llm.options.max_tokens == 8
    with pytest.raises(TypeError):
        config.stages["x"] = llm  # type: ignore[index]
    with pytest.raises(AttributeError):
        llm.kind = "python"  # type: ignore[misc]


@pytest.mark.parametrize("old,new,path,words", [
    ("max_batch: 4", "max_batch: four", "stages.llm.batching.max_batch", "expected an integer"),
    ("max_batch: 4", "max_batch: 0", "stages.llm.batching", "max_batch must be > 0"),
    ("dtype: float32", "dtype: float33", "models.lm.dtype", "did you mean \"float32\""),
    ("max_tokens: 8", "max_tokenz: 8", "stages.llm.options.max_tokenz", "did you mean \"max_tokens\""),
    ("kind: ar", "kind: ar\n    colour: red", "stages.llm.colour", "unknown key"),
])
def test_errors_name_path_value_and_expectation(old, new, path, words):
    with pytest.raises(GraphConfigError) as info:
        parse_graph(GOOD.replace(old, new))
    issue = info.value.issues[0]
    assert issue.path == path
    assert words in issue.message
    assert "line " in issue.message


def test_missing_required_and_bad_yaml():
    with pytest.raises(GraphConfigError, match="name: required key is missing"):
        parse_graph("stages: {}")
    with pytest.raises(GraphConfigError, match="not valid YAML"):
        parse_graph("name: [unclosed")
    with pytest.raises(GraphConfigError, match="expected a mapping"):
        parse_graph("- just\n- a list")
