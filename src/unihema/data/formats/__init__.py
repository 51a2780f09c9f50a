"""One reader per native dataset format. Importing this package registers every reader.

| module | format | datasets read with it |
|---|---|---|
| ``voc`` | Pascal VOC XML boxes | bccd |
| ``yolo`` | YOLO txt boxes (train/val/test folders, data.yaml) | txl_pbc, fiocruz_malaria_thick |
| ``coco`` | COCO json boxes / polygons | any COCO export |
| ``masks`` | image + mask pairs with a value mapping or colour map (``mask_pairs``, ``mask_values``) | segmentation_wbc, bccd_nucleus_masks |
| ``folders`` | class folders, one module per layout (single cells, field-level labels, cells with paired masks) | pbc, bccd_wbc_crops, sickle_uganda, erythrocytesidb1 |
| ``attributes`` | attribute CSV joined to images | wbcatt (with pbc) |
| ``points`` | point annotations turned into single-cell crops | chula_rbc12 |

What every reader shares (the skip/fix record :class:`~unihema.data.formats._common.ReadReport`, the
read context, split names, image checks and the box policy) is in :mod:`unihema.data.formats._common`;
how readers find their files by content and pairing, not by folder names, in
:mod:`unihema.data.formats._pairing`.

Each reader's ``priority`` orders :func:`unihema.data.formats.base.detect`: specific formats first; the
detection says which rule matched. :func:`read_dataset` (:mod:`unihema.data.formats.descriptor`) reads a
folder with the options of its ``unihema.yaml`` descriptor and the ones given (``--option key=value``).
"""

from unihema.data.formats import attributes, coco, folders, masks, points, voc, yolo  # noqa: F401
from unihema.data.formats.base import READERS, Detection, WrongFormatError, detect, detect_format, get_reader
from unihema.data.formats.descriptor import (
    DatasetDescriptor,
    DescriptorError,
    ReadPlan,
    load_descriptor,
    parse_option_pairs,
    plan_read,
    read_dataset,
    read_planned,
)

__all__ = [
    "READERS",
    "DatasetDescriptor",
    "DescriptorError",
    "Detection",
    "ReadPlan",
    "WrongFormatError",
    "detect",
    "detect_format",
    "get_reader",
    "load_descriptor",
    "parse_option_pairs",
    "plan_read",
    "read_dataset",
    "read_planned",
]
