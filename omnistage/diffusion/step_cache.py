"""Per-request step caching inside a step batch: a request whose model output is changing slowly
reuses its last one instead of running the model, while the other rows of the same step run it.

Policy ``reuse`` (the idea of TeaCache and First-Block-Cache: skip a step's model call while an
accumulated measure of change stays under a threshold, then compute and reset), with the change
measured on what every family produces, its (guided) model output, so that it needs no hook
into a family's blocks and costs nothing per step:

- A computed step ``k`` after the request's previous computed step ``j`` measures the rate of
  change ``r = mean|out_k - out_j| / mean|out_j| / (k - j)``.
- A later step is skipped, reusing ``out_k``, while the change accumulated since ``k`` plus
  one more step's ``r`` stays under the request's threshold; skipping adds ``r``. A computed
  step resets the sum.
- The first ``warmup`` steps (the output moves fastest there, and a rate needs two computed
  steps), the last step, and any step after ``max_skips`` skips in a row are always computed.

A skipped row leaves the step's model call entirely (the batch is split), so the saving is
real compute. The decision uses only the request's own outputs, so it is the same alone and in
any batch. A threshold of 0 skips nothing.
"""
from __future__ import annotations

import torch

from omnistage.diffusion.params import CacheSpec


class StepCache:
    """One request's cache state."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.last: torch.Tensor | None = None  # the last computed output
        self.last_index = -1
        self.rate: float | None = None  # relative change per step, at the last computed step
        self.change = 0.0  # accumulated since the last computed step
        self.run = 0  # steps skipped in a row
        self.skipped = 0  # steps skipped in all (each skips every block of the model)

    def skip(self, index: int, total: int) -> bool:
        """Whether step ``index`` of ``total`` reuses the last output (and counts it if so)."""
        s = self.spec
        if (s.policy == "off" or self.rate is None or index < s.warmup or index >= total - 1
                or self.run >= s.max_skips or self.change + self.rate >= s.threshold):
            return False
        self.change += self.rate
        self.run += 1
        self.skipped += 1
        return True

    def reused(self) -> torch.Tensor:
        assert self.last is not None
        return self.last

    def computed(self, index: int, output: torch.Tensor) -> None:
        """Step ``index`` ran the model and gave ``output``."""
        if self.last is not None:
            scale = self.last.abs().mean().clamp_min(1e-12)
            self.rate = float((output - self.last).abs().mean() / scale) / (index - self.last_index)
        self.last, self.last_index, self.change, self.run = output, index, 0.0, 0
