"""download(): resume, servers without Range, checksums, HTTP errors; all against a local server."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from unihema.data.download import ChecksumError, DownloadError, download, filename_from_url

PAYLOAD = random.Random(0).randbytes(150_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 4096


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/slow.bin":
            time.sleep(1.5)
        if self.path not in ("/data.bin", "/download/1", "/slow.bin"):
            self.send_error(404, "Not Found")
            return
        body, status = PAYLOAD, 200
        requested = self.headers.get("Range")
        start = 0
        if requested and server.ranges:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416, "Range Not Satisfiable")
                return
            body, status = PAYLOAD[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        if self.path == "/download/1":
            self.send_header("Content-Disposition", 'attachment; filename="archive.zip"')
        self.end_headers()
        if server.drops > 0:
            # Announce the whole body, send half of it, then drop the connection.
            server.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ranges: bool = True, drops: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ranges, self.drops = ranges, drops
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str = "/data.bin") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(**kwargs: object) -> _Server:
        server = _Server(**kwargs)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_writes_the_final_file(serve, tmp_path: Path) -> None:
    server = serve()
    path = download(
        server.url(),
        tmp_path / "out",
        sha256=PAYLOAD_SHA,
        size=len(PAYLOAD),
        progress=False,
        chunk_size=CHUNK,
    )
    assert path == tmp_path / "out" / "data.bin"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.bin"]  # no .part left
    # A verified file already there is returned without asking the server again.
    assert download(server.url(), tmp_path / "out", sha256=PAYLOAD_SHA, progress=False) == path
    assert len(server.requests) == 1


def test_interrupted_transfer_is_resumed_with_a_range_request(serve, tmp_path: Path) -> None:
    server = serve(drops=1)
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*interrupted.*resume") as caught:
        download(server.url(), tmp_path, progress=False, chunk_size=CHUNK, retries=0)
    assert server.url() in str(caught.value)
    part = tmp_path / "data.bin.part"
    have = part.stat().st_size
    assert 0 < have < len(PAYLOAD)
    assert not (tmp_path / "data.bin").exists()  # never a partial file under the final name

    path = download(server.url(), tmp_path, sha256=PAYLOAD_SHA, progress=False, chunk_size=CHUNK)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/data.bin", f"bytes={have}-")
    assert not part.exists()


def test_a_dropped_connection_is_resumed_within_one_call(serve, tmp_path: Path) -> None:
    server = serve(drops=2)
    path = download(server.url(), tmp_path, size=len(PAYLOAD), progress=False, chunk_size=CHUNK, retries=2)
    assert path.read_bytes() == PAYLOAD
    assert [rng for _, rng in server.requests][0] is None
    assert all(rng is not None and rng.startswith("bytes=") for _, rng in server.requests[1:])
    assert len(server.requests) == 3


def test_a_server_ignoring_range_restarts_from_zero(serve, tmp_path: Path) -> None:
    server = serve(ranges=False)
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes that must not stay in front")
    path = download(server.url(), tmp_path, sha256=PAYLOAD_SHA, progress=False, chunk_size=CHUNK)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=39-")]


def test_checksum_or_size_mismatch_removes_the_bad_file(serve, tmp_path: Path) -> None:
    server = serve()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError, match=f"SHA-256 mismatch, expected {wrong} but got {PAYLOAD_SHA}"):
        download(server.url(), tmp_path, sha256=wrong, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChecksumError, match=f"size mismatch, expected 10 bytes but got {len(PAYLOAD)}"):
        download(server.url(), tmp_path, size=10, progress=False)
    assert list(tmp_path.iterdir()) == []
    # An old bad copy under the final name is replaced by a good one.
    (tmp_path / "data.bin").write_bytes(b"corrupt")
    assert download(server.url(), tmp_path, sha256=PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD


def test_http_errors_and_timeouts_name_the_url(serve, tmp_path: Path) -> None:
    server = serve()
    missing = server.url("/missing.bin")
    with pytest.raises(DownloadError, match="HTTP error 404") as caught:
        download(missing, tmp_path, progress=False)
    assert missing in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    slow = server.url("/slow.bin")
    with pytest.raises(DownloadError) as caught:
        download(slow, tmp_path, progress=False, timeout=0.3, retries=0)
    assert slow in str(caught.value)
    assert not (tmp_path / "slow.bin").exists()


def test_file_name_from_the_server_when_the_url_has_none(serve, tmp_path: Path) -> None:
    server = serve()
    path = download(server.url("/download/1"), tmp_path, progress=False)
    assert path.name == "archive.zip" and path.read_bytes() == PAYLOAD
    assert (
        download(server.url("/data.bin"), tmp_path, filename="renamed.bin", progress=False).name
        == "renamed.bin"
    )


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only http"):
        download("ftp://example.org/file.zip", tmp_path)
    with pytest.raises(ValueError, match="64 hex"):
        download("http://127.0.0.1:9/file.zip", tmp_path, sha256="xyz")
    with pytest.raises(ValueError, match="cannot derive a file name"):
        filename_from_url("http://127.0.0.1:9/")
    assert filename_from_url("https://h/a/b%20c.zip?x=1") == "b c.zip"
