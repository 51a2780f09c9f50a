"""The server through FastAPI's TestClient: every endpoint, every limit and 4xx, the full queue's 503,
timeouts, concurrent requests on one model, access logs, and what is (not) written to disk."""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unihema.cli import main
from unihema.data.vocab import DETECTION_CLASSES
from unihema.serve import ServeSettings, create_app
from unihema.serve.logs import ACCESS_LOGGER
from unihema.serve.service import ResultStore, StoredResult
from unihema.validation import ValidationError

pytestmark = pytest.mark.timeout(180)

STATIC_DIR = Path(__file__).resolve().parents[2] / "src" / "unihema" / "serve" / "static"
ERROR_KEYS = {"error", "message", "field"}


def _client(model: Any, **settings: Any) -> TestClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random model records no training: a warning, on purpose
        return TestClient(create_app(model, ServeSettings(**settings)))


def _post(client: TestClient, image: bytes | None, filename: str = "field.png", **fields: Any) -> Any:
    files = {"image": (filename, image, "application/octet-stream")} if image is not None else None
    return client.post("/v1/predict", files=files, data=fields)


@pytest.fixture(scope="module")
def client(serve_model):
    with _client(serve_model) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def limited(serve_model):
    """An app with small limits: 40,000 bytes, 10,000 pixels, 50 characters of text."""
    with _client(serve_model, max_upload_bytes=40_000, max_pixels=10_000, max_text_chars=50) as test_client:
        yield test_client


def _blocking_predictor(monkeypatch, service) -> tuple[threading.Event, threading.Event]:
    """Make the service's predictor wait for ``release`` after setting ``started``."""
    started, release = threading.Event(), threading.Event()
    original = service.predictor.predict_one

    def blocked(image, options):
        started.set()
        assert release.wait(60), "the test never released the predictor"
        return original(image, options)

    monkeypatch.setattr(service.predictor, "predict_one", blocked)
    return started, release


