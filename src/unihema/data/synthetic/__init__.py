"""The synthetic blood-smear corpus: UniHema's built-in default data.

A seeded generator of field-of-view (FoV) images that look like a Wright/Giemsa-stained thin peripheral
blood smear seen at 100x: a pale pinkish background with an illumination gradient and sensor noise, red
cells, white cells, platelets and malaria ring-stage parasites, with exact ground truth for all seven
tasks of :class:`~unihema.data.schema.Task`.

What is drawn
-------------
- **Red cells** (detection label ``"rbc"``): discs with a pale centre (central pallor). Abnormal shapes:
  ``"sickle cell"`` (a crescent), ``"target cell"`` (a dark centre inside a pale ring), ``"elliptocyte"``
  (an ellipse). A red cell carrying malaria ring-stage parasites (a thin blue-purple ring with a dark red
  chromatin dot) is labelled ``"ring"`` as a whole cell, the way infected-cell datasets box the host cell.
- **White cells**: ``"neutrophil"``, ``"lymphocyte"``, ``"monocyte"``, ``"eosinophil"``, ``"basophil"``.
  Each gets the 11 WBCAtt attributes (:data:`~unihema.data.vocab.CELL_ATTRIBUTES`) sampled from a
  per-type prior close to the WBCAtt statistics, and the drawing *follows the attributes*:
  ``cell_size`` sets the radius, ``cell_shape`` the outline, ``nucleus_shape`` the nucleus geometry
  (round, indented/kidney, band, bilobed, multilobed, irregular), ``nuclear_cytoplasmic_ratio`` the
  nucleus size, ``chromatin_density`` the nucleus darkness and texture, ``cytoplasm_colour`` the
  cytoplasm hue, ``cytoplasm_texture`` its graininess, ``cytoplasm_vacuole`` draws vacuoles,
  ``granule_type``/``granule_colour`` the granules. A 12th hidden trait, the nucleolus, is drawn as pale
  nucleoli. The 6 LeukemiaAttri FoV attributes (:data:`~unihema.data.vocab.FOV_ATTRIBUTES`) are derived
  from the same traits (:func:`fov_attributes_for`), so both label sets describe the same pixels.
- **Platelets** (``"platelet"``): small purple granular fragments.

Ground truth
------------
Per cell: a tight ``xyxy`` box (the extent of its coverage mask, after clipping to the image), its
detection label, its FoV attributes (white cells; ``UNKNOWN`` for the others), its own binary mask, and
for white cells the WBCAtt attributes. Cells never overlap, so every mask is the cell's visible area.
Red cells cut by the image border are kept when at least :data:`MIN_VISIBLE_FRACTION` of them is
visible (then flagged ``truncated``) and not drawn at all otherwise, so nothing visible is unlabelled.
White cells and platelets are always wholly inside the image.

The binary segmentation mask marks the cells chosen by :attr:`SyntheticConfig.mask_target`:
``"wbc"`` (default; whole white cells, nucleus and cytoplasm, like the WBC segmentation datasets),
``"wbc_nucleus"`` (white-cell nuclei only), ``"rbc"`` (every red cell, infected and abnormal included) or
``"all"`` (every cell, platelets included).

Tasks (:meth:`SyntheticCorpus.samples`)
---------------------------------------
- ``detection``: one sample per field, every box;
- ``fov_morphology``: one sample per field with at least one white cell, white-cell boxes only, each
  with its 6 FoV attributes;
- ``segmentation``: one sample per field with the binary mask;
- ``classification``: square crops around every white cell and a seeded choice of at most
  :attr:`SyntheticConfig.abnormal_rbc_crops_per_field` abnormal or infected red cells,
  :attr:`SyntheticConfig.rbc_crops_per_field` normal red cells and
  :attr:`SyntheticConfig.platelet_crops_per_field` platelets, with their
  :data:`~unihema.data.vocab.CELL_CLASSES` class (sickle cells are ``"elongated rbc"``, infected cells
  ``"parasitized rbc"``, normal red cells ``"normal rbc"``); cells cut by the image border are not
  cropped;
- ``cell_morphology``: the white-cell crops with their 11 WBCAtt attributes;
- ``vqa`` / ``mlm``: questions and masked sentences about each white-cell crop, from
  :func:`unihema.data.text.text_samples`.

Every sample of a field shares the field's split (``extra["split_group"]`` names the field), so no task
leaks a test field into training. Splits are a seeded permutation of the field indices. Field ``i`` is
generated from ``numpy.random.default_rng([seed, i])`` alone, so it is the same whatever other fields are
generated, in any order.

Vision samples leave ``Sample.prompt`` empty and carry the field's disease in ``Sample.disease`` (see
:attr:`SyntheticConfig.disease_context`); :mod:`unihema.data.prompts` turns it into the text prompt.

Everything is vectorised numpy/scipy on small per-cell patches: a 256x256 field takes a few tens of
milliseconds on one core, and :meth:`SyntheticCorpus.generate` spreads fields over processes (see
``docs/benchmarks.md``).

Modules
-------
:mod:`.labels` (label sets and classes), :mod:`.palette` (colours, textures, sizes), :mod:`.config`
(:class:`SyntheticConfig`), :mod:`.priors` (white-cell attribute priors, :class:`WhiteCellSpec`),
:mod:`.shapes` (signed distances, noise, blending), :mod:`.render` (cell patches), :mod:`.layout`
(canvas and cell placement), :mod:`.field` (:func:`generate_field`), :mod:`.crops` (single-cell crops),
:mod:`.corpus` (:class:`SyntheticCorpus`) and :mod:`.writer` (the files on disk). The names of
``__all__`` are re-exported here, so ``from unihema.data.synthetic import ...`` reaches them.
"""

