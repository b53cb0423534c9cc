"""Spoken chat with an omnistage server running Qwen2.5-Omni, with the official ``openai`` client.

    omnistage serve examples/omni.yaml &
    python examples/omni_client.py --base-url http://127.0.0.1:8000/v1 --out reply.wav

Sends a question as audio (a generated tone, standing in for a recording) with a text part, and
streams the answer: transcript deltas are printed as they come, PCM16 audio deltas (24 kHz) are
written to a WAV file; prints when the first audio arrived and when the text ended.
"""
from __future__ import annotations

import argparse
import base64
import io
import time
import wave

import numpy as np
import openai
import soundfile as sf


def spoken_question(seconds: float = 1.0) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def converse(client: openai.OpenAI, model: str, out: str, voice: str = "Chelsie", max_tokens: int = 48) -> dict:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, max_tokens=max_tokens, stream=True, modalities=["text", "audio"],
        audio={"voice": voice, "format": "pcm16"},
        messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": spoken_question(), "format": "wav"}},
            {"type": "text", "text": "What do you hear?"}]}])
    pcm, transcript, first_audio, last_text = b"", "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            audio = _as_dict(getattr(choice.delta, "audio", None))
            if audio.get("transcript"):
                transcript += audio["transcript"]
                last_text = time.perf_counter() - started
                print(audio["transcript"], end="", flush=True)
            if audio.get("data"):
                pcm += base64.b64decode(audio["data"])
                first_audio = first_audio or time.perf_counter() - started
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes(pcm)
    seconds = len(pcm) / 2 / 24000
    print(f"\n  first audio after {first_audio or 0:.3f} s, text done after {last_text or 0:.3f} s; "
          f"{seconds:.2f} s of speech in {out}")
    return {"transcript": transcript, "audio_seconds": seconds, "first_audio": first_audio, "last_text": last_text}


def _as_dict(audio: object) -> dict:
    """``delta.audio`` as a dict (the client may give a dict or a model object)."""
    if audio is None:
        return {}
    return audio if isinstance(audio, dict) else audio.model_dump()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="omni")
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--out", default="reply.wav")
    args = parser.parse_args()
    converse(openai.OpenAI(base_url=args.base_url, api_key="none"), args.model, args.out, args.voice)


if __name__ == "__main__":
    main()
