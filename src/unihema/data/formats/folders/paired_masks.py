"""The ``paired_masks`` layout: ``[5-fold/]originais/<round>/<split>/<class>/<stem>.jpg`` with a parallel
``segmentadas/<round>/<split>/<class>/<stem>.tif`` mask tree (erythrocytesIDB1 individual cells).

Images give classification samples; image + mask give segmentation samples. Images and masks are paired by
class and stem, *not* by split folder (the two trees disagree for some stems; the image's split is used and
the disagreement is recorded as fixed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unihema.data.formats._common import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    check_image,
    identical_groups,
    is_hidden,
    visible_dirs,
)
from unihema.data.formats.base import WrongFormatError
from unihema.data.formats.folders.layout import (
    FolderContext,
    ImageEntry,
    drop_identical,
    resolve_class,
    scan_images,
)
from unihema.data.schema import FileImage, FileMask, Sample, Task
from unihema.data.vocab import cell_index


def _round_dir(tree: Path, fold: str | None) -> Path:
    if fold is not None:
        chosen = tree / fold
        if not chosen.is_dir():
            rounds = [d.name for d in visible_dirs(tree)]
            raise ValueError(f"folders reader: fold {fold!r} not found under {tree} (found {rounds})")
        return chosen
    rounds = [d for d in visible_dirs(tree) if d.name.lower().startswith(("round", "fold"))]
    return rounds[0] if rounds else tree


def _split_class_files(tree: Path) -> Iterable[tuple[str | None, Path]]:
    """``(split, class_dir)`` for ``<split>/<class>/`` (or ``<class>/`` without split folders)."""
    for sub in visible_dirs(tree):
        if sub.name.lower() in SPLIT_NAMES:
            for class_dir in visible_dirs(sub):
                yield SPLIT_NAMES[sub.name.lower()], class_dir
        else:
            yield None, sub


def read_paired_masks(context: FolderContext) -> list[Sample]:
    """Classification and/or segmentation samples (``context.tasks``) of one round of the two trees."""
    record, base = context.record, context.layout.base
    image_tree = _round_dir(base / "originais", context.fold)
    mask_tree = base / "segmentadas" / image_tree.relative_to(base / "originais")
    if not mask_tree.is_dir():
        raise ValueError(f"folders reader: mask folder {mask_tree} for {image_tree} is missing")

    # Masks indexed by (class folder, stem): the trees' split folders disagree for some stems.
    masks: dict[tuple[str, str], list[tuple[str | None, Path]]] = defaultdict(list)
    for split, class_dir in _split_class_files(mask_tree):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
                masks[(class_dir.name, path.stem)].append((split, path))
            elif path.is_file():
                record.skip(path, "not a mask image", warn=not is_hidden(path))

    entries: list[ImageEntry] = []
    for split, class_dir in _split_class_files(image_tree):
        label = resolve_class(class_dir.name, {})  # this layout's folders are vocabulary names
        if label is None:
            record.skip(class_dir, f"class folder {class_dir.name!r} is not a vocabulary class or alias")
            continue
        entries.extend(
            ImageEntry(p, label, class_dir.name, split, s) for p, s in scan_images(context, class_dir)
        )
    if not entries:
        raise WrongFormatError(f"{image_tree}: no loadable image in the class folders")
    entries = drop_identical(entries, record)

    samples: list[Sample] = []
    used_masks: list[Path] = []
    for entry in entries:
        rel = record.relative(entry.path)
        common: dict[str, Any] = dict(
            image=FileImage(entry.path), dataset=context.dataset, split=entry.split, disease=context.disease,
            image_size=entry.size, source_path=entry.path,
        )  # fmt: skip
        if Task.CLASSIFICATION in context.tasks:
            samples.append(
                Sample(task=Task.CLASSIFICATION, sample_id=rel, cell_class=cell_index(entry.label),
                       extra={"folder": entry.folder_label}, **common)
            )  # fmt: skip
        candidates = masks.pop((entry.folder_label, entry.path.stem), [])
        if not candidates:
            record.skip(
                f"{rel}#mask",
                f"no mask {entry.folder_label}/{entry.path.stem}.* under {record.relative(mask_tree)}; "
                "no segmentation sample for this image",
            )
            continue
        same_split = [c for c in candidates if c[0] == entry.split]
        if len(candidates) > 1 and len(same_split) != 1:
            names = ", ".join(record.relative(p) for _, p in candidates)
            record.skip(f"{rel}#mask", f"several masks for {entry.folder_label}/{entry.path.stem}: {names}")
            continue
        mask_split, mask_path = same_split[0] if same_split else candidates[0]
        mask_rel = record.relative(mask_path)
        if mask_split != entry.split:
            record.fix(
                mask_rel,
                f"mask is under the {mask_split!r} split folder but its image {rel} under {entry.split!r}; "
                "paired by class and stem, the image's split is used",
            )
        mask_size, reason = check_image(mask_path, context.verify)
        if mask_size is None:
            record.skip(mask_rel, reason or "unreadable mask")
            continue
        if mask_size != entry.size:
            record.skip(mask_rel, f"mask size {mask_size} differs from image size {entry.size} of {rel}")
            continue
        used_masks.append(mask_path)
        if Task.SEGMENTATION in context.tasks:
            samples.append(
                Sample(task=Task.SEGMENTATION, sample_id=f"{rel}#mask",
                       mask=FileMask(mask_path, threshold=128),
                       extra={"folder": entry.folder_label, "mask_path": mask_rel}, **common)
            )  # fmt: skip
    for (class_name, stem), leftovers in sorted(masks.items()):
        for _, path in leftovers:
            record.skip(
                path, f"mask without an image {class_name}/{stem}.* under {record.relative(image_tree)}"
            )
    for group in identical_groups(used_masks):
        for path in group[1:]:
            record.fix(
                path, f"kept: byte-identical to mask {record.relative(group[0])} although the images differ"
            )
    return samples