from __future__ import annotations

from unihema.data.synthetic.config import SyntheticConfig
from unihema.data.synthetic.corpus import SyntheticCorpus, generate_corpus
from unihema.data.synthetic.crops import CellCrop
from unihema.data.synthetic.field import (
    MIN_VISIBLE_FRACTION,
    FieldOfView,
    SyntheticCell,
    field_rng,
    generate_field,
)
from unihema.data.synthetic.labels import (
    ABNORMAL_RBC_TYPES,
    CELL_CLASS_NAMES,
    CELL_CLASS_OF_LABEL,
    DATASET_NAME,
    DETECTION_LABELS,
    DISEASE_OF_CONDITION,
    MASK_TARGETS,
    RBC_LABELS,
    WBC_TYPES,
)
from unihema.data.synthetic.layout import PLACEMENT_GAP_PX
from unihema.data.synthetic.priors import WhiteCellSpec, fov_attributes_for, sample_white_cell
from unihema.data.synthetic.render import (
    CellPatch,
    render_platelet,
    render_red_cell,
    render_white_cell,
    white_cell_radius,
)

__all__ = [
    "ABNORMAL_RBC_TYPES",
    "CELL_CLASS_NAMES",
    "CELL_CLASS_OF_LABEL",
    "DATASET_NAME",
    "DETECTION_LABELS",
    "DISEASE_OF_CONDITION",
    "MASK_TARGETS",
    "MIN_VISIBLE_FRACTION",
    "PLACEMENT_GAP_PX",
    "RBC_LABELS",
    "WBC_TYPES",
    "CellCrop",
    "CellPatch",
    "FieldOfView",
    "SyntheticCell",
    "SyntheticConfig",
    "SyntheticCorpus",
    "WhiteCellSpec",
    "field_rng",
    "fov_attributes_for",
    "generate_corpus",
    "generate_field",
    "render_platelet",
    "render_red_cell",
    "render_white_cell",
    "sample_white_cell",
    "white_cell_radius",
]
