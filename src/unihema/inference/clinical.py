"""Clinical summary of one image or a whole slide: differential, red-cell shapes, platelets, parasitemia, flags.

:func:`summarize` counts the detected cells of one or many :class:`~unihema.inference.results.Prediction`
objects (a slide is a folder of fields of view: its counts are the sums over its images, and every ratio is
computed from those sums, never averaged over images) and returns a :class:`ClinicalSummary`.
The rules, their units and their sources are documented in ``docs/clinical.md``; the HTML report is
:func:`unihema.inference.clinical_report.write_slide_report`.

Counts are box counts: a cell the detector missed is missing from every number, and one detected twice is
counted twice. Every cell is counted whatever its score; the share of low-confidence cells is a flag.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unihema.data.vocab import DETECTION_CLASSES

if TYPE_CHECKING:
    from unihema.inference.results import Cell, Prediction

Film = Literal["thin", "thick", "auto"]


def __getattr__(name: str) -> Any:
    # `write_slide_report` is importable from here too; loaded lazily because the report imports this module.
    if name == "write_slide_report":
        from unihema.inference.clinical_report import write_slide_report

        return write_slide_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------- class groups
# White-cell differential categories -> detection classes. The manual differential sorts white cells into
# these morphological types (CLSI H20-A2 reference differential; ICSH 2015 nomenclature, Palmer et al.,
# IJLH 37:287-303). Blasts are reported apart from the blast equivalents (promonocytes, abnormal
# promyelocytes) that the WHO classification of myeloid neoplasms adds to the blast count; immature
# granulocytes are the myelocytes and metamyelocytes.
WHITE_CELL_GROUPS: dict[str, tuple[str, ...]] = {
    "neutrophil": ("neutrophil",),
    "lymphocyte": ("lymphocyte",),
    "atypical lymphocyte": ("atypical lymphocyte",),
    "monocyte": ("monocyte",),
    "eosinophil": ("eosinophil",),
    "basophil": ("basophil",),
    "blast": ("myeloblast", "lymphoblast", "monoblast"),
    "blast equivalent": ("promonocyte", "abnormal promyelocyte"),
    "immature granulocyte": ("myelocyte", "metamyelocyte"),
}
# White cells of unspecified type: the generic "wbc" / "leukocyte" boxes of BCCD, TXL-PBC and BBBC041, and
# LeukemiaAttri's "None" class (read as "unidentified"), a white cell its annotators left untyped.
UNSPECIFIED_WHITE_CLASSES: tuple[str, ...] = ("wbc", "leukocyte", "unidentified")
UNSPECIFIED_WHITE = "unspecified"
"""Differential row of the white cells of unspecified type."""
BLAST_FLAG_GROUPS: tuple[str, ...] = ("blast", "blast equivalent")

# Red-cell shapes named by the ICSH 2015 nomenclature (Palmer et al.) that the detection vocabulary can
# report; "schistocyte" is listed for the ICSH schistocyte rule (Zini 2012, 2021 update) and is counted only
# when the vocabulary has it (it does not today: `schistocyte_percent` is then None and its flag cannot fire).
RED_CELL_SHAPE_CANDIDATES: tuple[str, ...] = ("sickle cell", "target cell", "elliptocyte", "schistocyte")
ABNORMAL_RED_CELL_CLASSES: tuple[str, ...] = tuple(
    c for c in RED_CELL_SHAPE_CANDIDATES if c in DETECTION_CLASSES
)
SCHISTOCYTE_CLASSES: tuple[str, ...] = tuple(c for c in ("schistocyte",) if c in DETECTION_CLASSES)
RED_CELL_CLASSES: tuple[str, ...] = ("rbc", *ABNORMAL_RED_CELL_CLASSES)

PLATELET_CLASSES: tuple[str, ...] = ("platelet",)

# Malaria parasites: the life stages (M5, BBBC041), the species boxes of thick films (Fiocruz) and the
# generic parasite classes. Leishmania and TB bacilli are other findings, listed in the class counts only.
MALARIA_PARASITE_CLASSES: tuple[str, ...] = (
    "ring", "trophozoite", "schizont", "gametocyte", "p. falciparum", "p. vivax", "plasmodium", "parasite",
)  # fmt: skip

# ---------------------------------------------------------------------------------------- rule constants
ASSUMED_WHITE_COUNT_PER_UL = 8000.0
"""WHO thick-film rule: white count assumed when the patient's is not given (Malaria Journal 2020,
s12936-020-03352-z, Table 3)."""
ASSUMED_RED_COUNT_PER_UL = 5_000_000.0
"""Thin-film density: red count assumed when the patient's is not given (same source)."""
MIN_DIFFERENTIAL_WHITE_CELLS = 100
"""The routine manual differential classifies 100 white cells (the CLSI H20-A2 reference method counts more);
percentages of fewer cells have wide confidence intervals."""
MIN_DENSITY_WHITE_CELLS = 200
"""WHO thick-film rule: parasites are counted against at least 200 white cells (500 when they are few)."""
MIN_RED_CELLS = 1000
"""Red-cell percentages over fewer red cells are flagged: thin-film parasitemia is counted per 1000 or 2000
red cells (WHO) and schistocytes over at least 1000 red cells (ICSH)."""
DEFAULT_PARASITEMIA_FLAG_PERCENT = 2.0
"""Hyperparasitaemia in non-immune patients, >2% (Malaria J 11:96, Table 1); guidelines use 2, 5 or 10%."""
DEFAULT_PARASITEMIA_FLAG_PER_UL = 250_000.0
"""Hyperparasitaemia, >250,000 parasites/uL (Malaria J 11:96, Table 1; Malaria J s12936-020-03390-7)."""
DEFAULT_SCHISTOCYTE_FLAG_PERCENT = 1.0
"""ICSH: more than 1% schistocytes is suspicious for thrombotic microangiopathy in adults (Zini 2012, 2021)."""
DEFAULT_LOW_CONFIDENCE_FLAG_PERCENT = 10.0
"""Share of low-confidence cells above which the counts are flagged for review."""


