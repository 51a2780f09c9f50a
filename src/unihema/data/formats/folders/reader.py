"""The class-folder reader: detects the layout and hands it to that layout's module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from unihema.data.formats._common import (
    DATASET_DISEASE,
    ReadReport,
    cell_class_names,
    check_options,
    describe_folder,
    folder_name,
    parse_tasks,
    visible_dirs,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.formats.folders.imagefolder import read_imagefolder
from unihema.data.formats.folders.layout import FolderContext, detect_layout
from unihema.data.formats.folders.paired_masks import read_paired_masks
from unihema.data.formats.folders.sickle_fields import read_sickle_fields
from unihema.data.schema import ReadResult, Sample, Task

LAYOUT_READERS: dict[str, Callable[[FolderContext], list[Sample]]] = {
    "imagefolder": read_imagefolder,
    "sickle_fields": read_sickle_fields,
    "paired_masks": read_paired_masks,
}
"""Layout kind (:attr:`Layout.kind`) -> the function reading its samples."""

_PAIRED_TASKS = (Task.CLASSIFICATION, Task.SEGMENTATION)
_OPTIONS = ("verify_images", "class_map", "use_subtypes", "tasks", "fold", "disease")


@register_reader
class ClassFolderReader:
    """Reads the class-folder layouts described in :mod:`unihema.data.formats.folders`.

    Options of :meth:`read`:
        verify_images (bool, default False): decode every image (and mask) instead of reading headers.
        class_map (mapping, optional): folder name -> vocabulary class name, for folders whose names
            are not vocabulary names or aliases.
        use_subtypes (bool, default False): for PBC-style ``<PREFIX>_<id>`` names, use the sub-type the
            prefix names (``MY`` -> myelocyte, ``BNE`` -> band neutrophil) as the class when it has one.
        tasks (task or list, ``paired_masks`` layout only, default both): ``"classification"`` and/or
            ``"segmentation"``.
        fold (str, ``paired_masks`` only): which ``round_<k>`` folder to read (default: the first).
        disease (str, optional): overrides the disease context of :data:`DATASET_DISEASE`.
    """

    name: ClassVar[str] = "folders"
    description: ClassVar[str] = (
        "class folders: <class>/<image> (optionally under split folders), sickle positive/negative "
        "fields, or erythrocytesIDB images with a parallel mask tree"
    )
    expects: ClassVar[str] = (
        "class folders (<class>/<image>, at least two named after cell classes, optionally under split "
        "folders), sickle Positive/Negative fields or originais/segmentadas trees"
    )
    priority: ClassVar[int] = 90  # generic: tried after every specific format
    option_names: ClassVar[tuple[str, ...]] = _OPTIONS

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which class-folder layout ``root`` holds, or ``None`` when it holds none."""
        try:
            layout = detect_layout(Path(root), (options or {}).get("class_map"))
        except OSError:
            return None
        if layout is None:
            return None
        classes = ", ".join(d.name for d in visible_dirs(layout.base)) if layout.kind == "imagefolder" else ""
        where = folder_name(layout.base, Path(root))
        if layout.kind == "imagefolder":
            split = f" split folders {', '.join(layout.splits)} with" if layout.splits else ""
            return f"imagefolder layout: {where} holds{split} class folders ({classes})"
        if layout.kind == "paired_masks":
            images, masks = (folder_name(layout.base / d, Path(root)) for d in ("originais", "segmentadas"))
            return f"paired_masks layout: class folders of images under {images} with a parallel mask tree {masks}"
        return f"sickle_fields layout: Positive/Unlabelled, Positive/Labelled and Negative/ fields in {where}"

    def sniff(self, root: Path) -> bool:
        try:
            return detect_layout(Path(root)) is not None
        except OSError:
            return False

    def read(self, root: Path, dataset: str | None = None, **options: Any) -> ReadResult:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        layout = detect_layout(root, options.get("class_map"))
        if layout is None:
            raise WrongFormatError(
                f"{root}: expected class folders (<class>/<image>, at least two with images), sickle "
                f"Positive/Negative fields or originais/segmentadas trees, found {describe_folder(root)}"
            )
        check_options(options, _OPTIONS, "folders")
        name = dataset or layout.dataset
        tasks = _PAIRED_TASKS
        if layout.kind == "paired_masks":  # the other layouts give classification samples only
            tasks = parse_tasks(options.get("tasks", _PAIRED_TASKS), _PAIRED_TASKS, "folders")
        record = ReadReport(name, root)
        context = FolderContext(
            record=record,
            disease=options.get("disease", DATASET_DISEASE.get(name)),
            verify=bool(options.get("verify_images", False)),
            class_map=options.get("class_map") or {},
            layout=layout,
            use_subtypes=bool(options.get("use_subtypes", False)),
            tasks=tasks,
            fold=options.get("fold"),
        )
        samples = LAYOUT_READERS[layout.kind](context)
        return record.finish(self.name, samples, cell_class_names(samples))
