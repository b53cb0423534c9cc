"""What the load client sends: prompts (random words of a given length, or a file's lines),
optionally with random images of given sizes."""
from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

_WORDS = ("the a of to and in is it that for on with as was at by be this from or an are not have one all "
          "cat sea light music river stone tree city window story morning garden voice paper bridge cloud").split()


@dataclass(frozen=True)
class Sample:
    prompt: str
    input_words: int
    output_len: int
    images: list[str] = field(default_factory=list)  # data URLs


def random_prompts(n: int, input_len: int, output_len: int, seed: int = 0, range_ratio: float = 0.0) -> list[Sample]:
    """``n`` prompts of about ``input_len`` words (+-range_ratio), each asking ``output_len`` tokens."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        words = max(1, round(input_len * rng.uniform(1 - range_ratio, 1 + range_ratio)))
        out = max(1, round(output_len * rng.uniform(1 - range_ratio, 1 + range_ratio)))
        samples.append(Sample(" ".join(rng.choice(_WORDS) for _ in range(words)), words, out))
    return samples


def file_prompts(path: Path, n: int, output_len: int) -> list[Sample]:
    """Prompts from a file: one per line, or JSON lines with a "prompt" field; cycled to ``n``."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    prompts = [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line for line in lines]
    return [Sample(p, len(p.split()), output_len) for p in (prompts * (n // len(prompts) + 1))[:n]]


def with_images(samples: list[Sample], size: tuple[int, int], count: int, seed: int = 0) -> list[Sample]:
    """Each sample with ``count`` random-noise PNG images of ``size`` (width, height)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        urls = []
        for _ in range(count):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
            urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
        out.append(Sample(s.prompt, s.input_words, s.output_len, urls))
    return out
