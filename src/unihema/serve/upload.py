"""Reading ``POST /v1/predict``: the multipart body within its byte cap, the options, the image's header.

The body is read as it arrives and refused with 413 as soon as it passes ``max_upload_bytes`` (plus a
small allowance for the form's boundaries and option fields), so an oversize upload is never buffered
whole. The file part is kept in memory only: nothing of a request touches the disk here.

The image's type is read from its content (PIL, restricted to the accepted formats), never from its file
name or its declared content type; its width and height come from the header, so an image with too many
pixels is refused before it is decoded.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from unihema.data.schema import Task
from unihema.inference.image_processor import ImageInputError, load_image
from unihema.inference.predictor import DEFAULT_TASKS
from unihema.serve.errors import ApiError
from unihema.serve.settings import ServeSettings

FORM_OVERHEAD_BYTES = 64 * 1024
"""Bytes allowed beyond ``max_upload_bytes`` for the boundaries, part headers and option fields."""
IMAGE_FIELD = "image"
OPTION_FIELDS = ("tasks", "question", "sentence", "disease", "score_threshold")
DEFAULT_SCORE_THRESHOLD = 0.3
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class PredictRequest:
    """One parsed ``POST /v1/predict``.

    Attributes:
        data: the image file's bytes.
        filename: the uploaded file's base name (only used to name the result; never trusted for its type).
        tasks: the tasks to run, in the order given, without duplicates.
        question: the VQA question, or ``None``.
        sentence: the masked sentence to complete (mlm), or ``None``.
        disease: the disease context of the prompt, or ``None``.
        score_threshold: cells scoring below it are dropped.
    """

    data: bytes
    filename: str
    tasks: tuple[Task, ...]
    question: str | None
    sentence: str | None
    disease: str | None
    score_threshold: float


@dataclass(frozen=True)
class ImageHeader:
    """What the image's header says: its PIL format name and size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