# ------------------------------------------------------------------------------------ endpoints
def test_health_model_card_and_page(client) -> None:
    health = client.get("/v1/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["preset"] == "tiny"
    assert body["queue"] == {"running": 0, "waiting": 0, "workers": 2, "queue_size": 8, "capacity": 10}

    card = client.get("/v1/model").json()
    assert card["preset"] == "tiny" and card["trained_preprocessing"] is True
    assert card["detection_classes"] == list(DETECTION_CLASSES)
    assert set(card["class_colours"]) == set(DETECTION_CLASSES)
    assert card["tasks"] == [
        "detection",
        "fov_morphology",
        "segmentation",
        "classification",
        "cell_morphology",
        "vqa",
        "mlm",
    ]
    assert card["default_tasks"] == ["detection", "fov_morphology", "segmentation"]
    assert card["input_sizes"]["detection"] == {"shorter_side": 64, "max_side": 96}
    assert card["input_sizes"]["segmentation"] == {"square": 64}
    assert card["input_sizes"]["classification"] == card["input_sizes"]["vqa"] == {"square": 32}
    assert card["limits"]["max_upload_bytes"] == ServeSettings().max_upload_bytes
    assert card["limits"]["accepted_formats"] == ["PNG", "JPEG", "TIFF", "BMP", "WEBP"]

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, media in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and media in asset.headers["content-type"]
    # Everything the page needs is served here: no file of the page names another site.
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_openapi_schema_documents_every_endpoint(client) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/predict",
        "/v1/health",
        "/v1/model",
        "/v1/results/{result_id}",
        "/v1/results/{result_id}/{file_name}",
        "/v1/examples",
        "/v1/examples/{name}.png",
    }
    predict = schema["paths"]["/v1/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert set(form["properties"]) == {"image", "tasks", "question", "sentence", "disease", "score_threshold"}
    assert form["properties"]["score_threshold"]["maximum"] == 1
    assert {"200", "400", "413", "415", "422", "503"} <= set(predict["responses"])
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN


def test_predict_returns_the_library_result_and_its_downloads(client, serve_model, make_image) -> None:
    png = make_image()
    response = _post(
        client,
        png,
        tasks=["detection", "fov_morphology"],
        question="What is the nucleus shape?",
        disease="malaria",
        score_threshold="0",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    prediction = body["prediction"]
    assert body["image"] == {
        "filename": "field.png",
        "format": "PNG",
        "width": 90,
        "height": 60,
        "bytes": len(png),
    }
    assert prediction["tasks"] == ["detection", "fov_morphology", "vqa"]  # the question added vqa
    assert prediction["question"] == "What is the nucleus shape?" and isinstance(prediction["answer"], str)
    assert prediction["disease"] == "malaria" and prediction["source"] == "field.png"
    # The server's result is the library's on the same pixels and options.
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = serve_model.predict(
            pixels, tasks=["detection", "fov_morphology"], disease="malaria", score_threshold=0.0
        )
    assert prediction["cells"] == [cell.to_dict() for cell in direct.cells] and len(direct.cells) > 0
    assert prediction["counts"] == direct.counts()
    assert body["summary"]["n_cells"] == len(direct.cells)
    assert body["summary"]["class_counts"] == direct.summary().to_dict()["class_counts"]
    assert set(body["server_timings_ms"]) == {"queue", "decode", "predict", "encode"}

    links = body["links"]
    assert client.get(links["result"]).json() == body
    overlay = client.get(links["overlay"])
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).format == "PNG"
    saved = client.get(links["json"])
    assert "attachment" in saved.headers["content-disposition"]
    assert json.loads(saved.content)["prediction"] == prediction
    rows = list(csv.DictReader(io.StringIO(client.get(links["csv"]).text)))
    assert [row["class"] for row in rows] == [cell["class"] for cell in prediction["cells"]]
    geojson = client.get(links["geojson"])
    assert geojson.headers["content-type"] == "application/geo+json"
    assert len(geojson.json()["features"]) == len(prediction["cells"])


def test_single_cell_tasks_and_repeated_task_fields(client, make_image) -> None:
    body = _post(client, make_image(32, 32), tasks=["classification", "cell_morphology"]).json()
    prediction = body["prediction"]
    assert prediction["tasks"] == ["classification", "cell_morphology"] and prediction["cells"] == []
    assert prediction["cell_class"] in prediction["cell_class_probabilities"]
    assert len(prediction["cell_attributes"]) == 11 and body["summary"] is None
    # The type comes from the content: a JPEG named .txt is read as a JPEG.
    jpeg = _post(client, make_image(format="JPEG"), filename="notes.txt", tasks="segmentation")
    assert jpeg.status_code == 200 and jpeg.json()["image"]["format"] == "JPEG"
    assert jpeg.json()["prediction"]["mask_foreground_fraction"] is not None


def test_examples_are_synthetic_fields_the_server_can_analyse(client) -> None:
    examples = client.get("/v1/examples").json()
    assert [e["name"] for e in examples] == ["field-0", "field-4", "field-2"]
    assert {e["condition"] for e in examples} == {"healthy", "malaria", "sickle cell"}
    for example in examples:
        image = Image.open(io.BytesIO(client.get(example["url"]).content))
        assert image.format == "PNG" and image.size == (example["width"], example["height"]) == (256, 192)
    png = client.get(examples[1]["url"]).content
    assert _post(client, png, filename="field-4.png", tasks="detection").status_code == 200
    missing = client.get("/v1/examples/field-99.png")
    assert missing.status_code == 404 and "field-0" in missing.json()["message"]


# ------------------------------------------------------------------------------ limits and 4xx
def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def _flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 150, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = [
    # (case, upload, form fields, status, field, words of the message)
    ("empty upload", "empty", {}, 400, "image", "empty"),
    ("non-image bytes", "pdf", {}, 415, "image", "not an image"),
    ("GIF under a PNG name", "gif", {}, 415, "image", "PNG, JPEG, TIFF, BMP, WEBP"),
    ("truncated PNG", "truncated", {}, 400, "image", "could not be decoded"),
    ("oversize bytes", "noise", {}, 413, "image", "max_upload_bytes=40,000"),
    ("too many pixels", "flat", {}, 413, "image", "101x101 = 10,201 pixels is over max_pixels=10,000"),
    ("unknown task", "ok", {"tasks": "detection,colouring"}, 422, "tasks", "unknown task 'colouring'"),
    ("vqa without question", "ok", {"tasks": "vqa"}, 422, "question", "vqa task needs a question"),
    ("mlm without sentence", "ok", {"tasks": "mlm"}, 422, "sentence", "<extra_id_0>"),
    ("threshold above 1", "ok", {"score_threshold": "1.5"}, 422, "score_threshold", "in [0, 1]"),
    ("negative threshold", "ok", {"score_threshold": "-0.1"}, 422, "score_threshold", "in [0, 1]"),
    ("threshold not a number", "ok", {"score_threshold": "high"}, 422, "score_threshold", "'high'"),
    ("NaN threshold", "ok", {"score_threshold": "nan"}, 422, "score_threshold", "in [0, 1]"),
    ("threshold twice", "ok", {"score_threshold": ["0.1", "0.2"]}, 422, "score_threshold", "2 times"),
    ("question too long", "ok", {"question": "why " * 20}, 422, "question", "limit of 50"),
    ("unknown field", "ok", {"colour": "red"}, 422, "colour", "unknown field 'colour'"),
]


@pytest.mark.parametrize(
    ("upload", "fields", "status", "field", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_clear_4xx(limited, make_image, upload, fields, status, field, words) -> None:
    uploads = {
        "empty": lambda: b"", "pdf": lambda: b"%PDF-1.4 certainly not a picture" * 4, "gif": _gif,
        "truncated": lambda: make_image()[:300], "noise": lambda: make_image(150, 150),
        "flat": lambda: _flat_png(101), "ok": make_image,
    }  # fmt: skip
    data = uploads[upload]()
    response = _post(limited, data, **fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS and body["field"] == field and words in body["message"], body
    assert limited.get("/v1/health").json()["queue"]["running"] == 0


def test_malformed_forms_get_a_clear_4xx(limited, make_image) -> None:
    png = make_image()
    cases = [
        # no file part at all, only an option
        (limited.post("/v1/predict", files={"tasks": (None, "detection")}), 400, "image: missing"),
        # the image sent as a text field
        (limited.post("/v1/predict", files={"image": (None, "pixels")}), 400, "must be a file part"),
        # two files
        (
            limited.post("/v1/predict", files=[("image", ("a.png", png)), ("image", ("b.png", png))]),
            400,
            "Too many files",
        ),
        # not multipart
        (limited.post("/v1/predict", json={"image": "field.png"}), 415, "multipart/form-data"),
        (limited.post("/v1/predict", data={"tasks": "detection"}), 415, "multipart/form-data"),
        # unknown routes and methods answer JSON too
        (limited.get("/v1/nothing"), 404, "no such path"),
        (limited.get("/v1/predict"), 405, "GET is not allowed"),
    ]
    for response, status, words in cases:
        assert response.status_code == status and words in response.json()["message"], response.text
        assert set(response.json()) == ERROR_KEYS


def test_a_streamed_upload_is_cut_off_at_the_limit(limited) -> None:
    sent = []

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(100):  # 1 MB, far past the 40,000 + 64 KiB cap
            sent.append(1)
            yield b"\0" * 10_000

    response = limited.post(
        "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and "max_upload_bytes=40,000" in response.json()["message"]
    assert "content-length" not in {k.lower() for k in response.request.headers}


def test_unknown_results_and_downloads_are_404(client, make_image) -> None:
    missing = client.get("/v1/results/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["field"] == "result_id"
    result_id = _post(client, make_image(), tasks="detection").json()["id"]
    wrong = client.get(f"/v1/results/{result_id}/secrets.txt")
    assert wrong.status_code == 404 and "cells.csv" in wrong.json()["message"]


def test_result_store_drops_the_least_recently_used() -> None:
    store = ResultStore(max_results=2, max_bytes=100)
    store.put("a", StoredResult({}, {"x": b"1" * 10}))
    store.put("b", StoredResult({}, {"x": b"1" * 10}))
    store.get("a")  # a is now the most recently used
    store.put("c", StoredResult({}, {"x": b"1" * 10}))
    assert len(store) == 2 and store.get("a") and store.get("c")
    with pytest.raises(Exception, match="last 2 analyses"):
        store.get("b")
    store.put("big", StoredResult({}, {"x": b"1" * 95}))  # over the byte budget with any other
    assert len(store) == 1 and store.get("big")


# ------------------------------------------------------------------------- queue and concurrency
def test_a_full_server_answers_503_with_retry_after(serve_model, make_image, monkeypatch) -> None:
    png = make_image()
    with _client(serve_model, workers=1, queue_size=0) as client:
        started, release = _blocking_predictor(monkeypatch, client.app.state.service)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post, client, png, tasks="detection")
            assert started.wait(60)
            queue = client.get("/v1/health").json()["queue"]
            assert queue["running"] == 1 and queue["capacity"] == 1
            refused = _post(client, png, tasks="detection")
            release.set()
            assert first.result(60).status_code == 200
        assert refused.status_code == 503 and refused.json()["error"] == "unavailable"
        assert int(refused.headers["Retry-After"]) >= 1 and "at capacity" in refused.json()["message"]
        assert _post(client, png, tasks="detection").status_code == 200  # the slot is free again


def test_a_timed_out_request_keeps_its_slot_until_its_inference_ends(serve_model, make_image, monkeypatch):
    png = make_image()
    with _client(serve_model, workers=1, queue_size=1, request_timeout_s=0.5) as client:
        service = client.app.state.service
        started, release = _blocking_predictor(monkeypatch, service)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(_post, client, png, tasks="detection")
            assert started.wait(60)
            waiting = pool.submit(
                _post, client, png, tasks="detection"
            )  # queued behind it: dropped on timeout
            for response in (running.result(60), waiting.result(60)):
                assert response.status_code == 503 and "request_timeout_s=0.5" in response.json()["message"]
                assert "Retry-After" in response.headers
        assert service.queue_state()["running"] == 1  # the started inference still holds its slot
        release.set()
        deadline = time.monotonic() + 30
        while (
            service.queue_state()["running"] + service.queue_state()["waiting"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert service.queue_state() == {
            "running": 0,
            "waiting": 0,
            "workers": 1,
            "queue_size": 1,
            "capacity": 2,
        }


def test_concurrent_requests_share_one_model_and_agree(serve_model, make_image, monkeypatch) -> None:
    with _client(serve_model, workers=3, queue_size=8) as client:
        service = client.app.state.service
        assert service.predictor.model is serve_model
        lock, active, peak = threading.Lock(), [0], [0]
        original = service.predictor.predict_one

        def counted(image, options):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                time.sleep(0.02)  # widen the window in which an unguarded second call would overlap
                return original(image, options)
            finally:
                with lock:
                    active[0] -= 1

        monkeypatch.setattr(service.predictor, "predict_one", counted)
        images = [make_image(seed=0), make_image(seed=1)]
        expected = [
            _post(client, image, score_threshold="0").json()["prediction"]["cells"] for image in images
        ]
        assert expected[0] != expected[1]
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: _post(client, images[i % 2], score_threshold="0"), range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert [r.json()["prediction"]["cells"] for r in responses] == [expected[i % 2] for i in range(8)]
        assert len({r.json()["id"] for r in responses}) == 8
        assert peak[0] == 1  # the model ran one image at a time


# ------------------------------------------------------------------------------- logs and disk
def test_access_log_has_one_json_line_per_request_without_image_data(client, make_image, caplog) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _post(client, make_image(), tasks="detection")
    _post(client, b"", tasks="detection")
    client.get("/v1/health")
    messages = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    lines = [json.loads(message) for message in messages]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/predict", 200),
        ("POST", "/v1/predict", 400),
        ("GET", "/v1/health", 200),
    ]
    assert set(lines[0]) == {"time", "method", "path", "status", "duration_ms", "image_pixels"}
    assert lines[0]["image_pixels"] == 60 * 90 and lines[1]["image_pixels"] is None
    assert lines[0]["duration_ms"] > 0 and all(len(message) < 200 for message in messages)


def test_text_access_log(serve_model, caplog) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with _client(serve_model, log_format="text") as client:
        client.get("/v1/health")
    (line,) = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert "method=GET path=/v1/health status=200 duration_ms=" in line and "image_pixels=None" in line


def test_uploads_stay_in_memory_and_nothing_is_written(
    serve_model, make_image, tmp_path, monkeypatch
) -> None:
    def no_disk(*args, **kwargs):
        raise AssertionError("a request was written to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)  # where a spooled upload would roll over to
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)
    monkeypatch.chdir(tmp_path)
    big = make_image(700, 1000)  # over 1 MiB, the size past which form parsers spool files to disk
    assert len(big) > 1024 * 1024
    with _client(serve_model) as client:
        response = _post(client, big, tasks="classification")
    assert response.status_code == 200, response.text
    assert list(tmp_path.iterdir()) == []


def test_save_requests_writes_each_upload_and_result(serve_model, make_image, tmp_path) -> None:
    png = make_image()
    with _client(serve_model, save_requests=True, requests_dir=tmp_path / "saved") as client:
        body = _post(client, png, tasks="detection", disease="malaria").json()
    folder = tmp_path / "saved" / body["id"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "cells.csv",
        "cells.geojson",
        "overlay.png",
        "prediction.json",
        "request.json",
        "upload.png",
    ]
    assert (folder / "upload.png").read_bytes() == png
    assert json.loads((folder / "request.json").read_text())["disease"] == "malaria"


# ---------------------------------------------------------------------------- settings and CLI
@pytest.mark.parametrize(
    "field, value",
    [
        ("host", ""),
        ("port", 70000),
        ("max_upload_bytes", 0),
        ("max_pixels", -1),
        ("workers", 0),
        ("queue_size", -1),
        ("request_timeout_s", 0),
        ("accepted_formats", ("GIF",)),
        ("log_format", "xml"),
        ("save_requests", True),
        ("device", "tpu"),
        ("max_text_chars", 1.5),
    ],
)
def test_settings_are_validated(field: str, value: Any) -> None:
    name = "requests_dir" if field == "save_requests" else field
    with pytest.raises(ValidationError, match=f"ServeSettings.{name} "):
        ServeSettings(**{field: value})


def test_serve_command_listens_on_loopback_by_default(serve_model_dir, monkeypatch, capsys) -> None:
    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(app=app, **options))
    monkeypatch.setattr("unihema.serve.logs.configure_logging", lambda: None)
    assert main(["serve", "--model", str(serve_model_dir), "--queue-size", "3", "--log-format", "text"]) == 0
    assert (calls["host"], calls["port"], calls["access_log"]) == ("127.0.0.1", 8000, False)
    settings = calls["app"].state.settings
    assert settings.capacity == 2 + 3 and settings.log_format == "text" and settings.save_requests is False
    with TestClient(calls["app"]) as client:  # the app built from the model folder works
        assert client.get("/v1/model").json()["input_sizes"]["detection"]["max_side"] == 96
    assert main(["serve", "--model", str(serve_model_dir), "--workers", "0"]) == 2
    assert "ServeSettings.workers must be an integer >= 1, got 0" in capsys.readouterr().err
