"""The per-corpus manifest: one JSON line per :class:`~unihema.data.schema.Sample`.

A manifest is built once per corpus (readers are slow: they parse XML, CSV and folder trees) and then
read by every training run. Each line holds one sample: the image as a path (+ optional crop), the
mask as a path with its foreground mapping, and the annotations inline (boxes, labels, attributes,
class, text, ``extra``). Relative paths in a manifest are resolved against the manifest's folder, so a
manifest written with ``relative_paths=True`` can be moved together with its data.

:class:`ManifestDataset` gives random access without parsing the file: it stores only the byte offset
of each line (an ``int64`` array, 8 bytes per sample), and parses one line per ``__getitem__``. A
700,000-sample corpus is thus indexed in about 5.6 MB, whatever its annotations hold.

In-memory images (:class:`~unihema.data.schema.ArrayImage`, :class:`~unihema.data.schema.ArrayMask`)
have no path. :func:`write_manifest` refuses them unless ``array_dir`` is given, in which case they
are written there as PNG files first (lossless) and referenced by path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unihema.atomic import atomic_save_image
from unihema.data.schema import ArrayImage, ArrayMask, FileImage, FileMask, Sample, Task, encodes_as_utf8

MANIFEST_VERSION = 1
"""Value of the ``"v"`` key of every line; bumped when the line layout changes incompatibly."""

_SCAN_CHUNK_BYTES = 1 << 24  # 16 MiB per read when indexing line offsets
_FIRST_READ_BYTES = 1 << 13
_NEWLINE = ord("\n")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class ManifestError(ValueError):
    """A manifest line is malformed, or a sample cannot be written to a manifest."""


# --------------------------------------------------------------------------------------------------
# Sample <-> JSON record


def sample_to_record(
    sample: Sample, *, base_dir: Path | None = None, array_dir: Path | None = None
) -> dict[str, Any]:
    """The JSON-ready dict of one sample (see :func:`write_manifest` for the options)."""
    where = f"sample {sample.dataset}/{sample.sample_id}"
    image, mask = sample.image, sample.mask
    if isinstance(image, ArrayImage) or isinstance(mask, ArrayMask):
        if array_dir is None:
            raise ManifestError(
                f"{where}: in-memory images/masks cannot be referenced by a manifest; pass array_dir= "
                "to write them as PNG files first"
            )
        image, mask = _materialise_arrays(sample, array_dir)
    if not isinstance(image, FileImage):
        raise ManifestError(f"{where}: image of type {type(image).__name__} cannot be written to a manifest")
    if mask is not None and not isinstance(mask, FileMask):
        raise ManifestError(f"{where}: mask of type {type(mask).__name__} cannot be written to a manifest")
    record: dict[str, Any] = {
        "v": MANIFEST_VERSION,
        "task": sample.task.value,
        "dataset": sample.dataset,
        "sample_id": sample.sample_id,
        "split": sample.split,
        "disease": sample.disease,
        "prompt": sample.prompt,
        "image": {"path": _path_str(image.path, base_dir), "crop": _opt_list(image.crop)},
        "image_size": _opt_list(sample.image_size),
        "source_path": None if sample.source_path is None else _path_str(sample.source_path, base_dir),
        "boxes": sample.boxes.tolist(),
        "box_labels": sample.box_labels.tolist(),
        "box_attributes": sample.box_attributes.tolist(),
        "mask": None,
        "cell_class": sample.cell_class,
        "cell_attributes": None if sample.cell_attributes is None else sample.cell_attributes.tolist(),
        "text_target": sample.text_target,
        "extra": sample.extra,
    }
    if mask is not None:
        record["mask"] = {
            "path": _path_str(mask.path, base_dir),
            "foreground": list(mask.foreground),
            "threshold": mask.threshold,
            "crop": _opt_list(mask.crop),
        }
    return record


def record_to_sample(record: dict[str, Any], *, base_dir: Path | None = None, where: str = "") -> Sample:
    """Rebuild a :class:`Sample` from :func:`sample_to_record`'s dict; ``ManifestError`` on bad input."""
    try:
        version = record.get("v")
        if version != MANIFEST_VERSION:
            raise ManifestError(f"{where}: manifest version {version!r}, expected {MANIFEST_VERSION}")
        image = record["image"]
        mask = record.get("mask")
        return Sample(
            image=FileImage(_resolve(image["path"], base_dir), crop=_opt_tuple(image.get("crop"))),
            task=Task(record["task"]),
            dataset=record["dataset"],
            sample_id=record["sample_id"],
            split=record.get("split"),
            disease=record.get("disease"),
            prompt=record.get("prompt", ""),
            boxes=np.asarray(record.get("boxes", []), dtype=np.float32).reshape(-1, 4),
            box_labels=np.asarray(record.get("box_labels", []), dtype=np.int64),
            box_attributes=_box_attributes(record),
            mask=None
            if mask is None
            else FileMask(
                _resolve(mask["path"], base_dir),
                foreground=tuple(mask.get("foreground", (255,))),
                threshold=mask.get("threshold"),
                crop=_opt_tuple(mask.get("crop")),
            ),
            cell_class=record.get("cell_class"),
            cell_attributes=None
            if record.get("cell_attributes") is None
            else np.asarray(record["cell_attributes"], dtype=np.int64),
            text_target=record.get("text_target"),
            image_size=_opt_tuple(record.get("image_size")),
            source_path=None
            if record.get("source_path") is None
            else _resolve(record["source_path"], base_dir),
            extra=record.get("extra") or {},
        )
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{where}: malformed manifest record ({type(err).__name__}: {err})") from err


