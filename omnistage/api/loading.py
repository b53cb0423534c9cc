"""Starting the pipeline while the server already answers (``omnistage serve``).

Loading real checkpoints takes minutes. Meanwhile the server is up: ``/live`` is 200, ``/health``
is 503 with status "loading", and the ``/v1`` routes answer 503 with ``Retry-After`` (the Guard
asks ``ready``). If the pipeline cannot start, the failure is logged and ``on_failure`` runs (the
command line stops the server and exits non-zero).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("omnistage.api")


class Loader:
    def __init__(self, start: Callable[[], Any], on_ready: Callable[[Any], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        self.start, self.on_ready, self.on_failure = start, on_ready, on_failure
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            pipeline = await asyncio.to_thread(self.start)
        except Exception as exc:  # noqa: BLE001 - any start failure ends the server, reported once here
            self.error = exc
            log.error("the pipeline failed to start: %s", exc)
            self.on_failure(exc)
            return
        log.info("ready after %.1f s of loading", time.monotonic() - self.started_at)
        self.on_ready(pipeline)

    def status(self) -> dict[str, Any]:
        if self.error is not None:
            return {"status": "failed", "error": str(self.error)}
        return {"status": "loading", "seconds": round(time.monotonic() - self.started_at, 1)}
