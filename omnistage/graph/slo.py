"""Latency objectives (SLOs) of a graph's units, and whether a finished request met them.

A stage's ``slo`` section sets its bounds (``omnistage.graph.schema.SloConfig``), and its
``groups`` override them per modality group. Without one, a stage gets its kind's default:
2.0 s to the first token for the kinds that stream text (``ar``, ``prefill``, ``decode``,
``omni``), 2.0 s to the first audio for ``tts``, and 2.0 s end to end for every other kind.
Every request a unit served counts in that unit's goodput when it met the unit's bounds; a
failed request meets none.
"""
from __future__ import annotations

from omnistage.graph.schema import SloBounds, StageConfig

DEFAULT_S = 2.0
_FIRST_TOKEN_KINDS = frozenset({"ar", "prefill", "decode", "omni"})
_FIRST_AUDIO_KINDS = frozenset({"tts"})


def default_slo(kind: str) -> SloBounds:
    if kind in _FIRST_TOKEN_KINDS:
        return SloBounds(ttft_s=DEFAULT_S)
    if kind in _FIRST_AUDIO_KINDS:
        return SloBounds(ttfp_s=DEFAULT_S)
    return SloBounds(e2e_s=DEFAULT_S)


def slo_of(stage: StageConfig, group: str | None = None) -> SloBounds:
    """The bounds of ``stage`` (of one of its modality groups)."""
    if stage.slo is None:
        return default_slo(stage.kind)
    if group is not None and group in stage.slo.groups:
        return stage.slo.groups[group]
    return SloBounds(stage.slo.e2e_s, stage.slo.ttft_s, stage.slo.ttfp_s)


def tightest(bounds: SloBounds) -> float | None:
    """The smallest of ``bounds`` (None: there are none)."""
    return min((b for b in (bounds.e2e_s, bounds.ttft_s, bounds.ttfp_s) if b is not None), default=None)


def slack(bounds: SloBounds, e2e: float, ttft: float | None = None, ttfp: float | None = None) -> float | None:
    """How much later a request that finished ``e2e`` s after its arrival (first output after
    ``ttft``, first audio after ``ttfp``; None: it gave none, so its end counts) could have done
    so and still met ``bounds``: negative when it missed them; None when there are none."""
    checks = ((bounds.e2e_s, e2e), (bounds.ttft_s, e2e if ttft is None else ttft),
              (bounds.ttfp_s, e2e if ttfp is None else ttfp))
    return min((bound - took for bound, took in checks if bound is not None), default=None)


def met(bounds: SloBounds, e2e: float, ttft: float | None = None, ttfp: float | None = None) -> bool:
    """Whether such a request met ``bounds`` (``slack``)."""
    left = slack(bounds, e2e, ttft, ttfp)
    return left is None or left >= 0
