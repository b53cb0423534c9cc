"""The ar stage in-process (no sockets): batched greedy equals HF generate one at a time."""
import pytest

from omnistage.checkpoints import resolve_model
from omnistage.errors import RequestRejected
from omnistage.graph.compile import compile_file
from omnistage.stages.kinds.ar import build
from omnistage.stages.worker.stage import StageRequest

PROMPTS = ["Hello there", "Tell me a story about a cat who learned to sing and dance all night long",
           "Colors", "What is the weather like today? It is sunny and warm."]


@pytest.fixture(scope="module")
def stage(qwen2_dir):
    from tests.conftest import ROOT
    plan = compile_file(ROOT / "examples" / "text_chat.yaml", resolve_model)
    return build(plan.stages["llm"], "cpu")


def _drain(stage):
    text, tokens, meta = {}, {}, {}
    while stage.has_work():
        for out in stage.step():
            text[out.rid] = text.get(out.rid, "") + out.ports["text"]
            tokens.setdefault(out.rid, []).extend(out.ports["tokens"])
            if out.finished:
                meta[out.rid] = out.meta
    return text, tokens, meta


def test_batched_greedy_equals_hf_generate(stage, hf_greedy):
    for i, p in enumerate(PROMPTS):
        stage.add(StageRequest(f"r{i}", {"messages": [{"role": "user", "content": p}]},
                                {"temperature": 0, "max_tokens": 20}))
    text, tokens, meta = _drain(stage)
    for i, p in enumerate(PROMPTS):
        want_tokens, want_text = hf_greedy(messages=[{"role": "user", "content": p}], max_tokens=20)
        eos_trimmed = tokens[f"r{i}"][:len(want_tokens)]
        assert eos_trimmed == want_tokens, p
        assert text[f"r{i}"] == want_text
        assert meta[f"r{i}"]["completion_tokens"] == len(want_tokens)


def test_prompt_input_and_stop_strings(stage, hf_greedy):
    _, want_text = hf_greedy(prompt="The quick brown fox", max_tokens=12)
    stage.add(StageRequest("p", {"prompt": "The quick brown fox"}, {"temperature": 0, "max_tokens": 12}))
    text, _, _ = _drain(stage)
    assert text["p"] == want_text
    stop = want_text[3:5]
    stage.add(StageRequest("s", {"prompt": "The quick brown fox"},
                            {"temperature": 0, "max_tokens": 12, "stop": [stop]}))
    text, _, meta = _drain(stage)
    assert text["s"] == want_text[:want_text.find(stop)]
    assert meta["s"]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible_and_abort_forgets(stage):
    params = {"temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 10, "ignore_eos": True}
    stage.add(StageRequest("a", {"prompt": "Hello"}, params))
    alone, _, _ = _drain(stage)
    stage.add(StageRequest("b", {"prompt": "Hello"}, params))
    stage.add(StageRequest("c", {"prompt": "Numbers"}, dict(params, seed=8)))
    stage.add(StageRequest("gone", {"prompt": "Hello"}, params))
    stage.abort("gone")
    batched, tokens, meta = _drain(stage)
    assert batched["b"] == alone["a"]
    assert len(tokens["b"]) == 10 and "gone" not in batched


@pytest.mark.parametrize("params,param", [({"temperature": -1}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                                          ({"top_p": 0}, "top_p"), ({"stop": [""]}, "stop")])
def test_bad_parameters_are_rejected(stage, params, param):
    with pytest.raises(RequestRejected) as info:
        stage.add(StageRequest("x", {"prompt": "hi"}, params))
    assert info.value.param == param and info.value.status == 400


def test_tools_are_rendered_or_refused_by_the_chat_template(stage):
    """Tools reach the chat template; a template that ignores them refuses them (400 naming
    tools) instead of answering as if they were not there."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "hi"}]
    plain = stage.engine_request("a", {"messages": messages}, stage.sampling({}))
    with_tools = stage.engine_request("b", {"messages": messages}, stage.sampling({}), tools=tools)
    assert '"name": "lookup"' in stage.tok.decode(with_tools.prompt) and len(with_tools.prompt) > len(plain.prompt)
    template, stage.tok.chat_template = stage.tok.chat_template, (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}")
    stage._tools_rendered = None
    try:
        with pytest.raises(RequestRejected) as err:
            stage.engine_request("c", {"messages": messages}, stage.sampling({}), tools=tools)
        assert err.value.param == "tools"
    finally:
        stage.tok.chat_template, stage._tools_rendered = template, None
