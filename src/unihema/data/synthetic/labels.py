"""The names the synthetic corpus speaks in: its dataset name, the white-cell and red-cell label sets, the
detection and single-cell classes it annotates (and how a detection label maps to a single-cell class),
the segmentation mask targets, and the disease context of each kind of field. Every other module of the
package takes its vocabulary from here."""

from __future__ import annotations

from unihema.data.schema import SYNTHETIC_DATASET

DATASET_NAME = SYNTHETIC_DATASET
"""``Sample.dataset`` of every synthetic sample."""


WBC_TYPES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
ABNORMAL_RBC_TYPES: tuple[str, ...] = ("sickle cell", "target cell", "elliptocyte")
RBC_LABELS: tuple[str, ...] = ("rbc", *ABNORMAL_RBC_TYPES, "ring")
DETECTION_LABELS: tuple[str, ...] = (*RBC_LABELS[:4], *WBC_TYPES, "platelet", "ring")
"""Every detection class the corpus annotates (vocabulary names)."""

CELL_CLASS_OF_LABEL: dict[str, str] = {
    "rbc": "normal rbc",
    "sickle cell": "elongated rbc",
    "target cell": "target cell",
    "elliptocyte": "elliptocyte",
    "ring": "parasitized rbc",
    "platelet": "platelet",
    **{name: name for name in WBC_TYPES},
}
"""Single-cell class (:data:`~unihema.data.vocab.CELL_CLASSES` name) of each detection label."""

CELL_CLASS_NAMES: tuple[str, ...] = tuple(dict.fromkeys(CELL_CLASS_OF_LABEL.values()))
"""Every single-cell class the corpus annotates."""

MASK_TARGETS: tuple[str, ...] = ("wbc", "wbc_nucleus", "rbc", "all")

DISEASE_OF_CONDITION: dict[str, str] = {
    "healthy": "healthy",
    "malaria": "malaria",
    "sickle cell": "sickle cell disease",
    "target cell": "thalassaemia",
    "elliptocyte": "hereditary elliptocytosis",
}
"""Disease context (``Sample.disease``) of each kind of field."""
