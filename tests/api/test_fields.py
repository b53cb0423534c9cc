"""Which body fields an endpoint takes itself, accepts as metadata, refuses, or hands on as parameters."""
import pytest

from omnistage.api.errors import ApiError
from omnistage.api.fields import CHAT, IMAGES, TRANSCRIPTIONS, VIDEOS
from omnistage.api.request import FormBody


def test_everything_not_the_endpoints_own_becomes_a_parameter():
    body = {"model": "m", "messages": [], "stream": True, "user": "u", "store": False, "temperature": 0.5,
            "top_k": 3, "max_token": 4, "tools": [], "presence_penalty": 0}
    assert CHAT.params(body) == {"temperature": 0.5, "top_k": 3, "max_token": 4, "presence_penalty": 0}


@pytest.mark.parametrize("fields, body, name", [
    (CHAT, {"functions": [{"name": "f"}]}, "functions"), (CHAT, {"prediction": {"type": "content"}}, "prediction"),
    (IMAGES, {"style": "vivid"}, "style"), (VIDEOS, {"input_reference": "x"}, "input_reference"),
    (TRANSCRIPTIONS, {"include": ["logprobs"]}, "include"), (CHAT, {"function_call": "f"}, "function_call"),
])
def test_an_unimplemented_openai_field_is_refused_unless_it_asks_for_nothing(fields, body, name):
    with pytest.raises(ApiError) as info:
        fields.params(body)
    assert (info.value.status, info.value.param) == (400, name) and "not supported" in info.value.message


def test_numbers_are_read_from_forms_only():
    assert VIDEOS.params(FormBody({"prompt": "x", "seed": "7", "fps": "8"})) == {"seed": 7, "fps": 8}
    assert VIDEOS.params({"prompt": "x", "seed": "7"}) == {"seed": "7"}  # a JSON string stays one (and is refused later)
    with pytest.raises(ApiError, match="seed must be a number"):
        VIDEOS.params(FormBody({"prompt": "x", "seed": "seven"}))
