"""The Python API: compile a graph, start its workers, send requests.

    with Pipeline.from_yaml("examples/text_chat.yaml") as pipe:
        print(pipe.generate(prompt="Hello", max_tokens=16, temperature=0).text)
"""
from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.gpu_needs import gpu_budgets
from omnistage.checkpoints.support import check_model
from omnistage.elastic.controller import Controller
from omnistage.graph.compile import compile_file
from omnistage.graph.gpu_budget import shares
from omnistage.graph.plan import GraphPlan
from omnistage.stages.runtime.handle import ChunkEvent, RequestHandle, Result
from omnistage.stages.runtime.orchestrator import Orchestrator

log = logging.getLogger("omnistage")
_INPUT_FIELDS = ("prompt", "messages", "images", "image", "mask", "audio", "video", "input")


class Pipeline:
    def __init__(self, plan: GraphPlan, in_process: bool = False) -> None:
        """Start every stage replica; returns once all are ready (raises StageStartError, or
        GpuBudgetError when the replicas placed on a GPU need more than it has). A graph
        with an ``elastic`` section also gets its controller (``enabled: false``: only the scaler's
        actions, driven by hand)."""
        self.plan = plan
        budgets = gpu_budgets(plan)  # (raises GpuBudgetError for an over-committed GPU, before anything starts)
        for budget in budgets.values():
            log.info("GPU memory divided among its replicas:\n%s", budget.table())
        self.orchestrator = Orchestrator(plan, in_process=in_process, gpu_shares=shares(budgets))
        self.orchestrator.start()
        self.controller: Controller | None = None
        if plan.config.elastic is not None:
            self.controller = Controller(self.orchestrator, plan.config.elastic)
            self.controller.start()

    @classmethod
    def from_yaml(cls, path: str | Path, in_process: bool = False) -> Pipeline:
        return cls(compile_file(path, resolve_model, check_model), in_process=in_process)

    def submit(self, *, modalities: list[str] | None = None, loop: asyncio.AbstractEventLoop | None = None,
               **kwargs: Any) -> RequestHandle:
        inputs = {k: _portable(kwargs.pop(k)) for k in _INPUT_FIELDS if k in kwargs}
        return self.orchestrator.submit(inputs, kwargs, None if modalities is None else set(modalities), loop)

    def generate(self, *, timeout: float | None = 600, **kwargs: Any) -> Result:
        """Run one request to completion. Inputs: prompt, messages, images, image (to start an
        image from), mask (where that image is repainted), audio, video;
        everything else (max_tokens, temperature, seed, stop, ...) is a request parameter."""
        return self.submit(**kwargs).result(timeout)

    def stream(self, *, timeout: float | None = 600, **kwargs: Any) -> Iterator[ChunkEvent]:
        """Yield output chunks (text deltas, ...) as they are produced; raises on failure."""
        handle = self.submit(**kwargs)
        for event in handle.events(timeout):
            if isinstance(event, ChunkEvent):
                yield event
            elif not hasattr(event, "meta"):
                raise event.error  # type: ignore[union-attr]

    async def agenerate(self, **kwargs: Any) -> Result:
        handle = self.submit(loop=asyncio.get_running_loop(), **kwargs)
        try:
            return await handle.aresult()
        except asyncio.CancelledError:
            self.orchestrator.abort(handle.rid)
            raise

    async def astream(self, **kwargs: Any) -> AsyncIterator[ChunkEvent]:
        handle = self.submit(loop=asyncio.get_running_loop(), **kwargs)
        finished = False
        try:
            async for event in handle.aevents():
                if isinstance(event, ChunkEvent):
                    yield event
                elif not hasattr(event, "meta"):
                    raise event.error  # type: ignore[union-attr]
            finished = True
        finally:
            if not finished:
                self.orchestrator.abort(handle.rid)

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.orchestrator.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _portable(value: Any) -> Any:
    """PIL images become PNG bytes (lossless) so that they can travel to a stage process."""
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    return value
