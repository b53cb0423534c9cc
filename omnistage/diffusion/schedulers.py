"""Per-request noise schedulers.

A diffusers scheduler keeps its position (step index, multistep history) inside the object, so
one object cannot serve requests that sit at different steps. Every request gets its own copy,
built from the checkpoint's scheduler config; its ``step`` is then exactly diffusers' update for
that request, whatever the other rows of the batch are doing.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SchedulerKind:
    cls: type
    # The model's training objective this update is written for.
    prediction: str  # "epsilon" (noise / v prediction, UNet family) or "flow" (flow matching)
    overrides: Mapping[str, Any] = field(default_factory=dict)


# Name -> scheduler. Names are what a request's ``scheduler`` parameter takes.
SCHEDULERS: dict[tuple[str, str], SchedulerKind] = {
    ("ddim", "epsilon"): SchedulerKind(DDIMScheduler, "epsilon"),
    ("euler", "epsilon"): SchedulerKind(EulerDiscreteScheduler, "epsilon"),
    ("euler_a", "epsilon"): SchedulerKind(EulerAncestralDiscreteScheduler, "epsilon"),
    ("dpm++", "epsilon"): SchedulerKind(DPMSolverMultistepScheduler, "epsilon"),
    ("pndm", "epsilon"): SchedulerKind(PNDMScheduler, "epsilon"),
    ("unipc", "epsilon"): SchedulerKind(UniPCMultistepScheduler, "epsilon"),
    ("flow_euler", "flow"): SchedulerKind(FlowMatchEulerDiscreteScheduler, "flow"),
    ("unipc", "flow"): SchedulerKind(UniPCMultistepScheduler, "flow",
                                     {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}


def scheduler_names(prediction: str) -> list[str]:
    return [name for (name, pred) in SCHEDULERS if pred == prediction]


class SchedulerFactory:
    """Makes fresh per-request schedulers: the checkpoint's own ("default") or a named one."""

    def __init__(self, base: SchedulerMixin, prediction: str) -> None:
        self.prediction = prediction
        self._templates: dict[str, SchedulerMixin] = {"default": base}
        self._base = base

    def names(self) -> list[str]:
        return scheduler_names(self.prediction)

    def make(self, name: str) -> SchedulerMixin:
        if name not in self._templates:
            kind = SCHEDULERS.get((name, self.prediction))
            if kind is None:
                raise ValueError(f"unknown scheduler {name!r}; available: default, {', '.join(self.names())}")
            overrides = dict(kind.overrides)
            if overrides.get("use_flow_sigmas") and "shift" in self._base.config:
                overrides.setdefault("flow_shift", self._base.config["shift"])
            self._templates[name] = kind.cls.from_config(self._base.config, **overrides)
        return copy.deepcopy(self._templates[name])


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator, with_generator: bool) -> dict[str, Any]:
    """The extra ``step`` arguments a pipeline passes (SD passes eta=0 and its generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if with_generator and "eta" in accepted:
        kwargs["eta"] = 0.0
    if with_generator and "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
