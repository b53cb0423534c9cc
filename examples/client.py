"""Talk to an omnistage server with the official ``openai`` client.

    omnistage serve &                      # the any-to-any default graph
    python examples/client.py --base-url http://127.0.0.1:8000/v1 --out demo-output

Asks a text question and an image+text question (both streamed), generates images, speech (streamed) and a short
video, transcribes the speech back, and saves what comes back under ``--out``. Steps the server's graph cannot serve are reported and skipped.
"""
from __future__ import annotations

import argparse
import base64
import io
import time
import warnings
from pathlib import Path

import openai
from PIL import Image


def sample_image() -> str:
    """A small gradient picture as a data URL (what a browser or app would upload)."""
    image = Image.new("RGB", (112, 84))
    image.putdata([(x * 2, y * 3, 128) for y in range(84) for x in range(112)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


QUESTION = "What is the capital of France? Answer in one sentence."


def ask(client: openai.OpenAI, model: str) -> str:
    """A text question (the default graph answers it with SmolLM2-135M-Instruct, real weights)."""
    return _stream(client, model, [{"role": "user", "content": QUESTION}], f"> {QUESTION}", "chat", 48)


def chat(client: openai.OpenAI, model: str) -> str:
    """An image question (the default graph's Qwen2-VL is random-weight: its words are noise)."""
    content = [{"type": "image_url", "image_url": {"url": sample_image()}},
               {"type": "text", "text": "What is in this picture?"}]
    return _stream(client, model, [{"role": "user", "content": content}],
                   "> What is in this picture? [1 image]", "image chat", 24)


def _stream(client: openai.OpenAI, model: str, messages: list, shown: str, what: str, max_tokens: int) -> str:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=messages)
    print(f"{shown}\n  ", end="", flush=True)
    first, tokens = None, 0
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                print(choice.delta.content, end="", flush=True)
    ttft = (first or time.perf_counter()) - started
    print()
    return f"{what}: {tokens} tokens streamed, first after {ttft * 1000:.0f} ms"


def image(client: openai.OpenAI, model: str, out: Path) -> str:
    result = client.images.generate(model=model, prompt="a red cat on a blue hill", n=2,
                                    extra_body={"num_inference_steps": 20, "seed": 7})
    paths = []
    for i, item in enumerate(result.data):
        path = out / f"image-{i}.png"
        path.write_bytes(base64.b64decode(item.b64_json))
        paths.append(str(path))
    return f"images: {len(paths)} x {result.size} -> {', '.join(paths)}"


def speech(client: openai.OpenAI, model: str, out: Path) -> str:
    path, started, first, size = out / "speech.wav", time.perf_counter(), None, 0
    with client.audio.speech.with_streaming_response.create(
            model=model, voice="nova", response_format="wav", input="Hello from omnistage, a graph of stages.") as r:
        with open(path, "wb") as f:
            for piece in r.iter_bytes():
                first = first or time.perf_counter()
                size += f.write(piece)
    heard = client.audio.transcriptions.create(model=model, file=path)
    return (f"speech: {size} bytes, first after {((first or started) - started) * 1000:.0f} ms -> {path}; "
            f"transcribed back as {heard.text[:40]!r}")


def video(client: openai.OpenAI, model: str, out: Path) -> str:
    # The openai package marks its videos API (the shape this server speaks) as deprecated.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    job = client.videos.create(model=model, prompt="a paper boat on a pond", extra_body={"seed": 3})
    print(f"  video job {job.id}: {job.status}")
    done = client.videos.poll(job.id, poll_interval_ms=100)
    if done.status != "completed":
        return f"video: {done.status}: {done.error}"
    path = out / "video.mp4"
    path.write_bytes(client.videos.download_content(job.id).content)
    return f"video: {done.size}, {done.seconds} s -> {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    print(f"server model: {model}")
    done = []
    for step in (lambda: ask(client, model), lambda: chat(client, model), lambda: image(client, model, args.out),
                 lambda: speech(client, model, args.out), lambda: video(client, model, args.out)):
        try:
            done.append(step())
        except openai.BadRequestError as exc:  # e.g. a graph without that output
            done.append(f"skipped: {exc.body.get('message') if isinstance(exc.body, dict) else exc}")
    print("\n".join(["done:"] + [f"  {line}" for line in done]))


if __name__ == "__main__":
    main()
