"""The server's settings: :class:`ServeSettings`, validated when built (``unihema serve`` flags set it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from unihema.validation import is_int, is_number, require

ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
"""Image formats the server decodes (PIL format names, recognised from the content, never the file name)."""

LOG_FORMATS = ("json", "text")
DEVICES = ("auto", "cpu", "cuda")
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """How the server listens, what it accepts and how much work it takes on.

    Attributes:
        host: address to listen on (default ``"127.0.0.1"``: this machine only; the server has no
            authentication, so expose it to a network only behind a proxy that adds it).
        port: TCP port (default 8000; 0 picks a free one).
        max_upload_bytes: largest accepted image file in bytes (default 32 MiB); larger uploads get 413.
        max_pixels: largest accepted image in pixels, width x height, read from the image header before
            decoding (default 36,000,000: a 6000 x 6000 field); larger images get 413.
        accepted_formats: PIL format names accepted (default PNG, JPEG, TIFF, BMP, WEBP); others get 415.
        workers: inference worker threads (default 2). The model runs one image at a time (its forward
            pass, tokenizer and thread pool are shared); a second worker decodes the next upload and encodes
            the previous result's overlay and exports meanwhile.
        queue_size: requests that may wait for a worker beyond the ``workers`` being served (default 8);
            past ``workers + queue_size`` requests in flight the server answers 503 with ``Retry-After``.
        request_timeout_s: seconds a request may wait and run before the server answers 503 (default 120;
            the queue slot stays taken until a started inference ends).
        max_results: analysed results kept in memory for their downloads, least recently used dropped
            first (default 32).
        max_result_bytes: total bytes of the kept results (encoded overlays and exports; default 256 MiB).
        max_text_chars: longest accepted question, sentence or disease text (default 500 characters).
        log_format: access log lines as ``"json"`` (default: one JSON object per request) or ``"text"``.
        save_requests: write each upload, its options and its result under ``requests_dir`` (default False:
            nothing from a request is written to disk).
        requests_dir: folder for ``save_requests`` (required when it is True).
        device: where the model runs: ``"auto"`` (CUDA when available, default), ``"cpu"`` or ``"cuda"``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 32 * MiB
    max_pixels: int = 36_000_000
    accepted_formats: tuple[str, ...] = ACCEPTED_FORMATS
    workers: int = 2
    queue_size: int = 8
    request_timeout_s: float = 120.0
    max_results: int = 32
    max_result_bytes: int = 256 * MiB
    max_text_chars: int = 500
    log_format: str = "json"
    save_requests: bool = False
    requests_dir: Path | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        require(_is_host(self.host), "ServeSettings.host", "must be an IP address or a host name", self.host)
        require(
            is_int(self.port) and 0 <= self.port <= 65535,
            "ServeSettings.port",
            "must be in [0, 65535]",
            self.port,
        )
        for name, least in (
            ("max_upload_bytes", 1),
            ("max_pixels", 1),
            ("workers", 1),
            ("queue_size", 0),
            ("max_results", 1),
            ("max_result_bytes", 1),
            ("max_text_chars", 1),
        ):
            value = getattr(self, name)
            require(
                is_int(value) and value >= least,
                f"ServeSettings.{name}",
                f"must be an integer >= {least}",
                value,
            )
        require(
            is_number(self.request_timeout_s) and self.request_timeout_s > 0,
            "ServeSettings.request_timeout_s",
            "must be a positive number of seconds",
            self.request_timeout_s,
        )
        object.__setattr__(self, "accepted_formats", tuple(str(f).upper() for f in self.accepted_formats))
        require(
            bool(self.accepted_formats) and set(self.accepted_formats) <= set(ACCEPTED_FORMATS),
            "ServeSettings.accepted_formats",
            f"must be a non-empty subset of {ACCEPTED_FORMATS}",
            self.accepted_formats,
        )
        require(
            self.log_format in LOG_FORMATS,
            "ServeSettings.log_format",
            f"must be one of {LOG_FORMATS}",
            self.log_format,
        )
        require(self.device in DEVICES, "ServeSettings.device", f"must be one of {DEVICES}", self.device)
        require(
            isinstance(self.save_requests, bool),
            "ServeSettings.save_requests",
            "must be True or False",
            self.save_requests,
        )
        if self.requests_dir is not None:
            object.__setattr__(self, "requests_dir", Path(self.requests_dir))
        require(
            not self.save_requests or self.requests_dir is not None,
            "ServeSettings.requests_dir",
            "must be set when save_requests is True",
        )

    @property
    def capacity(self) -> int:
        """Requests in flight (being served or waiting) before the server answers 503."""
        return self.workers + self.queue_size


def _is_host(host: object) -> bool:
    if not isinstance(host, str) or not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)
