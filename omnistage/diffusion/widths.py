"""A step's width for one latent shape, measured on the machine it runs on.

How many rows a denoising step should take depends on the card, the model and the latent's
size: a small latent keeps gaining throughput up to tens of rows, a large one stops gaining at a
few, and on a GPU memory ends it. So the first time a shape runs, the engine times a model call
at widths 1, 2, 4, ... rows (best of two, after one warm-up call) and keeps the narrowest width
whose rows/s is within ``SHARE`` of the best it saw. It stops widening when:

- the last two doublings together gained less than ``GAIN`` in rows/s (one alone is too noisy
  a signal: a large latent gains a few percent per doubling, adding up to 20-30%),
- a call took longer than ``SLOW_S`` (probing wider would cost more than it could save),
- it reached ``max_rows``, or
- the card ran out of memory (that width and wider are never used: the batch is bounded by the
  memory measured at that latent size).

Narrowest-near-best, not widest: a wider step that adds no throughput only makes every request
in it wait longer.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

SHARE = 0.95  # keep the narrowest width within this share of the best rows/s
GAIN = 1.1  # two doublings must add this much rows/s to try wider
SLOW_S = 2.0  # a call slower than this ends the probe
REPEATS = 2


@dataclass
class Width:
    rows: int  # the width chosen
    seconds: dict[int, float] = field(default_factory=dict)  # rows -> seconds a call, as measured
    stop: str = ""  # why probing stopped: gain, slow, max_rows, memory

    def summary(self) -> str:
        timed = ", ".join(f"{r}: {s * 1000:.1f} ms" for r, s in self.seconds.items())
        return f"{self.rows} rows (probed {timed}; stopped: {self.stop})"


def _timed(run: Callable[[int], None], rows: int, sync: Callable[[], None], repeats: int = REPEATS) -> float:
    """The best of ``repeats`` calls; a call slower than ``SLOW_S`` is not repeated."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run(rows)
        sync()
        best = min(best, time.perf_counter() - start)
        if best > SLOW_S:
            break
    return best


def measure_width(run: Callable[[int], None], max_rows: int, device: str | torch.device) -> Width:
    """``run(rows)``: one model call over that many rows of the shape."""
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    width = Width(1)
    rate = lambda r: r / width.seconds[r]  # noqa: E731
    try:
        warm = _timed(run, 1, sync, repeats=1)  # (lazy initialisation, allocator growth)
        width.seconds[1] = warm if warm > SLOW_S else _timed(run, 1, sync)
    except torch.OutOfMemoryError as e:
        raise torch.OutOfMemoryError(f"one row of this latent size does not fit in the stage's memory: {e}") from e
    while not width.stop:
        probed = list(width.seconds)
        if probed[-1] >= max_rows:
            width.stop = "max_rows"
        elif width.seconds[probed[-1]] > SLOW_S:
            width.stop = "slow"
        elif len(probed) >= 3 and rate(probed[-1]) < GAIN * rate(probed[-3]):
            width.stop = "gain"
        else:
            rows = min(2 * probed[-1], max_rows)
            try:
                width.seconds[rows] = _timed(run, rows, sync)
            except torch.OutOfMemoryError:
                width.stop = "memory"
            if width.stop == "memory":  # (out of the handler: its traceback no longer holds the activations)
                torch.cuda.empty_cache()
    best = max(map(rate, width.seconds))
    width.rows = min(r for r in width.seconds if rate(r) >= SHARE * best)
    return width
