"""The ``python`` kind: calls a user function once per request.

The function gets the request's input ports as keyword arguments (plus ``params`` if it takes
it) and returns a dict of its declared output ports, or a bare value when it declares one.
"""
from __future__ import annotations

import importlib
import inspect
from collections import deque
from collections.abc import Callable
from typing import Any

from omnistage.errors import RequestRejected
from omnistage.graph.options import PythonOptions
from omnistage.graph.plan import StagePlan
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest


def load_callable(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


class PythonStage(Stage):
    def __init__(self, fn: Callable[..., Any], outputs: tuple[str, ...], max_batch: int) -> None:
        self._fn = fn
        self._outputs = outputs
        self._max_batch = max_batch
        self._wants_params = "params" in inspect.signature(fn).parameters
        self._queue: deque[StageRequest] = deque()

    def add(self, request: StageRequest) -> None:
        self._queue.append(request)

    def step(self) -> list[StageOutput]:
        outs = []
        for _ in range(min(self._max_batch, len(self._queue))):
            outs.append(self._run(self._queue.popleft()))
        return outs

    def _run(self, req: StageRequest) -> StageOutput:
        kwargs = dict(req.inputs)
        if self._wants_params:
            kwargs["params"] = dict(req.params)
        try:
            result = self._fn(**kwargs)
        except RequestRejected as exc:
            return StageOutput(req.rid, finished=True, error=str(exc), status=exc.status, param=exc.param)
        except Exception as exc:  # noqa: BLE001 - user code: its failure fails this request only
            return StageOutput(req.rid, finished=True, error=f"{type(exc).__name__}: {exc}")
        if len(self._outputs) == 1 and not (isinstance(result, dict) and set(result) == set(self._outputs)):
            result = {self._outputs[0]: result}
        if not isinstance(result, dict) or set(result) != set(self._outputs):
            got = sorted(result) if isinstance(result, dict) else type(result).__name__
            # The function broke its declared contract for this request: fail it, not the stage.
            return StageOutput(req.rid, finished=True, error=f"{self._fn.__qualname__} must return a dict with keys "
                                                              f"{list(self._outputs)}, got {got}")
        return StageOutput(req.rid, ports=result, finished=True)

    def abort(self, rid: str) -> None:
        self._queue = deque(r for r in self._queue if r.rid != rid)

    def has_work(self) -> bool:
        return bool(self._queue)

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self._queue))}


def build(stage: StagePlan, device: str) -> PythonStage:
    options: PythonOptions = stage.options
    return PythonStage(load_callable(options.function), tuple(options.outputs), stage.config.batching.max_batch)
