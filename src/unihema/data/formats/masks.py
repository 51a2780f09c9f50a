"""Image + mask pair reader for binary segmentation (segmentation_wbc, bccd_nucleus_masks).

Masks may be any image PIL reads (PNG, TIFF, BMP; JPEG with a warning that lossy masks have noisy labels).
Pairs are found at the root or up to two levels below it, in this order:

- masks only, with the images in another folder given by ``images_root`` (``bccd_nucleus_masks`` masks the
  BCCD images in ``../bccd/BCCD/JPEGImages``, its default). A mask whose image is missing is skipped;
- ``images/`` and ``masks/`` (or ``mask/``, ``gt/``, ``ground_truth/``) folders with the same stems;
- an image and a PNG mask with the same stem in one folder (``001.bmp`` + ``001.png``), or a mask named
  ``<stem>_mask`` / ``<stem>_gt`` / ``<stem>_label`` in any lossless format;
- any two folders whose files share stems, one of them holding masks, told apart by content: a mask has
  few distinct colours (:func:`~unihema.data.formats.mask_values.looks_like_mask`); JPEG masks, whose
  colours are noisy, count when their folder is named like masks (``gt``, ``masks``, ``Ground Truth``).
  E.g. images in ``My Dataset/`` and masks in ``gt/``. The split comes from a folder name, if any.

What the mask values mean (see :mod:`unihema.data.formats.mask_values`): foreground is "not background".
``mapping`` reads grey masks (RGBA masks: see :func:`unihema.data.schema.mask_to_grey`):

- ``"nonzero"``: any value > 0 (binary masks, 1-bit PNGs): background is black;
- ``"cell"``: 3-level masks 0 / 128 / 255 (background / cytoplasm / nucleus), foreground = cytoplasm or
  nucleus, i.e. values nearer to 128 or 255 than to 0 (stray editing values snap to the nearest level);
- ``"nucleus"``: the same 3-level masks, foreground = values nearer to 255 than to 128;
- a sequence of ints: exactly those values.

Label maps (masks of class indices 0 / 1 / 2 ... instead of grey levels) would read as empty under
``"cell"`` and ``"nucleus"``: a lossless mask whose values are all at most
:data:`~unihema.data.schema.LABEL_MAP_MAX_VALUE` is read as a label map, every nonzero label foreground
(recorded as fixed, with one warning). Masks all background or all foreground are recorded as fixed too.

``colour_map`` reads colour-coded masks instead: ``{"nucleus": [0, 255, 255], "cytoplasm": [0, 0, 255],
"background": [255, 255, 255]}`` makes every pixel that is not background-coloured foreground (or only the
classes ``foreground`` names); colours not in the map are warned about, naming the file and the colours,
and read as background (``unknown_colours``: ``"background"``, ``"foreground"`` or ``"skip"``). With a
colour map every mask is decoded once at read time to check its colours.

Per-image class labels come from a CSV beside the pair folder whose name contains the folder's name
(``Class Labels of Dataset 1.csv`` for ``Dataset 1/``): columns image id, class; numeric ids match
zero-padded stems (``1`` -> ``001``). They are kept in ``Sample.extra`` and, with ``classification=True``,
also given as single-cell classification samples.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unihema.data.formats._common import (
    OptionError,
    ReadContext,
    ReadReport,
    check_image,
    dataset_name,
    default_disease,
    describe_folder,
    describe_search,
    folder_name,
    split_from_path,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.formats.mask_pairs import (  # re-exported: their import path was this module
    MASK_DIRS,
    MASK_EXTENSION,
    MASK_SUFFIXES,
    MIN_PAIRED_FRACTION,
    MaskPair,
    find_pairs,
)
from unihema.data.formats.mask_values import (
    LOSSY_THRESHOLD,
    ColourMap,
    ColourMask,
    check_colours,
    check_grey_levels,
    is_lossy,
    parse_colour_map,
)
from unihema.data.formats.voc import read_split_lists
from unihema.data.schema import FileImage, FileMask, ReadResult, Sample, Task, UnreadableImageError
from unihema.data.vocab import CELL_CLASSES, cell_index

THREE_LEVELS = (0, 128, 255)
MAPPING_THRESHOLDS: dict[str, int] = {
    "nonzero": 1,
    "cell": 64,  # midpoint of background 0 and cytoplasm 128
    "nucleus": 192,  # midpoint of cytoplasm 128 and nucleus 255
}
MAPPING_LEVELS: dict[str, tuple[int, ...]] = {"cell": THREE_LEVELS, "nucleus": THREE_LEVELS}
LOSSY_GROUP = "lossy (JPEG) masks: compression leaves noisy labels near edges"
CHECKED_MASKS = 3
"""Grey masks decoded at read time to check their values (label maps, colour masks read without a colour
map, masks all background or all foreground) when images are not verified; ``verify_images`` checks all."""


@dataclass(frozen=True)
class KnownMaskLayout:
    """Defaults of a staged mask dataset.

    Attributes:
        mapping: default ``mapping`` option.
        images_root: default ``images_root`` (relative to the dataset root), or None when images sit with masks.
        class_codes: CSV class code -> cell class name, or None when the CSV holds names.
        split_lists_from_images: take the split from VOC ``ImageSets/Main`` lists beside the images folder.
    """

    mapping: str = "nonzero"
    images_root: str | None = None
    class_codes: dict[str, str] = field(default_factory=dict)
    split_lists_from_images: bool = False


KNOWN_LAYOUTS: dict[str, KnownMaskLayout] = {
    "segmentation_wbc": KnownMaskLayout(
        mapping="cell",
        class_codes={
            "1": "neutrophil",
            "2": "lymphocyte",
            "3": "monocyte",
            "4": "eosinophil",
            "5": "basophil",
        },
    ),
    # Same images as BCCD: reuse its train/val/test lists so detection and segmentation splits agree.
    "bccd_nucleus_masks": KnownMaskLayout(
        mapping="nonzero", images_root="../bccd/BCCD/JPEGImages", split_lists_from_images=True
    ),
}


def _read_class_csv(path: Path) -> tuple[dict[str, str], list[str]]:
    """Normalised image id -> class label, and problems (malformed rows) of a two-column CSV."""
    labels: dict[str, str] = {}
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:  # newline="" reads CRLF rows cleanly
        rows = list(csv.reader(fh))
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if lineno == 1 and not _normal_id(cells[0]).isdigit():
            continue  # header
        if len(cells) < 2 or not cells[0] or not cells[1]:
            problems.append(f"line {lineno}: expected 'image id,class', got {row}")
            continue
        labels[_normal_id(cells[0])] = cells[1]
    return labels, problems


def _normal_id(image_id: str) -> str:
    """``"001"`` and ``"1"`` are the same image id; non-numeric ids are kept as they are."""
    return str(int(image_id)) if image_id.isdigit() else image_id


def _class_csv_for(group: Path, root: Path) -> Path | None:
    for folder in (group.parent, group, root):
        if folder.is_dir():
            matches = sorted(p for p in folder.glob("*.csv") if group.name.lower() in p.stem.lower())
            if matches:
                return matches[0]
    return None


def _foreground(mapping: str | Sequence[int]) -> dict[str, Any]:
    if isinstance(mapping, str):
        if mapping not in MAPPING_THRESHOLDS:
            raise OptionError(
                "mapping",
                f"mapping={mapping!r}: expected one of {sorted(MAPPING_THRESHOLDS)} or a list of values",
            )
        return {"threshold": MAPPING_THRESHOLDS[mapping]}
    try:
        values = tuple(int(v) for v in mapping)
    except (TypeError, ValueError):
        values = ()
    if not values or any(not 0 <= v <= 255 for v in values):
        raise OptionError(
            "mapping", f"mapping={mapping!r}: foreground values must be a non-empty list of 0..255"
        )
    return {"foreground": values}


def _colour_options(
    colour_map: Any, foreground: Any, unknown_colours: str | None, mapping: Any
) -> ColourMap | None:
    """The validated colour map, or ``None`` for grey masks; ``OptionError`` for options that clash."""
    if colour_map is None:
        for option, value in (("foreground", foreground), ("unknown_colours", unknown_colours)):
            if value is not None:
                raise OptionError(option, f"{option} applies to colour masks only: give colour_map too")
        return None
    if mapping is not None:
        raise OptionError("colour_map", "give mapping (grey values) or colour_map (colours), not both")
    return parse_colour_map(colour_map, foreground, unknown_colours or "background")


def _images_dir(root: Path, images_root: str | Path | None) -> Path | None:
    if images_root is None:
        return None
    folder = Path(images_root) if Path(images_root).is_absolute() else root / images_root
    return folder.resolve()


@register_reader
class MaskReader:
    """Image + mask pairs.

    Options of :meth:`read`:
        mapping: which grey mask values are foreground: ``"nonzero"``, ``"cell"``, ``"nucleus"`` or a list
            of values (default: the dataset's known mapping, ``"cell"`` for ``segmentation_wbc``, else
            ``"nonzero"``).
        colour_map: class name -> colour of colour-coded masks, with a ``background`` entry (default None:
            grey masks read through ``mapping``); see the module docstring.
        foreground: the ``colour_map`` classes that are foreground (default: all but ``background``).
        unknown_colours: what a colour not in ``colour_map`` is: ``"background"`` (default),
            ``"foreground"`` or ``"skip"`` (the mask is skipped).
        images_root: folder of the images when the root holds masks only, relative to the root or absolute
            (default: ``../bccd/BCCD/JPEGImages`` for ``bccd_nucleus_masks``, else None).
        classification: also emit a single-cell classification sample per image with a CSV class label
            (default False).
        disease: disease context of every sample (default: the dataset's known context, else ``None``).
        verify_images: decode every image and mask to catch damaged files, and report mask values that are
            not one of the expected levels, label maps and masks all background or all foreground (default
            False: headers only, and the values of the first :data:`CHECKED_MASKS` grey masks).
        use_split_lists: take the split from VOC split lists beside ``images_root`` when the dataset's
            layout says so (default True).
    """

    name = "masks"
    description = "image + mask pairs for binary segmentation (any two folders or one; grey or colour masks)"
    expects = (
        "image + mask pairs: masks (PNG, TIFF or BMP of few colours, or JPEG in a folder named like masks) "
        "with images of the same stems, in one folder or two"
    )
    priority = 30

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which mask and image folders pair in ``root``, or ``None`` when none do."""
        root = Path(root)
        given = (options or {}).get("images_root")
        known = KNOWN_LAYOUTS.get(dataset_name(root, None))
        image_dir = _images_dir(root, given if given is not None else known.images_root if known else None)
        complete = [p for p in find_pairs(root, image_dir) if p.image is not None and p.mask is not None]
        folders: dict[tuple[Path, Path], int] = {}
        for pair in complete:
            key = (pair.mask.parent, pair.image.parent)  # type: ignore[union-attr]
            folders[key] = folders.get(key, 0) + 1
        described = [
            f"{count} masks in {folder_name(masks, root)} paired by stem with images "
            + ("beside them" if masks == images else f"in {folder_name(images, root)}")
            for (masks, images), count in folders.items()
        ]
        return "; ".join(described) or None

    def sniff(self, root: Path) -> bool:
        return self.explain(root) is not None

    def read(
        self,
        root: Path,
        dataset: str | None = None,
        *,
        mapping: str | Sequence[int] | None = None,
        colour_map: Mapping[str, Any] | None = None,
        foreground: str | Sequence[str] | None = None,
        unknown_colours: str | None = None,
        images_root: str | Path | None = None,
        classification: bool = False,
        disease: str | None = None,
        verify_images: bool = False,
        use_split_lists: bool = True,
    ) -> ReadResult:
        root = Path(root)
        name = dataset_name(root, dataset)
        known = KNOWN_LAYOUTS.get(name, KnownMaskLayout())
        colours = _colour_options(colour_map, foreground, unknown_colours, mapping)
        mapping = "colour_map" if colours is not None else mapping if mapping is not None else known.mapping
        grey_foreground = _foreground(mapping) if colours is None else {}
        image_dir = _images_dir(root, images_root if images_root is not None else known.images_root)
        if image_dir is not None and not image_dir.is_dir():
            raise FileNotFoundError(f"{root}: images_root {image_dir} is not a folder (pass images_root=...)")
        pairs = find_pairs(root, image_dir)
        if not any(p.image is not None and p.mask is not None for p in pairs):
            expected = f"masks whose images are in {image_dir}" if image_dir else self.expects
            raise WrongFormatError(
                f"{root}: expected {expected}; looked in {describe_search(root)}, found {describe_folder(root)}"
            )
        record = ReadReport(name, root, warn_at_once=True)
        split_of: dict[str, str] = {}
        if use_split_lists and known.split_lists_from_images and image_dir is not None:
            split_of, _ = read_split_lists(image_dir.parent)
        context = _MaskContext(
            record=record,
            disease=default_disease(name, disease),
            verify=verify_images,
            split_of=split_of,
            mapping=mapping,
            foreground=grey_foreground,
            colours=colours,
            class_codes=known.class_codes,
            class_labels=_class_labels(record, pairs),
        )
        samples: list[Sample] = []
        cell_classes: set[int] = set()
        checked = 0
        for pair in pairs:
            if pair.mask is None:
                assert pair.image is not None
                record.skip(pair.image, f"image has no mask {pair.image.stem}.*")
                continue
            if pair.image is None:
                where_images = record.relative(image_dir if image_dir is not None else pair.group)
                record.skip(pair.mask, f"mask has no image {pair.mask.stem}.* in {where_images}")
                continue
            sample = _pair_sample(context, pair, verify_images or checked < CHECKED_MASKS)
            checked += 1
            if sample is None:
                continue
            samples.append(sample)
            if classification and "cell_class" in sample.extra:
                cell_classes.add(sample.extra["cell_class"])
                samples.append(
                    Sample(
                        image=sample.image,
                        task=Task.CLASSIFICATION,
                        dataset=name,
                        sample_id=f"{sample.sample_id}#classification",
                        split=sample.split,
                        disease=context.disease,
                        cell_class=sample.extra["cell_class"],
                        image_size=sample.image_size,
                        source_path=sample.source_path,
                        extra={"class_name": sample.extra["class_name"]},
                    )
                )
        return record.finish(self.name, samples, (CELL_CLASSES[i] for i in sorted(cell_classes)))


@dataclass(frozen=True, kw_only=True)
class _MaskContext(ReadContext):
    """The shared read context plus how masks and class labels are read.

    Attributes:
        mapping: the ``mapping`` option (which mask values are foreground), kept in ``Sample.extra``;
            ``"colour_map"`` when ``colours`` is given.
        foreground: the :class:`~unihema.data.schema.FileMask` arguments ``mapping`` stands for.
        colours: the validated ``colour_map`` option, or ``None`` for grey masks.
        class_codes: CSV class code -> cell class name (empty when the CSV holds names).
        class_labels: pair folder -> normalised image id -> CSV class label.
    """

    mapping: str | Sequence[int] = "nonzero"
    foreground: Mapping[str, Any] = field(default_factory=dict)
    colours: ColourMap | None = None
    class_codes: Mapping[str, str] = field(default_factory=dict)
    class_labels: Mapping[Path, Mapping[str, str]] = field(default_factory=dict)


def _class_labels(record: ReadReport, pairs: list[MaskPair]) -> dict[Path, dict[str, str]]:
    """CSV labels per pair folder; CSV rows naming no image are reported as skipped."""
    labels: dict[Path, dict[str, str]] = {}
    for group in sorted({p.group for p in pairs}):
        csv_path = _class_csv_for(group, record.root)
        if csv_path is None:
            continue
        try:
            table, problems = _read_class_csv(csv_path)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            record.skip(csv_path, f"unreadable class CSV ({err})")
            continue
        for problem in problems:
            record.skip(csv_path, problem)
        stems = {_normal_id(p.stem) for p in pairs if p.group == group}
        for image_id in sorted(set(table) - stems):
            record.skip(csv_path, f"class row for image id {image_id}: no such mask in {group.name}")
        labels[group] = table
    return labels


def _mask_ref(context: _MaskContext, mask: Path) -> FileMask | ColourMask:
    """The lazy mask of one file; a lossy mask is read as the nearest level or colour (recorded once)."""
    lossy = is_lossy(mask)
    colours = context.colours
    if lossy:
        how = (
            "each pixel read as the nearest colour of colour_map"
            if colours is not None
            else f"foreground read as values >= {LOSSY_THRESHOLD}"
            if context.mapping == "nonzero"
            else f"read through mapping {context.mapping!r}"
        )
        context.record.fix(mask, f"lossy JPEG mask: labels are noisy near edges; {how}", group=LOSSY_GROUP)
    if colours is not None:
        return ColourMask(
            mask,
            foreground=colours.foreground_colours(),
            known=tuple(colours.colours.values()),
            background=colours.background,
            unknown_foreground=colours.unknown == "foreground",
            nearest=lossy,
        )
    if lossy and context.mapping == "nonzero":
        return FileMask(mask, threshold=LOSSY_THRESHOLD)
    return FileMask(mask, **context.foreground)


def _pair_sample(context: _MaskContext, pair: MaskPair, check_values: bool) -> Sample | None:
    """The segmentation sample of one image + mask pair, or ``None`` (recorded as skipped); with
    ``check_values`` a grey mask is decoded to check its values (see :data:`CHECKED_MASKS`)."""
    assert pair.image is not None and pair.mask is not None
    record = context.record
    where = record.relative(pair.mask)
    size, problem = check_image(pair.image, context.verify)
    if problem:
        record.skip(pair.image, problem)
        return None
    mask_size, problem = check_image(pair.mask, context.verify)
    if problem:
        record.skip(where, problem.replace("image", "mask", 1))
        return None
    if mask_size != size:
        record.skip(where, f"mask is {mask_size[1]}x{mask_size[0]} but its image is {size[1]}x{size[0]}")
        return None
    extra: dict[str, Any] = {"mask_path": pair.mask, "mapping": context.mapping}
    if pair.group != record.root:
        extra["group"] = record.relative(pair.group)
    mask = _mask_ref(context, pair.mask)
    try:
        if context.colours is not None:
            extra["colour_map"] = context.colours.describe()
            if not check_colours(record, pair.mask, context.colours, extra):
                return None
        elif check_values:
            levels = MAPPING_LEVELS.get(context.mapping) if isinstance(context.mapping, str) else None
            check_grey_levels(record, mask, context.mapping, levels, extra)  # type: ignore[arg-type]
    except UnreadableImageError as error:
        record.skip(where, str(error).replace(str(pair.mask), "mask", 1))
        return None
    label = context.class_labels.get(pair.group, {}).get(_normal_id(pair.mask.stem))
    if label is not None:
        class_name = context.class_codes.get(label, label)
        extra["class_label"] = label
        extra["class_name"] = class_name
        try:
            extra["cell_class"] = cell_index(class_name)
        except KeyError:
            record.fix(where, f"class {label!r} is not in the single-cell vocabulary: kept in extra only")
    image_rel = record.relative(pair.image)
    return Sample(
        image=FileImage(pair.image),
        task=Task.SEGMENTATION,
        dataset=context.dataset,
        sample_id=image_rel if not image_rel.startswith("/") else where,
        split=context.split_of.get(pair.image.stem)
        or split_from_path(pair.group, record.root)
        or split_from_path(pair.mask.parent, record.root),
        disease=context.disease,
        mask=mask,
        image_size=size,
        source_path=pair.image,
        extra=extra,
    )


__all__ = [
    "KNOWN_LAYOUTS",
    "MAPPING_LEVELS",
    "MAPPING_THRESHOLDS",
    "MASK_DIRS",
    "MASK_EXTENSION",
    "MASK_SUFFIXES",
    "MIN_PAIRED_FRACTION",
    "KnownMaskLayout",
    "MaskPair",
    "MaskReader",
    "find_pairs",
]
