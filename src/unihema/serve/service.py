"""Inference behind the server: one loaded model, worker threads, a bounded queue and the kept results.

:class:`InferenceService` runs each request's work (decode the upload, predict, draw the overlay, encode
the exports) in a :class:`~concurrent.futures.ThreadPoolExecutor`, off the event loop. At most
``workers + queue_size`` requests are in flight; the next one is refused at once with 503 and a
``Retry-After`` estimated from recent inference times. Every request shares the one model: its forward
passes are serialised by a lock, because the model's tokenizer and torch's intra-op thread pool are
shared and the model is not written for concurrent calls; decoding and encoding run outside the lock.

A request slot is freed when its work ends, not when its response is sent: a request that timed out
while its inference was running keeps its slot until the inference finishes, so the server never runs
more than its capacity. Work still waiting in the queue when its request times out is dropped.

Results are kept in a small in-memory LRU (:class:`ResultStore`) for their downloads; nothing is written
to disk unless ``save_requests`` is set.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from unihema.atomic import atomic_write_bytes, atomic_write_text
from unihema.data.schema import Task
from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, DETECTION_CLASSES, FOV_ATTRIBUTES
from unihema.inference import export
from unihema.inference.image_processor import LoadedImage
from unihema.inference.plotting import class_colour
from unihema.inference.predictor import DEFAULT_TASKS, Predictor
from unihema.inference.results import Prediction
from unihema.serve.errors import ApiError
from unihema.serve.settings import ServeSettings
from unihema.serve.upload import ImageHeader, PredictRequest, decode_image

OVERLAY_MAX_SIDE = 2048
"""Overlays are shrunk to at most this many pixels on their longer side (a page shows no more)."""
RESULT_FILES: dict[str, tuple[str, str]] = {
    "overlay": ("overlay.png", "image/png"),
    "json": ("prediction.json", "application/json"),
    "csv": ("cells.csv", "text/csv; charset=utf-8"),
    "geojson": ("cells.geojson", "application/geo+json"),
}
"""The downloads of a result by kind: file name (``GET /v1/results/{id}/{file name}``) and media type."""
_CELL_TASKS = frozenset({Task.DETECTION, Task.FOV_MORPHOLOGY})


@dataclass
class StoredResult:
    """One analysed request: its response body and its encoded downloads (name -> bytes)."""

    body: dict[str, Any]
    files: dict[str, bytes]

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


class ResultStore:
    """The last ``max_results`` results within ``max_bytes`` in all, least recently used dropped first."""

    def __init__(self, max_results: int, max_bytes: int) -> None:
        self.max_results, self.max_bytes = max_results, max_bytes
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, result_id: str, result: StoredResult) -> None:
        with self._lock:
            self._items[result_id] = result
            self._bytes += result.size
            # The newest result stays even when it alone passes max_bytes: its client is about to read it.
            while len(self._items) > 1 and (
                len(self._items) > self.max_results or self._bytes > self.max_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.size

    def get(self, result_id: str) -> StoredResult:
        with self._lock:
            result = self._items.get(result_id)
            if result is None:
                raise ApiError(
                    404,
                    f"no result {result_id!r}: results are kept in memory for the last "
                    f"{self.max_results} analyses only",
                    field="result_id",
                )
            self._items.move_to_end(result_id)
            return result


def result_links(result_id: str) -> dict[str, str]:
    """The URLs of a result's downloads, by kind."""
    base = f"/v1/results/{result_id}"
    return {"result": base, **{kind: f"{base}/{name}" for kind, (name, _) in RESULT_FILES.items()}}


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )


