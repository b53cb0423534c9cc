"""The talker's input rows, built while the thinker streams (pure tensors)."""
import pytest
import torch

from omnistage.connectors.messages import ThinkerStates
from omnistage.omni.reply import UNBOUNDED, ThinkerReply

H = 4
BOS, EOS, PAD = torch.full((H,), 10.0), torch.full((H,), 20.0), torch.full((H,), 30.0)
MEDIA = 99


def reply(codec_start=True):
    return ThinkerReply(BOS, EOS, PAD, frozenset({MEDIA}), codec_start)


def state(rows, first=None, prompt=None):
    return ThinkerStates([0], torch.full((rows, H), 1.0) * torch.arange(first, first + rows)[:, None],
                         torch.full((rows, H), 0.5), prompt)


def test_rows_follow_the_reference_layout_while_the_thinker_streams():
    r = reply()
    assert r.available() == 0
    r.push(state(3, 0, prompt=[5, MEDIA, 6]))  # prompt states, first token sampled
    assert r.available() == 4  # the prompt and the text-start position; the first token's row is not here yet
    r.push(state(1, 3))  # the first generated token's row
    r.push(state(1, 4))
    assert r.available() == 3 + 1 + 2
    rows, keep = r.rows(0, 6)
    assert torch.equal(rows[0], torch.full((H,), 0.5))  # hidden 0 + embed
    assert torch.equal(rows[1], torch.full((H,), 1.0))  # a media placeholder: its embedding is zeroed
    assert torch.equal(rows[3], BOS) and torch.equal(rows[4], torch.full((H,), 3.5))
    assert torch.equal(rows[5], torch.full((H,), 4.5))
    assert keep.tolist() == [False, False, False, True, True, True]
    r.end()
    assert r.available() == UNBOUNDED
    rows, _ = r.rows(6, 3)
    assert torch.equal(rows[0], EOS) and torch.equal(rows[1], PAD) and torch.equal(rows[2], PAD)


def test_without_codec_start_the_two_positions_after_the_prompt_replace_the_token_embedding():
    r = reply(codec_start=False)
    r.push(state(2, 0, prompt=[5, 6]))
    r.push(state(1, 2))
    _, keep = r.rows(0, 5)
    assert keep.tolist() == [False, False, False, False, True]


def test_a_thinker_that_skipped_prompt_positions_is_refused():
    r = reply()
    with pytest.raises(ValueError, match="hidden_states: all"):
        r.push(state(1, 0, prompt=[5, 6, 7]))
    with pytest.raises(ValueError, match="hidden_states: all"):
        r.push(ThinkerStates([1], None, None))
