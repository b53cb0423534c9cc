"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from omnistage.errors import OmnistageError, Overloaded, RequestFailed, RequestRejected, StageDeadError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 499: "invalid_request_error", 503: "service_unavailable_error"}
RETRY_AFTER_S = 1  # what a 429 or a 503 of a stage at capacity or restarting asks the client to wait


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ClientGone(ApiError):
    """The client closed the connection before its answer was ready (nobody reads this 499)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the request", code="client_closed_request")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code)
    if isinstance(exc, Overloaded):  # at capacity (429) or no live replica (503): worth retrying
        code = "rate_limit_exceeded" if exc.status == 429 else "stage_unavailable"
        return error_response(exc.status, str(exc), code=code, headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, RequestRejected):
        return error_response(exc.status, str(exc), exc.param)
    if isinstance(exc, StageDeadError):
        return error_response(503, str(exc), code="stage_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, (RequestFailed, OmnistageError)):
        return error_response(500, str(exc), code="stage_error")
    raise exc


async def handle(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's exception handler for ours and for its own HTTPException (404, 405, ...)."""
    if isinstance(exc, HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, code={404: "not_found", 405: "method_not_allowed"}
                              .get(exc.status_code), headers=exc.headers)
    return from_exception(exc)