def _box_attributes(record: dict[str, Any]) -> np.ndarray:
    from unihema.data.vocab import FOV_ATTRIBUTES

    values = record.get("box_attributes", [])
    return np.asarray(values, dtype=np.int64).reshape(-1, len(FOV_ATTRIBUTES))


def _materialise_arrays(sample: Sample, array_dir: Path) -> tuple[Any, Any]:
    """Write in-memory image/mask of ``sample`` as PNG under ``array_dir``; return file references."""
    stem = _UNSAFE_NAME_CHARS.sub("_", f"{sample.dataset}__{sample.task.value}__{sample.sample_id}")
    array_dir.mkdir(parents=True, exist_ok=True)
    image, mask = sample.image, sample.mask
    if isinstance(image, ArrayImage):
        path = array_dir / f"{stem}.png"
        atomic_save_image(image.load(), path, format="PNG")
        image = FileImage(path)
    if isinstance(mask, ArrayMask):
        path = array_dir / f"{stem}.mask.png"
        atomic_save_image(Image.fromarray(mask.load().astype(np.uint8) * 255, mode="L"), path, format="PNG")
        mask = FileMask(path, foreground=(255,))
    return image, mask


def _path_str(path: Path | str, base_dir: Path | None) -> str:
    if base_dir is None:
        return str(path)
    return os.path.relpath(Path(path).resolve(), base_dir.resolve())


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path)
    if base_dir is not None and not p.is_absolute():
        return base_dir / p
    return p


def _opt_list(value: Sequence[Any] | None) -> list[Any] | None:
    return None if value is None else [int(v) for v in value]


