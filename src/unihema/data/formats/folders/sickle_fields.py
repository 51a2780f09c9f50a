"""The ``sickle_fields`` layout: ``[Datasets/]Positive/{Labelled,Unlabelled}/<n>.jpg`` and
``Negative/Clear/<n>.jpg`` (the Uganda sickle-cell fields).

Whole fields of view are labelled ``sickle-positive field`` / ``sickle-negative field``. ``Labelled``
copies carry boxes drawn on the pixels, so only the ``Unlabelled`` copy of each field is loaded; a
``Labelled`` copy is recorded as fixed on purpose, and an ``Unlabelled`` copy that is byte-identical to its
``Labelled`` one (it carries the drawn boxes too) is skipped. Negative fields not marked ``Clear`` (poor
quality) are not loaded.
"""

from __future__ import annotations

from unihema.data.formats._common import IMAGE_EXTENSIONS, file_digest, is_hidden, visible_dirs
from unihema.data.formats.base import WrongFormatError
from unihema.data.formats.folders.layout import FolderContext, ImageEntry, drop_identical, scan_images
from unihema.data.schema import FileImage, Sample, Task
from unihema.data.vocab import cell_index

SICKLE_POSITIVE = "sickle-positive field"
SICKLE_NEGATIVE = "sickle-negative field"


def read_sickle_fields(context: FolderContext) -> list[Sample]:
    """One classification sample per clean positive field and per clear negative field."""
    record = context.record
    base = context.layout.base
    unlabelled_dir, labelled_dir = base / "Positive" / "Unlabelled", base / "Positive" / "Labelled"
    positives = scan_images(context, unlabelled_dir)
    labelled = {p.name: p for p in sorted(labelled_dir.iterdir())} if labelled_dir.is_dir() else {}
    clean_names = {p.name for p, _ in positives}

    entries: list[ImageEntry] = []
    for path, size in positives:
        boxed = labelled.get(path.name)
        if (
            boxed is not None
            and boxed.stat().st_size == path.stat().st_size
            and file_digest(boxed) == file_digest(path)
        ):
            record.skip(
                path,
                f"byte-identical to {record.relative(boxed)}: this 'Unlabelled' copy carries the drawn boxes too",
            )
            continue
        entries.append(ImageEntry(path, SICKLE_POSITIVE, "Positive/Unlabelled", None, size))
    for name, path in labelled.items():
        if is_hidden(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
            record.skip(path, "not an image file", warn=not is_hidden(path))
        elif name in clean_names:
            record.fix(
                path,
                f"boxes are drawn on the pixels; the clean copy Positive/Unlabelled/{name} is used instead",
            )
        else:
            record.skip(path, "boxes are drawn on the pixels and there is no clean Positive/Unlabelled copy")

    for sub in visible_dirs(base / "Negative"):
        if sub.name.lower() != "clear":
            record.skip(sub, "negative fields not marked 'Clear' (poor quality) are not loaded")
            continue
        entries.extend(
            ImageEntry(p, SICKLE_NEGATIVE, "Negative/Clear", None, s) for p, s in scan_images(context, sub)
        )
    if not entries:
        raise WrongFormatError(f"{base}: sickle field folders found, but no loadable image in them")
    entries = drop_identical(entries, record)
    return [
        Sample(
            image=FileImage(e.path),
            task=Task.CLASSIFICATION,
            dataset=context.dataset,
            sample_id=record.relative(e.path),
            disease=context.disease,
            cell_class=cell_index(e.label),
            image_size=e.size,
            source_path=e.path,
            extra={"folder": e.folder_label},
        )
        for e in entries
    ]
