"""Speech stages in real worker processes (examples/speech.yaml)."""
import io

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

from omnistage.errors import RequestRejected
from omnistage.models.tiny import ensure_tiny
from omnistage.pipeline import Pipeline
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def speech():
    with Pipeline.from_yaml(ROOT / "examples" / "speech.yaml") as pipe:
        yield pipe


def test_tts_streams_chunks_and_reports_its_rate(speech):
    chunks = [c for c in speech.stream(prompt="hello there how are you", modalities=["audio"], voice="sage")]
    assert len(chunks) > 2 and all(c.modality == "audio" for c in chunks)
    assert speech.orchestrator.infos["speak"]["sample_rate"] == 16000
    with pytest.raises(RequestRejected) as err:
        speech.submit(prompt="hi", modalities=["audio"], voice="nobody")
    assert err.value.param == "voice"


def test_a_long_input_stops_at_the_decoders_position_table_and_the_stage_lives_on(speech):
    """The length cap (input length x maxlenratio) can pass the decoder's position table (1024 on the
    tiny model): the cap is lowered to fit instead of crashing the step for every request."""
    long = speech.generate(prompt="hello there " * 20, modalities=["audio"])
    assert long.outputs["audio"].numel() > 0
    assert speech.generate(prompt="hi", modalities=["audio"]).outputs["audio"].numel() > 0


def test_transcript_equals_whisper_generate(speech):
    tone = (np.sin(np.arange(16000) * 300 / 16000 * 2 * np.pi) * 0.2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, tone, 16000, format="WAV", subtype="FLOAT")
    got = speech.generate(audio=[buf.getvalue()], max_tokens=10).text
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    feats = AutoFeatureExtractor.from_pretrained(path)([tone], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(feats, max_new_tokens=10)[0].tolist()
    assert got == AutoTokenizer.from_pretrained(path).decode(ids, skip_special_tokens=True).strip()
