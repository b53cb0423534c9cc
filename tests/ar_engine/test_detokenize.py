import random

from transformers import AutoTokenizer

from omnistage.ar_engine.detokenize import IncrementalDetokenizer


def test_streamed_deltas_join_to_the_full_decode(qwen2_dir):
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    rng = random.Random(0)
    streamed = 0
    for trial in range(40):
        prompt = [rng.randrange(len(tok)) for _ in range(5)]
        ids = [rng.randrange(7, len(tok)) for _ in range(40)]  # byte tokens split UTF-8 characters
        detok = IncrementalDetokenizer(tok, prompt)
        streamed += detok._stream is not None
        text = "".join(detok.push(t) for t in ids) + detok.flush()
        assert text == tok.decode(ids, skip_special_tokens=True), trial
    assert 0 < streamed < 40, "both the native stream and the Python path were exercised"
