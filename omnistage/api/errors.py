"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from starlette.responses import JSONResponse

from omnistage.errors import OmnistageError, RequestFailed, RequestRejected, StageDeadError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def from_exception(exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code)
    if isinstance(exc, RequestRejected):
        return error_response(exc.status, str(exc), exc.param)
    if isinstance(exc, StageDeadError):
        return error_response(503, str(exc), code="stage_unavailable")
    if isinstance(exc, (RequestFailed, OmnistageError)):
        return error_response(500, str(exc), code="stage_error")
    raise exc
