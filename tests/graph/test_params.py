"""Request parameters checked against what a route's stage kinds read."""
import pytest

from omnistage.checkpoints import resolve_model
from omnistage.errors import RequestRejected
from omnistage.graph.compile import compile_file
from omnistage.graph.kinds import registry
from omnistage.graph.params import SAMPLING, ParamSpec, check_request
from omnistage.stages.runtime.admission import resolve_params
from tests.conftest import ROOT


def rejected(params, readers, elsewhere=()):
    with pytest.raises(RequestRejected) as info:
        check_request(params, readers, elsewhere)
    assert info.value.status == 400
    return info.value


def test_an_unknown_parameter_is_named_with_a_suggestion():
    err = rejected({"max_token": 5}, {"llm": SAMPLING})
    assert err.param == "max_token"
    assert str(err).startswith("unknown parameter 'max_token'; did you mean 'max_tokens'? This request's stages take: ")
    assert "temperature" in str(err)
    err = rejected({"flavour": "mint"}, {"llm": SAMPLING})
    assert str(err).startswith("unknown parameter 'flavour'. This request's stages take:")


def test_a_parameter_only_other_stages_read_does_not_apply():
    err = rejected({"voice": "alloy"}, {"chat": SAMPLING}, elsewhere={"voice", "speed"})
    assert err.param == "voice" and "does not apply to this request: none of its stages (chat) reads it" in str(err)


@pytest.mark.parametrize("params, words", [
    ({"temperature": 3}, "temperature must be between 0 and 2, got 3"),
    ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_p": 0}, "top_p must be > 0 and <= 1, got 0"),
    ({"max_tokens": 2.0}, "max_tokens must be an integer, got 2.0"),
    ({"max_tokens": True}, "max_tokens must be an integer, got True"),
    ({"seed": 2 ** 70}, "seed must be >= 0 and < 9223372036854775808"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"stop": 5}, "stop must be a string or a list of strings, got 5"),
    ({"stop": ["a", ""]}, "stop must not hold empty strings"),
    ({"stop": ["x"] * 17}, "stop takes at most 16 items, got 17"),
    ({"stop_token_ids": [1, "2"]}, "stop_token_ids must be a list of integers"),
    ({"ignore_eos": "yes"}, "ignore_eos must be true or false, got 'yes'"),
    ({"logprobs": 21}, "logprobs must be between 0 and 20, got 21"),
])
def test_values_of_the_wrong_type_or_out_of_range_are_refused(params, words):
    err = rejected(params, {"llm": SAMPLING})
    assert err.param == next(iter(params)) and words in str(err)


def test_good_values_and_absent_ones_pass():
    check_request({"temperature": 0, "top_p": 1, "stop": "\n", "seed": 2 ** 63 - 1, "max_tokens": None,
                   "stop_token_ids": [], "logprobs": 0}, {"llm": SAMPLING})
    ParamSpec("format", "str", choices=("png", "jpeg")).check("png")
    with pytest.raises(RequestRejected, match='format must be one of png, jpeg, got \'jpg\' \\(did you mean "jpeg"'):
        ParamSpec("format", "str", choices=("png", "jpeg")).check("jpg")


def test_every_built_in_kind_declares_its_parameters_once_each():
    for kind in registry().values():
        names = [p.name for p in kind.params]
        assert len(names) == len(set(names)), kind.name
    assert {p.name for p in registry()["ar"].params} >= {"max_tokens", "temperature", "seed", "stop"}
    assert {p.name for p in registry()["diffusion"].params} >= {"height", "num_inference_steps", "guidance_scale"}


def test_a_route_takes_the_parameters_of_its_stages_only():
    plan = compile_file(ROOT / "examples" / "chat_postprocess.yaml", resolve_model)
    route = plan.route_for({"messages"})
    assert resolve_params(plan, route, {}, {"max_tokens": 4, "temperature": 0}) == {"max_tokens": 4, "temperature": 0}
    with pytest.raises(RequestRejected, match="unknown parameter 'num_inference_steps'"):
        resolve_params(plan, route, {}, {"num_inference_steps": 4})


def test_a_python_stage_takes_the_parameters_its_options_declare(tmp_path):
    graph = (ROOT / "examples" / "chat_postprocess.yaml").read_text().replace(
        "      outputs: {text: text}", "      outputs: {text: text}\n      params: {loudness: int}")
    path = tmp_path / "g.yaml"
    path.write_text(graph)
    plan = compile_file(path, resolve_model)
    route = plan.route_for({"messages"})
    assert resolve_params(plan, route, {}, {"loudness": 3}) == {"loudness": 3}
    with pytest.raises(RequestRejected, match="loudness must be an integer"):
        resolve_params(plan, route, {}, {"loudness": "3"})


def test_whole_numbers_pass_for_a_number_and_none_means_not_given():
    from omnistage.graph.params import SPEECH
    check_request({"speed": 2, "voice": None}, {"speak": SPEECH})
    check_request({"speed": 0.25}, {"speak": SPEECH})
    rejected({"speed": 5}, {"speak": SPEECH})
    check_request({"temperature": None, "flavour": None}, {"llm": SAMPLING})  # null fields are absent ones
