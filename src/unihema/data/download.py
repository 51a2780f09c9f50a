"""Download a file over HTTP(S) with resume, size / SHA-256 verification and an atomic final write.

The bytes go to ``<dest_dir>/<filename>.part`` first. An interrupted transfer leaves that file behind and
the next attempt (a retry within the same call, or a later call) asks the server for the rest with an
HTTP ``Range`` request; a server that ignores ``Range`` (answers ``200`` with the whole file) is handled
by starting over. Only a complete, verified file is moved to its final name (``os.replace``), so a file
under the final name is never partial and never fails its checksum.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

DEFAULT_CHUNK_SIZE = 1 << 16
"""Bytes read per chunk (64 KiB)."""

DEFAULT_TIMEOUT_S = 30.0
"""Seconds to wait for the server to connect or send the next chunk."""

DEFAULT_RETRIES = 3
"""How many times an interrupted transfer is resumed within one call before giving up."""

PART_SUFFIX = ".part"
USER_AGENT = "unihema-download/1"
_HASH_BLOCK = 1 << 20


class DownloadError(OSError):
    """A download failed (HTTP error, timeout, dropped connection, bad URL); the message names the URL."""


class ChecksumError(DownloadError):
    """The downloaded file's size or SHA-256 is not the expected one; the bad file was removed."""


def file_sha256(path: Path, block_size: int = _HASH_BLOCK) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def filename_from_url(url: str) -> str:
    """The last path component of ``url`` (percent-decoded); ``ValueError`` when there is none."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in (".", ".."):
        raise ValueError(f"{url}: cannot derive a file name from the URL; pass filename=")
    return name


def _safe_name(name: str, url: str) -> str:
    cleaned = Path(name.replace("\\", "/")).name.strip()
    if not cleaned or cleaned in (".", "..") or re.search(r"[\x00-\x1f]", cleaned):
        raise ValueError(f"{url}: unusable file name {name!r}")
    return cleaned


def _verify(path: Path, url: str, sha256: str | None, size: int | None, remove_on_error: bool) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        if remove_on_error:
            path.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: size mismatch, expected {size} bytes but got {actual_size}")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual.lower() != sha256.lower():
            if remove_on_error:
                path.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: SHA-256 mismatch, expected {sha256.lower()} but got {actual}")


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (callers choose http/https urls)


def download(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    filename: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> Path:
    """Download ``url`` into ``dest_dir`` and return the final path.

    Args:
        url: ``http://`` or ``https://`` URL of the file.
        dest_dir: destination folder (created if missing).
        filename: final file name; default: the server's ``Content-Disposition`` name when the URL's last
            path component has no extension, else that component.
        sha256: expected hex SHA-256; verified after the transfer when given.
        size: expected size in bytes; verified after the transfer when given.
        progress: show a tqdm progress bar on stderr.
        chunk_size: bytes per read.
        timeout: seconds to wait for connecting or for the next chunk.
        retries: how many times a dropped transfer is resumed within this call.

    An existing final file that passes the known checks is returned without network access. A
    ``<filename>.part`` left by an earlier attempt is resumed.

    Raises:
        ValueError: bad arguments (scheme, chunk size, no usable file name).
        DownloadError: HTTP error, timeout or dropped connection after ``retries`` resumes (the partial
            ``.part`` file is kept for the next call).
        ChecksumError: size or SHA-256 mismatch (the bad file is deleted, never left under the final name).
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// URLs can be downloaded")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)

    url_name = filename_from_url(url) if filename is None else _safe_name(filename, url)
    # Without an explicit name, a URL like ".../download/1" gets its name from the server's answer.
    name_from_server = filename is None and not Path(url_name).suffix
    final = dest / url_name
    if not name_from_server and final.is_file():
        try:
            _verify(final, url, sha256, size, remove_on_error=False)
            return final
        except ChecksumError:
            final.unlink()  # an old, bad copy: fetch it again
    part = dest / (url_name + PART_SUFFIX)

    attempts = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:
                # The part may already hold every byte; if not, start over.
                if size is not None and offset == size:
                    break
                part.unlink()
                error.close()
                attempts += 1
                if attempts > retries:
                    raise DownloadError(f"{url}: server refused to resume (HTTP 416)") from error
                continue
            error.close()
            raise DownloadError(f"{url}: HTTP error {error.code} {error.reason}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"{url}: cannot connect ({reason})") from error

        with response:
            if name_from_server:
                server_name = response.headers.get_filename()
                if server_name:
                    final = dest / _safe_name(server_name, url)
            status = response.status
            if (
                offset
                and status == 206
                and _content_range_start(response.headers.get("Content-Range")) == offset
            ):
                mode = "ab"
            else:
                # 200 (Range ignored) or a partial answer we did not ask for: take the whole body.
                offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None and length.isdigit() else size
            try:
                with (
                    open(part, mode) as handle,
                    tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=final.name, disable=not progress, leave=False,
                    ) as bar,
                ):  # fmt: skip
                    while chunk := response.read(chunk_size):
                        handle.write(chunk)
                        bar.update(len(chunk))
                received = part.stat().st_size
                if total is not None and length is not None and received < total:
                    raise http.client.IncompleteRead(b"", total - received)
                break
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
                attempts += 1
                if attempts > retries:
                    have = part.stat().st_size if part.is_file() else 0
                    raise DownloadError(
                        f"{url}: transfer interrupted after {have} bytes ({type(error).__name__}); "
                        f"run again to resume from {part.name}"
                    ) from error

    _verify(part, url, sha256, size, remove_on_error=True)
    os.replace(part, final)
    return final


__all__ = ["ChecksumError", "DownloadError", "download", "file_sha256", "filename_from_url"]