async def read_predict_request(request: Request, settings: ServeSettings) -> PredictRequest:
    """The parsed request; raises :class:`ApiError` (400, 413, 415, 422) naming what is wrong."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "the request must be multipart/form-data with the image in a file field named "
            f"'{IMAGE_FIELD}', got content type {content_type or 'none'!r}",
        )
    limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(settings, f"the request is {int(declared):,} bytes")
    parser = MultiPartParser(
        request.headers,
        _bounded(request.stream(), limit, settings),
        max_files=1,
        max_fields=16,
        max_part_size=FORM_OVERHEAD_BYTES,
    )
    parser.spool_max_size = limit + 1  # keep the file part in memory, never in a temporary file
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, f"unreadable multipart form: {error.message}") from None
    try:
        return _parse_form(form.multi_items(), settings)
    finally:
        await form.close()


async def _bounded(stream: AsyncIterator[bytes], limit: int, settings: ServeSettings) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _too_large(settings, f"the request passed {limit:,} bytes")
        yield chunk


def _too_large(settings: ServeSettings, what: str) -> ApiError:
    return ApiError(
        413,
        f"image: {what}; the upload limit is max_upload_bytes={settings.max_upload_bytes:,}",
        field=IMAGE_FIELD,
    )


def _parse_form(items: list[tuple[str, str | UploadFile]], settings: ServeSettings) -> PredictRequest:
    values: dict[str, list[str]] = {}
    upload: UploadFile | None = None
    for name, value in items:
        if name == IMAGE_FIELD and isinstance(value, UploadFile):
            upload = value
        elif name == IMAGE_FIELD:
            raise ApiError(400, "image: must be a file part (with a filename), not a text field", IMAGE_FIELD)
        elif name not in OPTION_FIELDS:
            raise ApiError(
                422, f"unknown field {name!r}; known: {', '.join((IMAGE_FIELD, *OPTION_FIELDS))}", field=name
            )
        elif isinstance(value, UploadFile):
            raise ApiError(422, f"{name}: must be a text field, not a file", field=name)
        else:
            values.setdefault(name, []).append(value)
    if upload is None:
        raise ApiError(
            400,
            f"image: missing; send the image as a multipart file field named '{IMAGE_FIELD}'",
            IMAGE_FIELD,
        )
    data = upload.file.read()
    if not data:
        raise ApiError(400, "image: the uploaded file is empty (0 bytes)", IMAGE_FIELD)
    if len(data) > settings.max_upload_bytes:
        raise _too_large(settings, f"the file is {len(data):,} bytes")
    question = _text(values, "question", settings)
    sentence = _text(values, "sentence", settings)
    tasks = _tasks(values.get("tasks", []), question, sentence)
    return PredictRequest(
        data=data,
        filename=_safe_name(upload.filename),
        tasks=tasks,
        question=question,
        sentence=sentence,
        disease=_text(values, "disease", settings),
        score_threshold=_threshold(values.get("score_threshold")),
    )


def _single(values: dict[str, list[str]], name: str) -> str | None:
    given = values.get(name)
    if not given:
        return None
    if len(given) > 1:
        raise ApiError(422, f"{name}: given {len(given)} times; give it once", field=name)
    return given[0]


def _text(values: dict[str, list[str]], name: str, settings: ServeSettings) -> str | None:
    text = (_single(values, name) or "").strip()
    if len(text) > settings.max_text_chars:
        raise ApiError(
            422, f"{name}: {len(text)} characters is over the limit of {settings.max_text_chars}", field=name
        )
    return text or None


def _tasks(given: list[str], question: str | None, sentence: str | None) -> tuple[Task, ...]:
    names = [name for value in given for name in re.split(r"[,\s]+", value) if name]
    known = [t.value for t in Task]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ApiError(422, f"tasks: unknown task {unknown[0]!r}; known: {', '.join(known)}", field="tasks")
    tasks = [Task(name) for name in names] if names else list(DEFAULT_TASKS)
    # A question asks for an answer, a sentence for its completion: their task need not be named too.
    tasks += [Task.VQA] * (question is not None) + [Task.MLM] * (sentence is not None)
    tasks = list(dict.fromkeys(tasks))
    if Task.VQA in tasks and question is None:
        raise ApiError(422, "question: the vqa task needs a question about the cell", field="question")
    if Task.MLM in tasks and sentence is None:
        raise ApiError(
            422,
            "sentence: the mlm task needs a sentence with <extra_id_0> where words are missing",
            field="sentence",
        )
    return tuple(tasks)


def _threshold(given: list[str] | None) -> float:
    value = _single({"score_threshold": given or []}, "score_threshold")
    if value is None or not value.strip():
        return DEFAULT_SCORE_THRESHOLD
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ApiError(
            422, f"score_threshold: must be a number in [0, 1], got {value!r}", field="score_threshold"
        )
    return threshold


def _safe_name(filename: str | None) -> str:
    """The file's base name, printable characters only, at most 120 of them (``"upload"`` if none)."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable() and c not in "\"'<>")[:120].strip()
    return name or "upload"


def inspect_image(data: bytes, settings: ServeSettings) -> ImageHeader:
    """The image's format and size from its header; 413 for too many pixels, 415 for a non-image."""
    accepted = ", ".join(settings.accepted_formats)
    try:
        with Image.open(io.BytesIO(data), formats=settings.accepted_formats) as image:
            header = ImageHeader(str(image.format), int(image.width), int(image.height))
    except Image.DecompressionBombError:
        raise ApiError(
            413,
            f"image: too many pixels to open; the limit is max_pixels={settings.max_pixels:,}",
            IMAGE_FIELD,
        ) from None
    except _DECODE_ERRORS:
        raise ApiError(
            415,
            f"image: not an image in an accepted format ({accepted}); the type is read from "
            "the file's content, not its name",
            IMAGE_FIELD,
        ) from None
    if header.pixels > settings.max_pixels:
        raise ApiError(
            413,
            f"image: {header.width}x{header.height} = {header.pixels:,} pixels is over "
            f"max_pixels={settings.max_pixels:,}",
            IMAGE_FIELD,
        )
    if header.pixels < 1:
        raise ApiError(400, f"image: {header.width}x{header.height} has no pixels", IMAGE_FIELD)
    return header


def decode_image(data: bytes, header: ImageHeader, settings: ServeSettings) -> np.ndarray:
    """The image as (H, W, 3) uint8 RGB (the first frame of a multi-page file); 400 if it does not decode."""
    try:
        with Image.open(io.BytesIO(data), formats=settings.accepted_formats) as image:
            image.load()
            return load_image(image).pixels
    except (*_DECODE_ERRORS, ImageInputError) as error:
        raise ApiError(
            400, f"image: the {header.format} file could not be decoded ({error})", IMAGE_FIELD
        ) from None
