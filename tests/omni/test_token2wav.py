"""Token2wav batched and chunked, against the reference Qwen2_5OmniToken2WavModel call."""
import pytest
import torch
from transformers import Qwen2_5OmniToken2WavModel

from omnistage.models.tiny import ensure_tiny
from omnistage.omni.assets import load_speakers
from omnistage.omni.token2wav import OdeSettings, Token2WavEngine, Voice


@pytest.fixture(scope="module")
def token2wav():
    path = ensure_tiny("qwen2.5-omni") / "token2wav"
    model = Qwen2_5OmniToken2WavModel.from_pretrained(path, dtype=torch.float32).eval()
    speakers = load_speakers(path)
    return model, {n: Voice(s["cond"].float(), s["ref_mel"].float()) for n, s in speakers.items()}


def engine(model, chunk=0, left=0, batch=8, first=0):
    return Token2WavEngine(model.code2wav_dit_model, model.code2wav_bigvgan_model, OdeSettings(), chunk, left,
                           batch, max_codes=1000, first_chunk=first)


def drain(eng):
    audio = {}
    while eng.has_work():
        for out in eng.step():
            audio.setdefault(out.rid, []).append(out)
    return audio


def reference(model, voice, codes, seed):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model(torch.tensor([codes]), conditioning=voice.cond[None], reference_mel=voice.ref_mel[None]).reshape(-1)


CODES = [[(i * 7 + j) % 60 for j in range(20)] for i in range(3)]


def test_whole_replies_equal_the_reference_and_batch_independently(token2wav):
    model, voices = token2wav
    eng = engine(model)
    names = ["Chelsie", "Ethan", "Chelsie"]
    for i, (codes, name) in enumerate(zip(CODES, names)):
        eng.add(f"r{i}", voices[name], seed=100 + i)
        eng.feed(f"r{i}", codes, last=True)
    audio = drain(eng)
    for i, (codes, name) in enumerate(zip(CODES, names)):
        [out] = audio[f"r{i}"]
        assert out.last
        torch.testing.assert_close(out.samples, reference(model, voices[name], codes, 100 + i), atol=1e-5, rtol=0)


def test_a_step_wider_than_one_bigvgan_call_keeps_every_reply_its_own_audio(token2wav):
    from omnistage.omni.token2wav import VOCODER_ROWS
    model, voices = token2wav
    eng = engine(model, batch=2 * VOCODER_ROWS)
    replies = [[(i * 11 + j * 3) % 60 for j in range(20)] for i in range(VOCODER_ROWS + 3)]
    for i, codes in enumerate(replies):
        eng.add(f"r{i}", voices["Ethan"], seed=i)
        eng.feed(f"r{i}", codes, last=True)
    audio = eng.step()  # one ODE solve over all of them, BigVGAN in two calls
    assert len(audio) == len(replies)
    for out in audio:
        i = int(out.rid[1:])
        torch.testing.assert_close(out.samples, reference(model, voices["Ethan"], replies[i], i), atol=1e-5, rtol=0)


def test_chunks_come_as_codes_arrive_and_cover_every_code(token2wav):
    model, voices = token2wav
    eng = engine(model, chunk=6, left=6, first=3)
    eng.add("r", voices["Ethan"], seed=3)
    eng.feed("r", CODES[0][:2], last=False)
    assert not eng.has_work()  # fewer than the first chunk
    eng.feed("r", CODES[0][2:13], last=False)
    first = eng.step()
    per_code = 2 * 240  # mel frames per code x samples per frame
    assert [o.last for o in first] == [False] and first[0].samples.numel() == 3 * per_code
    eng.feed("r", CODES[0][13:], last=True)
    rest = [o for outs in drain(eng).values() for o in outs]
    samples = torch.cat([o.samples for o in first + rest])
    whole = reference(model, voices["Ethan"], CODES[0], 3)
    assert rest[-1].last and samples.shape == whole.shape
    # The tiny DiT's receptive field is small, so a left context of one chunk is nearly exact here.
    assert float((samples - whole).abs().max()) < 1e-2


def test_a_reply_without_codes_ends_with_empty_audio(token2wav):
    model, voices = token2wav
    eng = engine(model, chunk=4)
    eng.add("r", voices["Chelsie"], seed=None)
    eng.feed("r", [], last=True)
    [[out]] = drain(eng).values()
    assert out.last and out.samples.numel() == 0


def test_the_most_overdue_reply_goes_first(token2wav):
    model, voices = token2wav
    eng = engine(model, chunk=4, left=0, batch=1, first=4)
    for rid in ("early", "late"):
        eng.add(rid, voices["Chelsie"], seed=1)
    eng.feed("late", CODES[1][:12], last=False)
    eng.feed("early", CODES[0][:12], last=False)
    order = [out.rid for _ in range(4) for out in eng.step()]
    # "early" arrived first: its first chunk goes first; then each is due when its audio so far
    # would finish playing, so they alternate instead of one running ahead.
    assert order == ["early", "late", "early", "late"]


def test_the_bigvgan_speedups_change_no_output():
    from omnistage.omni.speedups import fast_bigvgan
    path = ensure_tiny("qwen2.5-omni") / "token2wav"
    plain = Qwen2_5OmniToken2WavModel.from_pretrained(path, dtype=torch.float32).eval().code2wav_bigvgan_model
    fast = Qwen2_5OmniToken2WavModel.from_pretrained(path, dtype=torch.float32).eval().code2wav_bigvgan_model
    # The tiny checkpoint's Snake parameters are zero (their init); give both the same random ones.
    for name, value in plain.named_parameters():
        if name.endswith((".alpha", ".beta")):
            value.data = torch.randn(value.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5
            dict(fast.named_parameters())[name].data = value.data.clone()
    fast_bigvgan(fast)
    mel = torch.randn(3, 16, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(fast(mel), plain(mel))


def test_windows_of_equal_length_but_different_context_batch_correctly(token2wav):
    """A reply's second window (2 codes of context) and another's last, shorter chunk (4 codes of
    context) can have the same length; each keeps its own samples."""
    model, voices = token2wav

    def feed_all(eng, plan, audio=None):
        audio = audio if audio is not None else {}
        for step in plan:
            for rid, codes, last in step:
                eng.feed(rid, codes, last)
            for out in eng.step():
                audio.setdefault(out.rid, []).append(out.samples)
        for rid, outs in drain(eng).items():
            audio.setdefault(rid, []).extend(o.samples for o in outs)
        return {rid: torch.cat(parts) for rid, parts in audio.items()}

    x, y = CODES[0][:10], CODES[1][:16]
    together = engine(model, chunk=8, left=4, first=2)
    together.add("y", voices["Ethan"], seed=2)
    together.feed("y", y[:10], last=False)
    early = {"y": [out.samples for _ in range(2) for out in together.step()]}  # y: [0, 2), then [0, 10)
    together.add("x", voices["Chelsie"], seed=1)
    # Now x's second window [0, 10) (2 codes of context) and y's last [6, 16) (4) are both 10 long.
    got = feed_all(together, [[("x", x[:2], False)], [("x", x[2:], True), ("y", y[10:], True)]], early)
    for rid, codes, voice, seed in (("x", x, "Chelsie", 1), ("y", y, "Ethan", 2)):
        alone = engine(model, chunk=8, left=4, first=2)
        alone.add(rid, voices[voice], seed=seed)
        want = feed_all(alone, [[(rid, codes[:2], False)], [(rid, codes[2:10], False)], [(rid, codes[10:], True)]])
        torch.testing.assert_close(got[rid], want[rid], atol=1e-5, rtol=0)