# ---------------------------------------------------------------------------------------- result types
@dataclass(frozen=True)
class Flag:
    """One review flag.

    Attributes:
        code: short machine-readable code (``"blasts_present"`` ...; listed in ``docs/clinical.md``).
        message: one sentence for a person, with the numbers that raised the flag.
    """

    code: str
    message: str


@dataclass(frozen=True)
class DifferentialRow:
    """One category of the white-cell differential.

    Attributes:
        category: the differential category (a key of :data:`WHITE_CELL_GROUPS`, or ``"unspecified"``).
        classes: the detection classes counted in it.
        count: white cells of this category (cells).
        percent: percent of all white cells counted, the unspecified ones included (%; None without white
            cells). These rows, the unspecified one included, sum to 100.
        percent_of_classified: percent of the white cells of a known type (%; None for the unspecified row
            and when no white cell has a type). The typed rows sum to 100.
    """

    category: str
    classes: tuple[str, ...]
    count: int
    percent: float | None
    percent_of_classified: float | None


@dataclass(frozen=True)
class RedCellShapeRow:
    """One abnormal red-cell shape.

    Attributes:
        name: the detection class (``"sickle cell"``, ``"target cell"``, ``"elliptocyte"``).
        count: red cells of this shape (cells).
        percent: percent of all red cells (%; None without red cells or on a thick film).
    """

    name: str
    count: int
    percent: float | None


