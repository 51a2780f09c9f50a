"""Every error the server answers is one JSON object: ``{"error": code, "message": text, "field": name}``.

:class:`ApiError` carries the HTTP status, a short machine-readable ``code``, a message that says what is
wrong and what is accepted, and the request field it is about (``None`` when it is about no single field).
:func:`install_error_handlers` makes FastAPI's own errors (unknown path, wrong method, parameter
validation) and any unexpected exception answer in the same shape, so a client never parses HTML.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("unihema.serve")

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_option",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A request the server answers with ``status`` and a JSON message instead of a result.

    Args:
        status: the HTTP status (4xx for the client's mistakes, 503 when the server is full or too slow).
        message: what is wrong, naming the field and the accepted values.
        field: the request field concerned, or ``None``.
        code: a stable short name of the error (default: derived from ``status``).
        headers: extra response headers (``Retry-After`` for 503).
    """

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or _CODES.get(status, "error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "field": self.field}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, HTTP errors, validation errors and unexpected exceptions as JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError(error.status_code, message, headers=dict(error.headers or {})).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = f"{field}: {first.get('msg', 'invalid value')}" if field else first.get("msg", "invalid")
        return ApiError(422, message, field=field).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error ({type(error).__name__}); see the server log").response()
