"""Tool-call formats read back from text the chat templates render: the tiny models' (Qwen2.5's
and Llama 3.1's formats) always, the real Qwen2.5 and Llama 3.1 templates where the hub cache
holds them."""
import json

import pytest
from transformers import AutoTokenizer

from omnistage.api.tool_parsers import FORMATS, _assistant_turn, detect
from omnistage.checkpoints.packaged import ensure_packaged
from omnistage.models.tiny import ensure_tiny

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALLS = [{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "C"}},
         {"name": "add", "arguments": {"a": 2, "b": [1, {"c": "}"}]}}]


def rendered(tok, calls, content=""):
    turn = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": content, "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": c} for i, c in enumerate(calls)]}]
    return _assistant_turn(tok.apply_chat_template(turn, tools=TOOLS, tokenize=False))


def check(fmt, text, calls):
    content, got = fmt.parse(text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == \
        [(c["name"], c["arguments"]) for c in calls]
    stream, streamed = fmt.stream(), []
    pieces = []
    for ch in text:  # one character at a time: markers split across deltas
        piece, found = stream.feed(ch)
        pieces.append(piece)
        streamed += found
    piece, found = stream.finish()
    pieces.append(piece)
    streamed += found
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in streamed] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in got]
    assert ("".join(pieces).strip() or None) == content
    return content


@pytest.mark.parametrize("model, fmt", [("qwen2", "hermes"), ("llama", "llama3_json")])
def test_calls_rendered_by_the_tiny_templates_parse_back(model, fmt):
    tok = AutoTokenizer.from_pretrained(ensure_tiny(model))
    assert detect(tok) is FORMATS[fmt]
    for calls in (CALLS[:1], CALLS) if fmt == "hermes" else (CALLS[:1], CALLS[1:]):  # (Llama 3.1: one per turn)
        assert check(FORMATS[fmt], rendered(tok, calls), calls) is None


def test_text_around_hermes_calls_is_content_and_plain_text_is_no_call():
    hermes, llama = FORMATS["hermes"], FORMATS["llama3_json"]
    text = 'Let me look.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    assert check(hermes, text, [{"name": "add", "arguments": {"a": 1}}]) == "Let me look."
    for fmt in (hermes, llama):
        assert fmt.parse("The answer is {42}.") == ("The answer is {42}.", [])
        assert check(fmt, "No tools needed <tool_ here.", []) == "No tools needed <tool_ here."
    assert llama.parse('{"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {"a": 2}}')[1][1][
        "function"]["arguments"] == '{"a": 2}'
    assert llama.parse('{"name": "add", "parameters": {"a": 1}} and more text')[1] == []
    assert hermes.parse("<tool_call>\n{not json}\n</tool_call>")[1] == []


def test_a_template_that_writes_no_calls_has_no_format():
    assert detect(AutoTokenizer.from_pretrained(ensure_packaged("smollm2-135m-instruct"))) is None


@pytest.mark.parametrize("hub_id, fmt", [("Qwen/Qwen2.5-7B-Instruct", "hermes"),
                                         ("meta-llama/Llama-3.1-8B-Instruct", "llama3_json")])
def test_the_real_templates_from_the_hub_cache(hub_id, fmt):
    """Needs the model's tokenizer in the hub cache (no download here)."""
    try:
        tok = AutoTokenizer.from_pretrained(hub_id, local_files_only=True)
    except OSError:
        pytest.skip(f"{hub_id}'s tokenizer is not in the hub cache")
    assert detect(tok) is FORMATS[fmt]
    for calls in (CALLS[:1], CALLS) if fmt == "hermes" else (CALLS[:1], CALLS[1:]):
        check(FORMATS[fmt], rendered(tok, calls), calls)
