import math

import pytest
import torch

from omnistage.ar_engine.sampling import SamplingParams, sample_batch
from omnistage.errors import RequestRejected

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0]])


def sp(**kw):
    return SamplingParams.from_request(kw, default_max_tokens=8)


def test_greedy_and_top_k_one_pick_the_argmax():
    assert sample_batch(LOGITS, [sp(temperature=0)], [[]])[0].token == 1
    assert sample_batch(LOGITS, [sp(temperature=1.0, top_k=1, seed=3)], [[]])[0].token == 1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    draws = lambda seed: [sample_batch(logits, [p], [[]])[0].token for p in [sp(seed=seed)] for _ in range(20)]
    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_filters_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for _ in range(30):
        assert sample_batch(logits, [sp(top_p=0.6)], [[]])[0].token in (0, 1)
        assert sample_batch(logits, [sp(min_p=0.5)], [[]])[0].token in (0, 1)
        assert sample_batch(logits, [sp(top_k=2)], [[]])[0].token in (0, 1)


def test_repetition_penalty_moves_away_from_seen_tokens():
    assert sample_batch(LOGITS, [sp(temperature=0, repetition_penalty=2.0)], [[1]])[0].token == 2


def test_logit_bias_and_openai_penalties_read_the_output_only():
    """A bias lifts a token; frequency and presence penalties count the generated tokens (not the
    prompt's), per occurrence and once."""
    assert sample_batch(LOGITS, [sp(temperature=0, logit_bias={0: 50.0})], [[]])[0].token == 0
    top = int(torch.argmax(LOGITS[0]))
    assert sample_batch(LOGITS, [sp(temperature=0, presence_penalty=2.0)], [[top]], [[]])[0].token == top
    assert sample_batch(LOGITS, [sp(temperature=0, presence_penalty=2.0)], [[]], [[top]])[0].token != top
    bias = SamplingParams.from_request({"logit_bias": {"3": -1.5}}, 4, vocab_size=8)
    assert bias.logit_bias == {3: -1.5}


@pytest.mark.parametrize("params", [{"logit_bias": {"8": 1}}, {"logit_bias": {"x": 1}}, {"logit_bias": {"1": 200}},
                                    {"logit_bias": [1]}, {"frequency_penalty": 3}, {"presence_penalty": "a"}])
def test_bad_bias_or_penalty_is_refused_by_name(params):
    with pytest.raises(RequestRejected) as info:
        SamplingParams.from_request(params, 4, vocab_size=8)
    assert info.value.param == next(iter(params))


def test_logprobs_are_log_softmax_values():
    out = sample_batch(LOGITS, [sp(temperature=0, logprobs=2)], [[]])[0]
    ref = torch.log_softmax(LOGITS[0], -1)
    assert math.isclose(out.logprob, ref[1].item(), rel_tol=1e-6)
    assert [t for t, _ in out.top] == [1, 2]


@pytest.mark.parametrize("kw,param", [({"temperature": 3}, "temperature"), ({"top_p": 1.5}, "top_p"),
                                      ({"min_p": -0.1}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
                                      ({"logprobs": 50}, "logprobs"), ({"seed": "x"}, "seed"),
                                      ({"max_tokens": True}, "max_tokens")])
def test_invalid_parameters_name_the_parameter(kw, param):
    with pytest.raises(RequestRejected) as info:
        sp(**kw)
    assert info.value.param == param


def test_stop_string_hold_back():
    p = sp(stop=["END", "\n\n"])
    assert p.hold_back("abc EN") == "abc "
    assert p.hold_back("abc\n") == "abc"
    assert p.hold_back("abc") == "abc"
    assert p.find_stop("xx END yy") == 3
