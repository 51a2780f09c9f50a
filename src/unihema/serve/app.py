"""The web app: :func:`create_app` builds the FastAPI application around one loaded model.

Routes (fields in ``docs/serving.md``; the OpenAPI schema is ``GET /openapi.json``):

- ``GET /``: the page (``static/``: one HTML page, its script and style sheet, nothing from elsewhere);
- ``POST /v1/predict``: analyse one uploaded image (multipart: ``image`` and the options);
- ``GET /v1/results/{id}`` and ``GET /v1/results/{id}/{overlay.png|prediction.json|cells.csv|cells.geojson}``:
  a kept result and its downloads;
- ``GET /v1/health``, ``GET /v1/model``: liveness and queue state; the model's preset, classes, tasks,
  input sizes and the server's limits;
- ``GET /v1/examples``, ``GET /v1/examples/{name}.png``: the bundled synthetic example fields.

Every error is a JSON object (:mod:`unihema.serve.errors`); every request gets one access-log line
(:mod:`unihema.serve.logs`). The interactive API pages FastAPI can serve are off: they load their
scripts from a CDN, and this server sends nothing that is not its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from unihema.serve.errors import ApiError, install_error_handlers
from unihema.serve.examples import ExampleGallery
from unihema.serve.logs import AccessLogMiddleware
from unihema.serve.schemas import (
    ExampleInfo,
    HealthResponse,
    PredictResponse,
    error_responses,
    predict_request_body,
)
from unihema.serve.service import RESULT_FILES, InferenceService
from unihema.serve.settings import ServeSettings
from unihema.serve.upload import inspect_image, read_predict_request

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""Sent with every response: the page may load nothing but this server's own files."""


class SecurityHeadersMiddleware:
    """Adds the content security policy and ``nosniff`` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _load_model(model: str | os.PathLike[str] | torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    from unihema.model.unihema import UniHema

    return UniHema.from_pretrained(model)


def create_app(
    model: str | os.PathLike[str] | torch.nn.Module, settings: ServeSettings | None = None
) -> FastAPI:
    """The FastAPI app serving ``model`` (a folder written by ``save_pretrained``, or a loaded model).

    The model is loaded once, here; every request shares it. ``settings`` defaults to
    :class:`ServeSettings()` (loopback, the default limits). ``app.state.service`` is the
    :class:`~unihema.serve.service.InferenceService` behind the routes.
    """
    settings = settings or ServeSettings()
    service = InferenceService(_load_model(model), settings)
    gallery = ExampleGallery()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="UniHema",
        summary="Blood-smear analysis: cells, morphology, mask, clinical summary and answers.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service, app.state.settings = service, settings
    install_error_handlers(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware, log_format=settings.log_format)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/v1/health", response_model=HealthResponse, tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness, the queue's state and the results kept in memory."""
        return {
            "status": "ok",
            "preset": getattr(service.model.config, "preset", None),
            "uptime_s": round(time.time() - service.started, 1),
            "results_kept": len(service.results),
            "queue": service.queue_state(),
        }

    @app.get("/v1/model", tags=["server"])
    async def model_card() -> dict[str, Any]:
        """The model's preset, classes, attributes, tasks, input sizes, and the server's limits."""
        return service.model_info()

    @app.post(
        "/v1/predict",
        tags=["analysis"],
        response_model=PredictResponse,
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra=predict_request_body(settings.max_upload_bytes),
    )
    async def predict(request: Request) -> JSONResponse:
        """Analyse one image: cells with classes and attributes, mask, clinical summary, answer."""
        parsed = await read_predict_request(request, settings)
        header = inspect_image(parsed.data, settings)
        request.state.image_pixels = header.pixels
        return JSONResponse(await service.analyse(parsed, header))

    @app.get(
        "/v1/results/{result_id}",
        tags=["analysis"],
        response_model=PredictResponse,
        responses=error_responses(404),
    )
    async def result(result_id: str) -> JSONResponse:
        """A kept result (the response of its ``POST /v1/predict``)."""
        return JSONResponse(service.results.get(result_id).body)

    @app.get("/v1/results/{result_id}/{file_name}", tags=["analysis"], responses=error_responses(404))
    async def download(result_id: str, file_name: str) -> Response:
        """A download of a kept result: overlay.png, prediction.json, cells.csv or cells.geojson."""
        media_types = dict(RESULT_FILES.values())
        if file_name not in media_types:
            raise ApiError(
                404, f"no download {file_name!r}; available: {', '.join(media_types)}", "file_name"
            )
        data = service.results.get(result_id).files[file_name]
        disposition = "inline" if file_name.endswith(".png") else "attachment"
        headers = {"Content-Disposition": f'{disposition}; filename="unihema-{result_id[:8]}-{file_name}"'}
        return Response(data, media_type=media_types[file_name], headers=headers)

    @app.get("/v1/examples", tags=["examples"], response_model=list[ExampleInfo])
    async def examples() -> list[dict[str, Any]]:
        """The bundled example fields (drawn by the synthetic generator on first request)."""
        found = await run_in_threadpool(gallery.all)
        return [example.describe(f"/v1/examples/{name}.png") for name, example in found.items()]

    @app.get("/v1/examples/{name}.png", tags=["examples"], responses=error_responses(404))
    async def example_image(name: str) -> Response:
        """One example field as PNG."""
        found = await run_in_threadpool(gallery.all)
        if name not in found:
            raise ApiError(404, f"no example {name!r}; available: {', '.join(found)}", field="name")
        return Response(found[name].png, media_type="image/png")

    return app