class InferenceService:
    """The model, its worker threads, the request admission and the kept results.

    Args:
        model: a :class:`~unihema.model.unihema.UniHema` (moved to ``settings.device``, put in eval mode).
        settings: the server's settings.
    """

    def __init__(self, model: torch.nn.Module, settings: ServeSettings) -> None:
        self.settings = settings
        self.model = model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.predictor = Predictor(model, device=resolve_device(settings.device))
        self.model_warnings = [str(w.message) for w in caught]
        self.results = ResultStore(settings.max_results, settings.max_result_bytes)
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="unihema-inference")
        self._model_lock = threading.Lock()
        self._admission = threading.Lock()
        self._in_flight = 0
        self._running = 0
        self._mean_seconds = 1.0  # running mean of recent inference times, for Retry-After
        self.started = time.time()

    # ------------------------------------------------------------------------------- admission
    def queue_state(self) -> dict[str, int]:
        with self._admission:
            running, in_flight = self._running, self._in_flight
        return {
            "running": running,
            "waiting": in_flight - running,
            "workers": self.settings.workers,
            "queue_size": self.settings.queue_size,
            "capacity": self.settings.capacity,
        }

    def retry_after(self) -> int:
        """Seconds after which a refused request may find a free slot (at least 1)."""
        backlog = max(1, self._in_flight) / self.settings.workers
        return max(1, math.ceil(self._mean_seconds * backlog))

    def _admit(self) -> None:
        with self._admission:
            if self._in_flight >= self.settings.capacity:
                raise self._unavailable(
                    f"the server is at capacity ({self.settings.capacity} requests in flight)"
                )
            self._in_flight += 1

    def _release(self, _: Future) -> None:
        with self._admission:
            self._in_flight -= 1

    def _unavailable(self, why: str) -> ApiError:
        seconds = self.retry_after()
        return ApiError(503, f"{why}; retry after {seconds} s", headers={"Retry-After": str(seconds)})

    # ------------------------------------------------------------------------------- analysis
    async def analyse(self, request: PredictRequest, header: ImageHeader) -> dict[str, Any]:
        """Analyse one upload in a worker; returns the response body (the result is kept for downloads)."""
        self._admit()
        queued = time.perf_counter()
        future = self._executor.submit(self._work, request, header, queued)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise self._unavailable(
                f"the analysis did not finish within request_timeout_s={self.settings.request_timeout_s:g}"
            ) from None

    def _work(self, request: PredictRequest, header: ImageHeader, queued: float) -> dict[str, Any]:
        with self._admission:
            self._running += 1
        try:
            return self._analyse(request, header, queued)
        finally:
            with self._admission:
                self._running -= 1

    def _analyse(self, request: PredictRequest, header: ImageHeader, queued: float) -> dict[str, Any]:
        timings = {"queue": time.perf_counter() - queued}
        tick = time.perf_counter()
        loaded = LoadedImage(decode_image(request.data, header, self.settings), request.filename)
        timings["decode"] = time.perf_counter() - tick
        options = {
            "tasks": request.tasks,
            "question": request.question,
            "sentence": request.sentence,
            "disease": request.disease,
            "score_threshold": request.score_threshold,
        }
        with self._model_lock:
            tick = time.perf_counter()
            try:
                prediction = next(self.predictor.predict_iter(loaded, **options))
            except ValueError as error:  # an option the request parser let through
                raise ApiError(422, str(error)) from None
            timings["predict"] = time.perf_counter() - tick
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * timings["predict"]
        tick = time.perf_counter()
        result_id = uuid.uuid4().hex
        stored = package(prediction, result_id, header, request)
        timings["encode"] = time.perf_counter() - tick
        stored.body["server_timings_ms"] = {k: round(v * 1000, 2) for k, v in timings.items()}
        self.results.put(result_id, stored)
        if self.settings.save_requests:
            self._save(result_id, request, header, stored)
        return stored.body

    def _save(
        self, result_id: str, request: PredictRequest, header: ImageHeader, stored: StoredResult
    ) -> None:
        folder = self.settings.requests_dir / result_id  # type: ignore[operator]
        atomic_write_bytes(folder / f"upload.{header.format.lower()}", request.data)
        for name, data in stored.files.items():
            atomic_write_bytes(folder / name, data)
        options = {
            "filename": request.filename,
            "tasks": [t.value for t in request.tasks],
            "question": request.question,
            "sentence": request.sentence,
            "disease": request.disease,
            "score_threshold": request.score_threshold,
        }
        atomic_write_text(folder / "request.json", json.dumps(options, indent=2) + "\n")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------- model card
    def model_info(self) -> dict[str, Any]:
        transforms = self.predictor.processor.config.transforms
        sizes: dict[str, Any] = {}
        for task in Task:
            side = transforms.input_size(task)
            sizes[task.value] = (
                {"shorter_side": transforms.det_eval_size, "max_side": transforms.det_max_size}
                if side is None
                else {"square": side}
            )
        settings = self.settings
        return {
            "preset": getattr(self.model.config, "preset", None),
            "tasks": [t.value for t in Task],
            "default_tasks": [t.value for t in DEFAULT_TASKS],
            "detection_classes": list(DETECTION_CLASSES),
            "class_colours": {name: _hex(class_colour(i)) for i, name in enumerate(DETECTION_CLASSES)},
            "cell_classes": list(CELL_CLASSES),
            "fov_attributes": {name: list(values) for name, values in FOV_ATTRIBUTES},
            "cell_attributes": {name: list(values) for name, values in CELL_ATTRIBUTES},
            "input_sizes": sizes,
            "pad_to_multiple": self.predictor.processor.config.pad_to_multiple,
            "trained_preprocessing": not self.predictor.untrained,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.predictor.device),
            "warnings": list(self.model_warnings),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
                "accepted_formats": list(settings.accepted_formats),
                "max_text_chars": settings.max_text_chars,
                "capacity": settings.capacity,
                "request_timeout_s": settings.request_timeout_s,
            },
        }


def package(
    prediction: Prediction, result_id: str, header: ImageHeader, request: PredictRequest
) -> StoredResult:
    """The response body of one analysis and its downloads, encoded."""
    has_cells = bool(_CELL_TASKS & set(request.tasks))
    body: dict[str, Any] = {
        "id": result_id,
        "image": {
            "filename": request.filename,
            "format": header.format,
            "width": header.width,
            "height": header.height,
            "bytes": len(request.data),
        },
        "prediction": prediction.to_dict(),
        "summary": prediction.summary().to_dict() if has_cells else None,
        "links": result_links(result_id),
    }
    files = {
        "overlay.png": _overlay_png(prediction),
        "prediction.json": (json.dumps(body, indent=2) + "\n").encode(),
        "cells.csv": export.rows_to_csv(prediction.to_rows(), export.CELL_COLUMNS).encode(),
        "cells.geojson": json.dumps(prediction.to_geojson()).encode(),
    }
    return StoredResult(body, files)


def _overlay_png(prediction: Prediction) -> bytes:
    picture = prediction.plot()
    if max(picture.size) > OVERLAY_MAX_SIDE:
        picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _hex(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{channel:02x}" for channel in colour)
