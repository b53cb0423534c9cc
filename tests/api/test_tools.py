"""Tool calls and structured output through the real server, with the official openai client.
The tiny model's chat template renders tools in Qwen2.5's format; a forced choice makes the
random-weight model write a valid call, which comes back parsed, streamed or not, and goes back
in as a tool result."""
import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from omnistage.models.tiny import ensure_tiny
from tests.api.conftest import API_KEY

MODEL = "text-chat"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo", "Lima"]},
                                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                          "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def chat(server, **kw):
    return client(server).chat.completions.create(model=MODEL, **{"max_tokens": 160, "temperature": 0, **kw})


def check_call(call, tool):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_required_call_is_parsed_and_its_result_goes_back_in(chat_server):
    done = chat(chat_server, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time")
    check_call(call, WEATHER if call.function.name == "get_weather" else TIME)
    back = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    answer = chat(chat_server, messages=back, tools=[WEATHER, TIME], max_tokens=8)
    tok = AutoTokenizer.from_pretrained(ensure_tiny("qwen2"))
    rendered = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                         "arguments": json.loads(call.function.arguments)}}]},
        back[-1]]
    prompt = tok.apply_chat_template(rendered, tools=[WEATHER, TIME], add_generation_prompt=True, tokenize=False)
    assert "<tool_response>\nsunny, 24 C\n</tool_response>" in prompt and '"name": "get_weather"' in prompt
    assert answer.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])


def test_a_named_function_streamed_equals_it_not_streamed(chat_server):
    kw = dict(messages=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    whole = chat(chat_server, **kw).choices[0].message.tool_calls
    assert [c.function.name for c in whole] >= ["get_time"]
    for call in whole:
        check_call(call, TIME)
    calls, reasons = {}, []
    for chunk in chat(chat_server, stream=True, **kw):
        for choice in chunk.choices:
            assert not choice.delta.content
            for delta in choice.delta.tool_calls or ():
                calls.setdefault(delta.index, []).append(delta)
            reasons.append(choice.finish_reason)
    streamed = [(d[0].function.name, "".join(x.function.arguments for x in d)) for _, d in sorted(calls.items())]
    assert streamed == [(c.function.name, c.function.arguments) for c in whole]
    assert reasons[-1] == "tool_calls"


def test_auto_and_none_leave_free_text_that_is_no_call(chat_server):
    for choice in ("auto", "none"):
        done = chat(chat_server, messages=ASK, tools=[WEATHER], tool_choice=choice, max_tokens=8).choices[0]
        assert done.message.tool_calls is None and isinstance(done.message.content, str)


SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                           "score": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["answer", "score"], "additionalProperties": False}


def test_json_schema_output_validates_and_free_requests_beside_it_keep_their_tokens(chat_server):
    """Several at once (so they share steps): the constrained answers validate; the free ones
    equal what they are alone."""
    from concurrent.futures import ThreadPoolExecutor
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
    free = [[{"role": "user", "content": f"Tell me a story number {i}"}] for i in range(4)]
    alone = [chat(chat_server, messages=m, max_tokens=24).choices[0].message.content for m in free]
    jobs = [dict(messages=m, max_tokens=24) for m in free] + \
        [dict(messages=[{"role": "user", "content": f"Is {i} odd?"}], response_format=fmt) for i in range(4)]
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda kw: chat(chat_server, **kw).choices[0].message.content, jobs))
    assert done[:4] == alone
    for text in done[4:]:
        jsonschema.validate(json.loads(text), SCHEMA)
    obj = chat(chat_server, messages=ASK, response_format={"type": "json_object"}).choices[0].message.content
    assert isinstance(json.loads(obj), dict)
    choice = chat(chat_server, messages=ASK, extra_body={"structured_outputs": {"choice": ["red", "blue"]}})
    assert choice.choices[0].message.content in ("red", "blue")


@pytest.mark.parametrize("extra, param, words", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "letters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "params": {}}}]}, "tools[0].function", "params"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "true or false"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format",
     "cannot constrain it too"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format", "cannot be compiled"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "must be text, json_object"),
    ({"messages": ASK + [{"role": "tool", "content": "x"}]}, "messages[1].tool_call_id", "tool_call_id"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{not json"}}]}]}, "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
    ({"functions": [{"name": "f"}]}, "functions", "not supported"),
])
def test_bad_tool_and_format_fields_are_refused_by_name(chat_server, extra, param, words):
    body = {"messages": ASK, **extra}
    with pytest.raises(openai.BadRequestError) as err:
        client(chat_server).chat.completions.create(model=MODEL, max_tokens=4, extra_body=body, messages=body.pop(
            "messages"))
    assert err.value.body["param"] == param and words in err.value.body["message"], err.value.body
