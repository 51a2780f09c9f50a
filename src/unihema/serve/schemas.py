"""The API's documented shapes: response models and the multipart request body of ``POST /v1/predict``.

They feed the OpenAPI schema (``GET /openapi.json``); the fields are described in ``docs/serving.md``.
The prediction and the summary are the objects of :meth:`Prediction.to_dict` and
:meth:`ClinicalSummary.to_dict` (``docs/outputs/``), given here as free-form objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from unihema.data.schema import Task
from unihema.inference.predictor import DEFAULT_TASKS
from unihema.serve.upload import DEFAULT_SCORE_THRESHOLD


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(
        description="stable short code: bad_request, too_large, invalid_option, unavailable..."
    )
    message: str = Field(description="what is wrong, naming the field and what is accepted")
    field: str | None = Field(None, description="the request field concerned, if one")


class QueueState(BaseModel):
    running: int = Field(description="requests being analysed now")
    waiting: int = Field(description="requests waiting for a worker")
    workers: int
    queue_size: int
    capacity: int = Field(description="requests in flight before the server answers 503")


class HealthResponse(BaseModel):
    status: str = Field(description='"ok" while the server answers')
    preset: str | None = Field(description="the model's preset")
    uptime_s: float
    results_kept: int = Field(description="results held in memory for their downloads")
    queue: QueueState


class ImageInfo(BaseModel):
    filename: str = Field(description="the uploaded file's base name")
    format: str = Field(description="the format read from the content (PNG, JPEG, ...)")
    width: int
    height: int
    bytes: int


class ResultLinks(BaseModel):
    result: str = Field(description="GET: this response again")
    overlay: str = Field(description="GET: the overlay PNG (boxes and mask drawn on the image)")
    json_file: str = Field(alias="json", description="GET: this response as a JSON file")
    csv: str = Field(description="GET: one row per cell (docs/outputs/csv.md)")
    geojson: str = Field(description="GET: the cells as a QuPath FeatureCollection")


class PredictResponse(BaseModel):
    id: str = Field(description="the result's id (its downloads are under /v1/results/{id})")
    image: ImageInfo
    prediction: dict[str, Any] = Field(
        description="Prediction.to_dict(): cells, counts, mask fraction, answer"
    )
    summary: dict[str, Any] | None = Field(
        description="ClinicalSummary.to_dict() when detection or fov_morphology ran, else null"
    )
    links: ResultLinks
    server_timings_ms: dict[str, float] = Field(description="queue, decode, predict and encode times")


class ExampleInfo(BaseModel):
    name: str
    condition: str = Field(description="what the synthetic generator drew: healthy, malaria, sickle cell ...")
    disease: str = Field(description="the matching disease context")
    url: str = Field(description="GET: the example's PNG")
    width: int
    height: int


def predict_request_body(max_upload_bytes: int) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/predict`` (read by hand, so FastAPI cannot infer it)."""
    tasks = [t.value for t in Task]
    properties = {
        "image": {
            "type": "string",
            "format": "binary",
            "description": f"the image file (at most {max_upload_bytes:,} bytes; type read from content)",
        },
        "tasks": {
            "type": "array",
            "items": {"type": "string", "enum": tasks},
            "default": [t.value for t in DEFAULT_TASKS],
            "description": "repeat the field or separate names with commas",
        },
        "question": {"type": "string", "description": "a question about the cell; adds the vqa task"},
        "sentence": {"type": "string", "description": "a sentence with <extra_id_0> to complete; adds mlm"},
        "disease": {"type": "string", "description": "disease context of the prompt (malaria, leukemia...)"},
        "score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": DEFAULT_SCORE_THRESHOLD,
            "description": "cells scoring below it are dropped",
        },
    }
    schema = {"type": "object", "required": ["image"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    meaning = {
        400: "unreadable request or image (empty, not decodable, missing field)",
        404: "unknown result or example",
        413: "upload bytes or image pixels over the limits",
        415: "not multipart, or not an image in an accepted format",
        422: "invalid option",
        503: "at capacity or timed out; see Retry-After",
    }
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}
