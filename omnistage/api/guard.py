"""The outermost layer of every HTTP request: its id, the API key, its count, and the last word on
errors.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which runs the handler in another
task and hides client disconnects from it). Every response carries ``x-request-id`` (the
client's own, when it sent a sane one). An exception no handler turned into a response is
logged with the request id and answered with a 500 in OpenAI's JSON shape; the connection stays
open. Every response is counted by endpoint and status.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnistage.api.errors import error_body
from omnistage.api.metrics import Metrics

log = logging.getLogger("omnistage.api")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class Guard:
    def __init__(self, app: ASGIApp, metrics: Metrics, api_key: str | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        started, cancelled = time.perf_counter(), False
        try:
            if self.api_key and scope["path"].startswith("/v1") and not self._authorized(scope):
                await _json(send_with_id, 401, error_body(401, "invalid or missing API key (Authorization: Bearer "
                                                               "...)", code="invalid_api_key"))
            elif scope["path"].startswith("/v1") and scope["app"].state.pipeline is None:
                await _json(send_with_id, 503, error_body(503, "the server is still loading its models; retry "
                                                               "shortly", code="loading"), ((b"retry-after", b"5"),))
            else:
                await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server's graceful shutdown ran out of time and cancels what is left: the request's
            # stages were told to stop (handlers abort on the way out); nothing else to say.
            log.warning("request %s: cancelled by the server's shutdown", rid)
            cancelled = True
        except Exception:
            log.exception("request %s: unexpected error in %s %s", rid, scope["method"], scope["path"])
            if status == 0:  # nothing sent yet: a proper answer, and the connection stays usable
                await _json(send_with_id, 500, error_body(500, f"internal server error (request id {rid})",
                                                          code="internal_error"))
        finally:
            if not cancelled:  # (one cut off by the shutdown has no status to count)
                self.metrics.count(endpoint(scope), status or 500)
            log.info("%s %s %s %d %.3fs", rid, scope["method"], scope["path"], status or 500,
                     time.perf_counter() - started)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        assert self.api_key is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"),
                                                                  self.api_key.encode())


def request_id(scope: Scope) -> str:
    sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
    return sent if _CLIENT_ID.fullmatch(sent) else "req-" + uuid.uuid4().hex


def endpoint(scope: Scope) -> str:
    """The route's path template (``/v1/videos/{video_id}``), or "unmatched"."""
    route: Any = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _json(send: Send, status: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})