@dataclass
class ClinicalSummary:
    """The clinical summary of one image or one slide (all its images together).

    Attributes:
        n_images: images summarised.
        sources: the images' sources, in the order given.
        film: ``"thin"`` or ``"thick"``, as given or as chosen by ``film="auto"``.
        n_cells: detected cells of every class (cells).
        class_counts: detection class name -> cells, every class seen, most frequent first.
        white_cells: white cells of every type, the unspecified ones included (cells).
        classified_white_cells: white cells of a known type (cells).
        differential: one row per :data:`WHITE_CELL_GROUPS` category, then the unspecified row.
        red_cells: red cells (cells): the ``rbc`` and abnormal-shape boxes, plus on a thin film the parasite
            boxes that lie in no red-cell box (each stands for one infected red cell). On a thick film only
            the red-cell boxes (red cells are lysed there; the red-cell ratios below are then None).
        red_cell_shapes: one row per abnormal red-cell shape in the vocabulary.
        schistocyte_percent: schistocytes in percent of red cells (%); None when the vocabulary has no
            schistocyte class (today) or there are no red cells.
        platelets: platelets (cells).
        platelets_per_100_red_cells: platelets per 100 red cells (platelets / 100 RBC; None without red
            cells or on a thick film).
        parasites: malaria parasite boxes of every stage and species (parasites).
        infected_red_cells: infected red cells on a thin film (cells; None on a thick film): red-cell boxes
            holding the centre of at least one parasite box, plus parasite boxes outside every red-cell box.
        parasitemia_percent: infected red cells in percent of red cells (%; thin film; None otherwise or
            without red cells).
        parasites_per_ul: parasite density (parasites/uL). Thick film: parasites / white cells x
            ``white_count_per_ul``; thin film: parasites / red cells x ``red_count_per_ul``. None without
            the denominator.
        white_count_per_ul: the white count used for the thick-film density (cells/uL).
        white_count_assumed: True when ``white_count_per_ul`` is the WHO assumption (8000/uL).
        red_count_per_ul: the red count used for the thin-film density (cells/uL).
        red_count_assumed: True when ``red_count_per_ul`` is the assumed 5,000,000/uL.
        low_confidence_threshold: the score below which a cell counts as low-confidence (score in [0, 1]).
        low_confidence_cells: cells scoring below it (cells).
        low_confidence_percent: their percent of all cells (%; None without cells).
        attribute_counts: FoV morphology attribute -> value -> cells with that value (cells).
        flags: review flags, in the order of ``docs/clinical.md``.
        warnings: the predictions' own warnings, each once.
    """

    n_images: int
    sources: tuple[str, ...]
    film: Literal["thin", "thick"]
    n_cells: int
    class_counts: dict[str, int]
    white_cells: int
    classified_white_cells: int
    differential: tuple[DifferentialRow, ...]
    red_cells: int
    red_cell_shapes: tuple[RedCellShapeRow, ...]
    schistocyte_percent: float | None
    platelets: int
    platelets_per_100_red_cells: float | None
    parasites: int
    infected_red_cells: int | None
    parasitemia_percent: float | None
    parasites_per_ul: float | None
    white_count_per_ul: float
    white_count_assumed: bool
    red_count_per_ul: float
    red_count_assumed: bool
    low_confidence_threshold: float
    low_confidence_cells: int
    low_confidence_percent: float | None
    attribute_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def flag_codes(self) -> tuple[str, ...]:
        return tuple(flag.code for flag in self.flags)

    def differential_row(self, category: str) -> DifferentialRow:
        """The differential row of ``category`` (``KeyError`` naming the known categories otherwise)."""
        for row in self.differential:
            if row.category == category:
                return row
        raise KeyError(
            f"no differential category {category!r}; known: {[r.category for r in self.differential]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: every field (rows as dicts, tuples as lists), floats rounded to 4 decimals."""
        return _jsonable(asdict(self))

    def to_rows(self) -> list[dict[str, Any]]:
        """Flat rows (:data:`SUMMARY_COLUMNS`) for a summary CSV, one per reported quantity and flag."""
        red, white = "% of red cells", "% of white cells"
        rows: list[tuple[str, str, int | None, float | None, str, str]] = [
            ("totals", "images", self.n_images, None, "images", ""),
            ("totals", "film", None, None, "", self.film),
            ("totals", "cells", self.n_cells, None, "cells", ""),
            *(("class counts", name, n, None, "cells", "") for name, n in self.class_counts.items()),
            ("white cells", "white cells", self.white_cells, None, "cells", ""),
        ]
        for r in self.differential:
            rows.append(("white cells", r.category, r.count, r.percent, white, ""))
            if r.percent_of_classified is not None:
                rows.append(
                    (
                        "white cells",
                        r.category,
                        r.count,
                        r.percent_of_classified,
                        "% of classified white cells",
                        "",
                    )
                )
        if self.film == "thick":
            basis = f"white count {self.white_count_per_ul:g}/uL" + " (assumed)" * self.white_count_assumed
        else:
            basis = f"red count {self.red_count_per_ul:g}/uL" + " (assumed)" * self.red_count_assumed
        rows += [
            ("red cells", "red cells", self.red_cells, None, "cells", ""),
            *(("red cells", r.name, r.count, r.percent, red, "") for r in self.red_cell_shapes),
            ("red cells", "schistocyte", None, self.schistocyte_percent, red, _SCHISTOCYTE_NOTE),
            ("platelets", "platelets", self.platelets, None, "cells", ""),
            (
                "platelets",
                "platelets per 100 red cells",
                None,
                self.platelets_per_100_red_cells,
                "per 100 red cells",
                "",
            ),
            ("malaria", "parasites", self.parasites, None, "parasites", ""),
            ("malaria", "infected red cells", self.infected_red_cells, None, "cells", ""),
            ("malaria", "parasitemia", None, self.parasitemia_percent, red, ""),
            ("malaria", "parasite density", None, self.parasites_per_ul, "parasites/uL", basis),
            (
                "quality",
                "low-confidence cells",
                self.low_confidence_cells,
                self.low_confidence_percent,
                "% of cells",
                "",
            ),
            *(
                ("morphology", f"{attribute}={value}", n, None, "cells", "")
                for attribute, values in self.attribute_counts.items()
                for value, n in values.items()
            ),
            *(("flags", f.code, None, None, "", f.message) for f in self.flags),
        ]
        return [dict(zip(SUMMARY_COLUMNS, (*row[:3], _round(row[3]), *row[4:]))) for row in rows]


_SCHISTOCYTE_NOTE = "" if SCHISTOCYTE_CLASSES else "no schistocyte class in the detection vocabulary"

SUMMARY_COLUMNS: tuple[str, ...] = ("section", "item", "count", "value", "unit", "note")
"""Columns of :meth:`ClinicalSummary.to_rows` (``value`` is rounded to 4 decimals, empty when undefined)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return round(value, 4) if isinstance(value, float) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _percent(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


# ---------------------------------------------------------------------------------------- counting
@dataclass
class _Tally:
    """What one image contributes; slides add the tallies of their images."""

    class_counts: Counter = field(default_factory=Counter)
    infected_host_cells: int = 0  # red-cell boxes holding the centre of at least one parasite box
    parasites_outside_red_cells: int = 0  # parasite boxes whose centre lies in no red-cell box
    low_confidence_cells: int = 0
    attribute_counts: dict[str, Counter] = field(default_factory=dict)

    def add(self, other: _Tally) -> None:
        self.class_counts.update(other.class_counts)
        self.infected_host_cells += other.infected_host_cells
        self.parasites_outside_red_cells += other.parasites_outside_red_cells
        self.low_confidence_cells += other.low_confidence_cells
        for attribute, values in other.attribute_counts.items():
            self.attribute_counts.setdefault(attribute, Counter()).update(values)

    def total(self, classes: Sequence[str]) -> int:
        return sum(self.class_counts[c] for c in classes)


def _boxes(cells: Sequence[Cell]) -> np.ndarray:
    return np.asarray([c.box for c in cells], dtype=np.float64).reshape(-1, 4)


def infected_red_cells_in_image(cells: Sequence[Cell]) -> tuple[int, int]:
    """``(red-cell boxes holding a parasite, parasite boxes in no red-cell box)`` for one image's cells.

    A parasite box belongs to the smallest red-cell box that contains its centre, so several parasites in
    one red cell make one infected cell. A parasite box in no red-cell box is itself an infected red cell
    (the BBBC041 convention labels an infected cell by its stage instead of "rbc").
    """
    red = _boxes([c for c in cells if c.class_name in RED_CELL_CLASSES])
    parasites = _boxes([c for c in cells if c.class_name in MALARIA_PARASITE_CLASSES])
    if len(parasites) == 0:
        return 0, 0
    if len(red) == 0:
        return 0, len(parasites)
    cx = (parasites[:, 0] + parasites[:, 2]) / 2
    cy = (parasites[:, 1] + parasites[:, 3]) / 2
    inside = (
        (red[None, :, 0] <= cx[:, None])
        & (cx[:, None] <= red[None, :, 2])
        & (red[None, :, 1] <= cy[:, None])
        & (cy[:, None] <= red[None, :, 3])
    )  # (parasites, red cells)
    area = (red[:, 2] - red[:, 0]) * (red[:, 3] - red[:, 1])
    hosted = inside.any(axis=1)
    hosts = np.where(inside, area[None, :], np.inf).argmin(axis=1)[hosted]
    return len(set(hosts.tolist())), int((~hosted).sum())


def _tally_image(prediction: Prediction, low_confidence: float) -> _Tally:
    tally = _Tally(class_counts=Counter(c.class_name for c in prediction.cells))
    tally.infected_host_cells, tally.parasites_outside_red_cells = infected_red_cells_in_image(
        prediction.cells
    )
    tally.low_confidence_cells = sum(1 for c in prediction.cells if c.score < low_confidence)
    for cell in prediction.cells:
        for attribute, value in cell.attributes.items():
            tally.attribute_counts.setdefault(attribute, Counter())[value] += 1
    return tally


def choose_film(red_cells: int, white_cells: int, parasites: int) -> Literal["thin", "thick"]:
    """The ``film="auto"`` rule: thick when parasites and white cells were found and there are fewer
    red-cell boxes than white cells (thin films hold hundreds of red cells per white cell; thick films
    lyse them), thin otherwise."""
    return "thick" if parasites > 0 and white_cells > 0 and red_cells < white_cells else "thin"


# ---------------------------------------------------------------------------------------- the summary
def summarize(
    predictions: Sequence[Prediction],
    *,
    white_count_per_ul: float | None = None,
    red_count_per_ul: float | None = None,
    film: Film = "auto",
    low_confidence: float = 0.5,
    low_confidence_flag_percent: float = DEFAULT_LOW_CONFIDENCE_FLAG_PERCENT,
    parasitemia_flag_percent: float = DEFAULT_PARASITEMIA_FLAG_PERCENT,
    parasitemia_flag_per_ul: float = DEFAULT_PARASITEMIA_FLAG_PER_UL,
    schistocyte_flag_percent: float = DEFAULT_SCHISTOCYTE_FLAG_PERCENT,
    min_differential_cells: int = MIN_DIFFERENTIAL_WHITE_CELLS,
    min_density_white_cells: int = MIN_DENSITY_WHITE_CELLS,
    min_red_cells: int = MIN_RED_CELLS,
) -> ClinicalSummary:
    """The clinical summary of one image (a list of one) or of a slide (all its images, counts summed).

    Args:
        predictions: the images' predictions.
        white_count_per_ul: the patient's white count (cells/uL) for the thick-film density; None uses the
            WHO assumption of 8000/uL.
        red_count_per_ul: the patient's red count (cells/uL) for the thin-film density; None assumes 5e6/uL.
        film: ``"thin"``, ``"thick"`` or ``"auto"`` (:func:`choose_film` on the slide's totals).
        low_confidence: cells scoring below this (in [0, 1]) are low-confidence.
        low_confidence_flag_percent: flag when more than this percent of the cells is low-confidence.
        parasitemia_flag_percent: flag a thin-film parasitemia above this percent of red cells.
        parasitemia_flag_per_ul: flag a parasite density above this (parasites/uL).
        schistocyte_flag_percent: flag schistocytes above this percent of red cells.
        min_differential_cells: flag a differential of fewer classified white cells (thin film).
        min_density_white_cells: flag a thick-film density counted against fewer white cells.
        min_red_cells: flag red-cell percentages computed over fewer red cells (thin film).
    """
    if film not in ("thin", "thick", "auto"):
        raise ValueError(f"film must be 'thin', 'thick' or 'auto', not {film!r}")
    if not 0.0 <= low_confidence <= 1.0:
        raise ValueError(f"low_confidence must lie in [0, 1], not {low_confidence}")
    for name, count in (("white_count_per_ul", white_count_per_ul), ("red_count_per_ul", red_count_per_ul)):
        if count is not None and not (math.isfinite(count) and count > 0):
            raise ValueError(f"{name} must be a positive number of cells per microlitre, not {count}")

    tally = _Tally()
    for prediction in predictions:
        tally.add(_tally_image(prediction, low_confidence))

    white_rows = {group: tally.total(classes) for group, classes in WHITE_CELL_GROUPS.items()}
    unspecified = tally.total(UNSPECIFIED_WHITE_CLASSES)
    classified = sum(white_rows.values())
    white_cells = classified + unspecified
    differential = tuple(
        DifferentialRow(group, WHITE_CELL_GROUPS[group], n, _percent(n, white_cells), _percent(n, classified))
        for group, n in white_rows.items()
    ) + (
        DifferentialRow(
            UNSPECIFIED_WHITE,
            UNSPECIFIED_WHITE_CLASSES,
            unspecified,
            _percent(unspecified, white_cells),
            None,
        ),
    )

    red_boxes = tally.total(RED_CELL_CLASSES)
    parasites = tally.total(MALARIA_PARASITE_CLASSES)
    chosen: Literal["thin", "thick"] = (
        choose_film(red_boxes, white_cells, parasites) if film == "auto" else film
    )
    thin = chosen == "thin"
    red_cells = red_boxes + (tally.parasites_outside_red_cells if thin else 0)
    red_denominator = red_cells if thin else 0  # thick films lyse red cells: no red-cell ratio
    white_count = ASSUMED_WHITE_COUNT_PER_UL if white_count_per_ul is None else float(white_count_per_ul)
    red_count = ASSUMED_RED_COUNT_PER_UL if red_count_per_ul is None else float(red_count_per_ul)
    infected = tally.infected_host_cells + tally.parasites_outside_red_cells if thin else None
    if thin:
        density = None if red_cells == 0 else parasites / red_cells * red_count
    else:
        density = None if white_cells == 0 else parasites / white_cells * white_count
    n_cells = sum(tally.class_counts.values())

    summary = ClinicalSummary(
        n_images=len(predictions),
        sources=tuple(p.source for p in predictions),
        film=chosen,
        n_cells=n_cells,
        class_counts=dict(sorted(tally.class_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        white_cells=white_cells,
        classified_white_cells=classified,
        differential=differential,
        red_cells=red_cells,
        red_cell_shapes=tuple(
            RedCellShapeRow(
                name, tally.class_counts[name], _percent(tally.class_counts[name], red_denominator)
            )
            for name in ABNORMAL_RED_CELL_CLASSES
        ),
        schistocyte_percent=_percent(tally.total(SCHISTOCYTE_CLASSES), red_denominator)
        if SCHISTOCYTE_CLASSES
        else None,
        platelets=tally.total(PLATELET_CLASSES),
        platelets_per_100_red_cells=_percent(tally.total(PLATELET_CLASSES), red_denominator),
        parasites=parasites,
        infected_red_cells=infected,
        parasitemia_percent=None if infected is None else _percent(infected, red_cells),
        parasites_per_ul=density,
        white_count_per_ul=white_count,
        white_count_assumed=white_count_per_ul is None,
        red_count_per_ul=red_count,
        red_count_assumed=red_count_per_ul is None,
        low_confidence_threshold=low_confidence,
        low_confidence_cells=tally.low_confidence_cells,
        low_confidence_percent=_percent(tally.low_confidence_cells, n_cells),
        attribute_counts={a: dict(sorted(v.items())) for a, v in sorted(tally.attribute_counts.items())},
        warnings=tuple(dict.fromkeys(w for p in predictions for w in p.warnings)),
    )
    summary.flags = review_flags(
        summary,
        low_confidence_flag_percent=low_confidence_flag_percent,
        parasitemia_flag_percent=parasitemia_flag_percent,
        parasitemia_flag_per_ul=parasitemia_flag_per_ul,
        schistocyte_flag_percent=schistocyte_flag_percent,
        min_differential_cells=min_differential_cells,
        min_density_white_cells=min_density_white_cells,
        min_red_cells=min_red_cells,
    )
    return summary


def review_flags(
    summary: ClinicalSummary,
    *,
    low_confidence_flag_percent: float,
    parasitemia_flag_percent: float,
    parasitemia_flag_per_ul: float,
    schistocyte_flag_percent: float,
    min_differential_cells: int,
    min_density_white_cells: int,
    min_red_cells: int,
) -> tuple[Flag, ...]:
    """The review flags of a summary (codes and rules in ``docs/clinical.md``); "above" means strictly."""
    s = summary
    flags: list[Flag] = []
    if s.low_confidence_percent is not None and s.low_confidence_percent > low_confidence_flag_percent:
        message = f"{s.low_confidence_cells} of {s.n_cells} cells ({s.low_confidence_percent:.1f}%)"
        flags.append(Flag("low_confidence", f"{message} score below {s.low_confidence_threshold:g}"))
    blasts = {row.category: row.count for row in s.differential if row.category in BLAST_FLAG_GROUPS}
    if sum(blasts.values()) > 0:
        found = ", ".join(f"{n} {category}" for category, n in blasts.items() if n)
        flags.append(Flag("blasts_present", f"blasts or blast equivalents found ({found}): review the smear"))
    if s.schistocyte_percent is not None and s.schistocyte_percent > schistocyte_flag_percent:
        message = f"schistocytes {s.schistocyte_percent:.2f}% of red cells (> {schistocyte_flag_percent:g}%)"
        flags.append(Flag("schistocytes_high", message))
    if s.parasites > 0:
        flags.append(Flag("parasites_present", f"{s.parasites} malaria parasite(s) detected: confirm"))
        high = []
        if s.parasitemia_percent is not None and s.parasitemia_percent > parasitemia_flag_percent:
            high.append(f"{s.parasitemia_percent:.2f}% of red cells (> {parasitemia_flag_percent:g}%)")
        if s.parasites_per_ul is not None and s.parasites_per_ul > parasitemia_flag_per_ul:
            high.append(f"{s.parasites_per_ul:,.0f} parasites/uL (> {parasitemia_flag_per_ul:,.0f}/uL)")
        if high:
            flags.append(Flag("parasitemia_high", "parasitemia " + " and ".join(high)))
        if (
            s.parasites_per_ul is None
        ):  # thick film without white cells (on a thin film parasites are red cells)
            flags.append(
                Flag("parasitemia_unavailable", "parasites found but no white cells to count them against")
            )
    if s.film == "thick" and s.parasites > 0 and s.white_cells < min_density_white_cells:
        message = f"thick-film density counted against {s.white_cells} white cells"
        flags.append(
            Flag("few_white_cells_for_density", f"{message} (the WHO rule counts {min_density_white_cells})")
        )
    if s.film == "thin" and s.classified_white_cells < min_differential_cells:
        unspecified = s.white_cells - s.classified_white_cells
        message = f"differential of {s.classified_white_cells} classified white cells" + (
            f" (and {unspecified} of unspecified type)" if unspecified else ""
        )
        flags.append(
            Flag("few_white_cells", f"{message}; a reliable differential needs {min_differential_cells}")
        )
    if s.film == "thin" and 0 < s.red_cells < min_red_cells:
        message = f"red-cell percentages over {s.red_cells} red cells (fewer than {min_red_cells})"
        flags.append(Flag("few_red_cells", message))
    return tuple(flags)
