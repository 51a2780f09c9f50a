"""Class-folder datasets: the label of an image is the name of the folder it sits in.

Three layouts are recognised (:func:`detect_layout`), each read by its own module:

| layout | module | folders | datasets |
|---|---|---|---|
| ``imagefolder`` | :mod:`.imagefolder` | ``<root>[/<wrapper>][/<split>]/<class>/<image>`` | pbc, bccd_wbc_crops |
| ``sickle_fields`` | :mod:`.sickle_fields` | ``[Datasets/]Positive/{Labelled,Unlabelled}/``, ``Negative/Clear/`` | sickle_uganda |
| ``paired_masks`` | :mod:`.paired_masks` | ``[5-fold/]originais/...`` + a parallel ``segmentadas/...`` mask tree | erythrocytesidb1 |

Quirks handled in every layout: hidden files (``.DS_Store`` saved as ``.DS_<n>.jpg``) and non-image files
are skipped with a reason; files that do not open as images are skipped naming the file (with
``verify_images=True`` every image is fully decoded, which also catches truncated files); byte-identical
files within one class are kept once (recorded as fixed), byte-identical files with different labels are
both skipped. PBC file-name prefixes (``MY_``, ``BNE_``...) are kept in ``extra["prefix"]`` with the
sub-type they stand for in ``extra["subtype"]``; ``use_subtypes=True`` makes the sub-type the class.
"""

from unihema.data.formats._common import ReadReport, file_digest, identical_groups, parse_tasks
from unihema.data.formats.folders.imagefolder import PBC_PREFIX_SUBTYPES, prefix_info
from unihema.data.formats.folders.layout import Layout, detect_layout
from unihema.data.formats.folders.reader import DATASET_DISEASE, ClassFolderReader
from unihema.data.formats.folders.sickle_fields import SICKLE_NEGATIVE, SICKLE_POSITIVE

__all__ = [
    "DATASET_DISEASE",
    "PBC_PREFIX_SUBTYPES",
    "SICKLE_NEGATIVE",
    "SICKLE_POSITIVE",
    "ClassFolderReader",
    "Layout",
    "ReadReport",
    "detect_layout",
    "file_digest",
    "identical_groups",
    "parse_tasks",
    "prefix_info",
]