def _opt_tuple(value: Sequence[Any] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and paths are common in reader ``extra`` dicts.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------------
# Writing and reading


def write_manifest(
    samples: Iterable[Sample],
    path: str | os.PathLike[str],
    *,
    relative_paths: bool = False,
    array_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Write ``samples`` as a JSON Lines manifest at ``path``, atomically; returns the sample count.

    Args:
        samples: any iterable (streamed: the samples are not held in memory).
        path: the manifest file; its folder is created if needed.
        relative_paths: store image/mask/source paths relative to the manifest's folder.
        array_dir: folder where in-memory images and masks are saved as PNG before being referenced
            (relative to the manifest's folder when not absolute). Without it such samples raise
            :class:`ManifestError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base_dir = path.parent if relative_paths else None
    arrays = (
        None
        if array_dir is None
        else (path.parent / array_dir if not Path(array_dir).is_absolute() else Path(array_dir))
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for sample in samples:
                record = sample_to_record(sample, base_dir=base_dir, array_dir=arrays)
                try:
                    line = json.dumps(record, ensure_ascii=False, default=_json_default, allow_nan=False)
                    if not encodes_as_utf8(line):  # a file name that is not UTF-8: kept as \udcXX escapes
                        line = json.dumps(record, default=_json_default, allow_nan=False)
                except (TypeError, ValueError) as err:
                    raise ManifestError(
                        f"sample {sample.dataset}/{sample.sample_id}: cannot be written as JSON ({err}); "
                        "check its `extra` values"
                    ) from err
                handle.write(line)
                handle.write("\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count


def iter_manifest(path: str | os.PathLike[str]) -> Iterator[Sample]:
    """Stream the samples of a manifest, one line at a time (blank lines are ignored)."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield _parse_line(line, path, line_number)


def _parse_line(line: str | bytes, path: Path, line_number: int | str) -> Sample:
    where = f"{path}:{line_number}"
    try:
        record = json.loads(line)
    except ValueError as err:
        raise ManifestError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record_to_sample(record, base_dir=path.parent, where=where)


def index_line_offsets(path: str | os.PathLike[str]) -> np.ndarray:
    """Byte offsets (``int64``) of the start of every non-empty line of a file, read in large chunks."""
    starts: list[np.ndarray] = []
    with open(path, "rb") as handle:
        position = 0
        line_start = 0
        while chunk := handle.read(_SCAN_CHUNK_BYTES):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == _NEWLINE).astype(np.int64)
            ends = newlines + position
            begins = np.concatenate(([line_start], ends[:-1] + 1)) if len(ends) else np.zeros(0, np.int64)
            keep = ends > begins  # drop empty lines
            starts.append(begins[keep])
            if len(ends):
                line_start = int(ends[-1]) + 1
            position += len(chunk)
        if position > line_start:  # last line without a trailing newline
            starts.append(np.asarray([line_start], dtype=np.int64))
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


class ManifestDataset(Sequence[Sample]):
    """Random access to the samples of a manifest, keeping only line offsets in memory.

    ``dataset[i]`` reads and parses line ``i``. Reads use ``os.pread`` on a descriptor opened once per
    process, so the object can be shared with DataLoader worker processes (fork or spawn).

    Args:
        path: the manifest file.
        offsets: precomputed line offsets (e.g. a filtered subset from :meth:`where`); scanned when omitted.
    """

    def __init__(self, path: str | os.PathLike[str], offsets: np.ndarray | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: manifest not found")
        self.offsets = (
            index_line_offsets(self.path) if offsets is None else np.asarray(offsets, dtype=np.int64)
        )
        self._fd: int | None = None
        self._fd_pid: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"ManifestDataset indices must be integers, got {type(index).__name__}")
        n = len(self.offsets)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for manifest {self.path} with {n} samples")
        index = int(index) % n
        return _parse_line(self.read_line(index), self.path, f"sample {index}")

    def read_line(self, index: int) -> bytes:
        """Raw bytes of line ``index`` (without the newline)."""
        fd = self._descriptor()
        position = int(self.offsets[index])
        chunks: list[bytes] = []
        block_size = _FIRST_READ_BYTES  # most lines fit; long ones are read in doubling blocks
        while True:
            block = _pread(fd, block_size, position)
            if not block:
                break
            cut = block.find(b"\n")
            if cut >= 0:
                chunks.append(block[:cut])
                break
            chunks.append(block)
            position += len(block)
            block_size *= 2
        return b"".join(chunks)

    def where(
        self,
        *,
        task: Task | str | None = None,
        split: str | None = None,
        dataset: str | None = None,
    ) -> ManifestDataset:
        """A view on the lines matching every given field (one streaming pass; offsets only)."""
        keep = []
        for i in range(len(self)):
            record = json.loads(self.read_line(i))
            if task is not None and record.get("task") != Task(task).value:
                continue
            if split is not None and record.get("split") != split:
                continue
            if dataset is not None and record.get("dataset") != dataset:
                continue
            keep.append(i)
        return ManifestDataset(self.path, offsets=self.offsets[np.asarray(keep, dtype=np.int64)])

    def _descriptor(self) -> int:
        # A descriptor inherited through fork shares nothing that pread depends on, but reopening per
        # process keeps spawn-started workers (which unpickle without it) working too.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fd_pid = os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)  # type: ignore[arg-type]


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # platforms without pread (Windows): one descriptor per process
    return os.read(fd, size)
