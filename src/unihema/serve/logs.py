"""Access logs: one line per request on the ``unihema.serve.access`` logger, never any image data.

Each line records the time (UTC, ISO 8601), the method, the path (without its query string), the status,
the duration in milliseconds and, for an analysed upload, its image's pixel count (width x height), as a
JSON object (``log_format="json"``)::

    {"time": "2025-01-01T12:00:00.000Z", "method": "POST", "path": "/v1/predict", "status": 200,
     "duration_ms": 412.7, "image_pixels": 49152}

or as ``key=value`` text (``log_format="text"``). :func:`configure_logging` sends the server's loggers
to standard error; a program that embeds :func:`~unihema.serve.app.create_app` may route them itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

ACCESS_LOGGER = "unihema.serve.access"
access_logger = logging.getLogger(ACCESS_LOGGER)


def access_line(record: dict[str, Any], log_format: str) -> str:
    """One access-log line of ``record`` in ``log_format`` (``"json"`` or ``"text"``)."""
    if log_format == "json":
        return json.dumps(record, separators=(", ", ": "))
    return " ".join(f"{key}={value}" for key, value in record.items())


class AccessLogMiddleware:
    """ASGI middleware that logs every HTTP request once it has been answered.

    The handler of an upload stores its image's pixel count in ``request.state.image_pixels``.
    """

    def __init__(self, app: Any, log_format: str = "json") -> None:
        self.app, self.log_format = app, log_format

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})
        status = {"code": 500}  # what the client sees when the app fails before answering

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": scope["method"],
                "path": scope["path"],
                "status": status["code"],
                "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                "image_pixels": scope["state"].get("image_pixels"),
            }
            access_logger.info(access_line(record, self.log_format))


def configure_logging(level: int = logging.INFO) -> None:
    """Write the ``unihema.serve`` loggers (access lines and errors) to standard error, message only."""
    logger = logging.getLogger("unihema.serve")
    if not any(getattr(h, "_unihema_serve", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._unihema_serve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
