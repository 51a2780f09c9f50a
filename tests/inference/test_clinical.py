"""Clinical summary: hand-counted predictions, thresholds of every flag, slides as sums, the HTML report,
and the ground truth of BCCD and TXL-PBC counted two ways."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from support.paths import dataset_path
from unihema.data.formats import get_reader
from unihema.data.vocab import DETECTION_CLASSES, detection_index
from unihema.inference.clinical import (
    MALARIA_PARASITE_CLASSES,
    PLATELET_CLASSES,
    RED_CELL_CLASSES,
    SUMMARY_COLUMNS,
    UNSPECIFIED_WHITE_CLASSES,
    WHITE_CELL_GROUPS,
    summarize,
)
from unihema.inference.clinical_report import write_slide_report
from unihema.inference.results import Cell, Prediction

# --- hand-built predictions ------------------------------------------------------------------------------


def cells(counts: dict[str, int], score: float = 0.9, row: int = 0) -> list[Cell]:
    """``counts[name]`` cells of each class on their own 10x10 square, none overlapping; one row of
    squares per call (``row``) so that separate calls never overlap either."""
    out = []
    for name, n in counts.items():
        for _ in range(n):
            x, y = 20.0 * len(out), 1000.0 * row
            out.append(Cell(box=(x, y, x + 10.0, y + 10.0), label=detection_index(name), score=score))
    return out


def prediction(
    cell_list: list[Cell], source: str = "field.png", image: np.ndarray | None = None
) -> Prediction:
    return Prediction(
        source=source, image_size=(100, 100), tasks=("detection",), cells=cell_list, image=image
    )


def summary_of(counts: dict[str, int], **options):
    return summarize([prediction(cells(counts))], **options)


def test_every_class_group_names_a_vocabulary_class_once():
    # A renamed vocabulary class would otherwise drop out of a count without a sound.
    grouped = [
        *(name for group in WHITE_CELL_GROUPS.values() for name in group),
        *UNSPECIFIED_WHITE_CLASSES,
        *RED_CELL_CLASSES,
        *PLATELET_CLASSES,
        *MALARIA_PARASITE_CLASSES,
    ]
    assert set(grouped) <= set(DETECTION_CLASSES)
    assert len(grouped) == len(set(grouped))  # no class is counted in two groups
    assert {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "myeloblast"} <= set(grouped)


def test_differential_counts_percentages_and_the_unspecified_white_cells():
    found = summary_of(
        {"neutrophil": 50, "lymphocyte": 20, "monocyte": 10, "eosinophil": 5, "basophil": 1, "myeloblast": 3}
        | {"lymphoblast": 1, "myelocyte": 2, "wbc": 6, "leukocyte": 2}
    )
    assert found.white_cells == 100 and found.classified_white_cells == 92
    neutrophil = found.differential_row("neutrophil")
    assert neutrophil.count == 50
    assert neutrophil.percent == pytest.approx(50.0)  # 50 of all 100 white cells
    assert neutrophil.percent_of_classified == pytest.approx(100 * 50 / 92)  # 50 of the 92 typed ones
    blast = found.differential_row("blast")
    assert (blast.count, blast.percent) == (4, pytest.approx(4.0))
    assert found.differential_row("immature granulocyte").count == 2
    unspecified = found.differential_row("unspecified")
    assert (unspecified.count, unspecified.percent, unspecified.percent_of_classified) == (8, 8.0, None)
    assert sum(r.percent for r in found.differential) == pytest.approx(100.0)
    typed = [r.percent_of_classified for r in found.differential if r.percent_of_classified is not None]
    assert sum(typed) == pytest.approx(100.0)
    assert "blasts_present" in found.flag_codes
    # 92 classified white cells are fewer than the 100 of a differential; 8 more neutrophils make 100.
    assert "few_white_cells" in found.flag_codes
    enough = summary_of({"neutrophil": 58, "lymphocyte": 42, "wbc": 30})
    assert "few_white_cells" not in enough.flag_codes and "blasts_present" not in enough.flag_codes
    assert "few_white_cells" in summary_of({"neutrophil": 99, "wbc": 30}).flag_codes


def test_blast_equivalents_raise_the_blast_flag():
    found = summary_of({"promonocyte": 1, "neutrophil": 10})
    assert found.differential_row("blast").count == 0
    assert found.differential_row("blast equivalent").count == 1
    assert "blasts_present" in found.flag_codes


def test_red_cell_shapes_and_platelets_per_100_red_cells():
    found = summary_of({"rbc": 180, "sickle cell": 10, "target cell": 6, "elliptocyte": 4, "platelet": 30})
    assert found.red_cells == 200 and found.platelets == 30
    shapes = {r.name: (r.count, r.percent) for r in found.red_cell_shapes}
    assert shapes == {"sickle cell": (10, 5.0), "target cell": (6, 3.0), "elliptocyte": (4, 2.0)}
    assert found.platelets_per_100_red_cells == pytest.approx(15.0)
    # The vocabulary has no schistocyte class: the percentage is undefined and its flag cannot fire.
    assert found.schistocyte_percent is None
    assert "schistocytes_high" not in summary_of({"rbc": 10}, schistocyte_flag_percent=0.0).flag_codes
    assert "few_red_cells" in found.flag_codes  # 200 red cells, fewer than 1000
    assert "few_red_cells" not in summary_of({"rbc": 1000}).flag_codes
    no_red = summary_of({"platelet": 3})
    assert no_red.red_cells == 0 and no_red.platelets_per_100_red_cells is None
    assert "few_red_cells" not in no_red.flag_codes


def test_thin_film_parasite_boxes_outside_red_cells_are_infected_red_cells():
    # BBBC041 convention: an infected cell is boxed by its stage instead of "rbc".
    found = summary_of({"rbc": 96, "ring": 3, "trophozoite": 1})
    assert found.film == "thin"
    assert (found.red_cells, found.parasites, found.infected_red_cells) == (100, 4, 4)
    assert found.parasitemia_percent == pytest.approx(4.0)
    assert found.parasites_per_ul == pytest.approx(4 / 100 * 5_000_000)
    assert found.red_count_assumed
    assert {"parasites_present", "parasitemia_high"} <= set(found.flag_codes)
    given = summary_of({"rbc": 96, "ring": 4}, red_count_per_ul=4_000_000)
    assert given.parasites_per_ul == pytest.approx(160_000) and not given.red_count_assumed


def test_thin_film_parasites_inside_a_red_cell_make_one_infected_cell():
    red = [Cell((0.0, 0.0, 10.0, 10.0), detection_index("rbc"), 0.9)]
    red += [Cell((20.0, 0.0, 30.0, 10.0), detection_index("rbc"), 0.9)]
    red += [Cell((40.0 + 20 * i, 0.0, 50.0 + 20 * i, 10.0), detection_index("rbc"), 0.9) for i in range(8)]
    parasites = [
        Cell((2.0, 2.0, 4.0, 4.0), detection_index("ring"), 0.9),  # two rings in the first red cell
        Cell((6.0, 6.0, 8.0, 8.0), detection_index("ring"), 0.9),
        Cell((24.0, 4.0, 26.0, 6.0), detection_index("trophozoite"), 0.9),  # one in the second
    ]
    found = summarize([prediction(red + parasites)])
    assert (found.red_cells, found.parasites, found.infected_red_cells) == (10, 3, 2)
    assert found.parasitemia_percent == pytest.approx(20.0)
    assert found.parasites_per_ul == pytest.approx(3 / 10 * 5_000_000)


def test_parasitemia_flag_fires_strictly_above_its_thresholds():
    at_threshold = summary_of({"rbc": 49, "ring": 1})  # 1 of 50 red cells: 2.0%, 100,000/uL
    assert at_threshold.parasitemia_percent == pytest.approx(2.0)
    assert "parasitemia_high" not in at_threshold.flag_codes
    assert "parasitemia_high" in summary_of({"rbc": 49, "ring": 1}, parasitemia_flag_percent=1.9).flag_codes
    by_density = summary_of({"rbc": 49, "ring": 1}, parasitemia_flag_per_ul=99_999)
    assert "parasitemia_high" in by_density.flag_codes
    assert "parasites_present" in at_threshold.flag_codes
    assert "parasites_present" not in summary_of({"rbc": 50}).flag_codes


def test_thick_film_density_with_the_who_assumption_and_with_a_given_white_count():
    found = summary_of({"wbc": 200, "p. falciparum": 40, "p. vivax": 10})
    assert found.film == "thick"  # parasites and white cells, no red cells
    assert found.parasites == 50 and found.white_cells == 200
    assert found.parasites_per_ul == pytest.approx(50 / 200 * 8000)  # 2,000/uL
    assert found.white_count_assumed and found.white_count_per_ul == 8000
    given = summary_of({"wbc": 200, "p. falciparum": 40, "p. vivax": 10}, white_count_per_ul=5500)
    assert given.parasites_per_ul == pytest.approx(50 / 200 * 5500) and not given.white_count_assumed
    # Thin-film ratios are not reported on a thick film.
    assert found.infected_red_cells is None and found.parasitemia_percent is None
    assert found.platelets_per_100_red_cells is None
    assert all(r.percent is None for r in found.red_cell_shapes)
    assert "few_white_cells" not in found.flag_codes and "few_white_cells_for_density" not in found.flag_codes
    few = summary_of({"wbc": 199, "ring": 10})
    assert "few_white_cells_for_density" in few.flag_codes
    heavy = summary_of({"wbc": 200, "ring": 6251})  # 6251 / 200 x 8000 = 250,040/uL
    assert "parasitemia_high" in heavy.flag_codes
    assert "parasitemia_high" not in summary_of({"wbc": 200, "ring": 6250}).flag_codes  # exactly 250,000


def test_auto_film_rule_and_forced_films():
    assert summary_of({"wbc": 10, "rbc": 9, "ring": 1}).film == "thick"  # fewer red cells than white cells
    assert summary_of({"wbc": 10, "rbc": 10, "ring": 1}).film == "thin"
    assert summary_of({"wbc": 10}).film == "thin"  # no parasites
    assert summary_of({"ring": 5}).film == "thin"  # no white cells
    # Forced thin, a thick film's parasites are its only red cells: each one is an infected red cell.
    forced = summary_of({"wbc": 10, "ring": 2}, film="thin")
    assert (forced.film, forced.red_cells, forced.infected_red_cells) == ("thin", 2, 2)
    assert forced.parasitemia_percent == 100.0
    no_white = summary_of({"ring": 5}, film="thick")
    assert no_white.parasites_per_ul is None
    assert {"parasitemia_unavailable", "few_white_cells_for_density"} <= set(no_white.flag_codes)
    with pytest.raises(ValueError, match="film"):
        summary_of({"rbc": 1}, film="smear")
    with pytest.raises(ValueError, match="white_count_per_ul"):
        summary_of({"rbc": 1}, white_count_per_ul=0)


def test_low_confidence_share_flag():
    confident = cells({"rbc": 18})
    doubtful = cells({"rbc": 2}, score=0.3, row=1)
    found = summarize([prediction(confident + doubtful)])
    assert found.low_confidence_cells == 2 and found.low_confidence_percent == pytest.approx(10.0)
    assert "low_confidence" not in found.flag_codes  # 10% is not above 10%
    assert (
        "low_confidence"
        in summarize([prediction(confident + doubtful)], low_confidence_flag_percent=9.9).flag_codes
    )
    more = summarize([prediction(cells({"rbc": 17}) + cells({"rbc": 3}, score=0.3, row=1))])
    assert "low_confidence" in more.flag_codes
    at_cut = summarize([prediction(cells({"rbc": 10}, score=0.5))])
    assert at_cut.low_confidence_cells == 0  # a score equal to the threshold is not below it
    assert summarize([prediction(confident)], low_confidence=0.95).low_confidence_cells == 18


def test_slide_summary_is_the_sum_over_its_images():
    images = [
        prediction(cells({"rbc": 10, "platelet": 1, "neutrophil": 2}), "a.png"),
        prediction(cells({"rbc": 90, "lymphocyte": 2, "ring": 1}), "b.png"),
        prediction([], "c.png"),
    ]
    slide = summarize(images)
    assert slide.n_images == 3 and slide.sources == ("a.png", "b.png", "c.png")
    parts = [summarize([p]) for p in images]
    assert slide.n_cells == sum(p.n_cells for p in parts) == 106
    assert slide.class_counts == dict(sum((Counter(p.class_counts) for p in parts), Counter()))
    assert slide.red_cells == sum(p.red_cells for p in parts) == 101
    assert slide.white_cells == 4 and slide.differential_row("neutrophil").percent == pytest.approx(50.0)
    # Ratios come from the summed counts (1 platelet per 101 red cells), not from the mean of the images'.
    assert slide.platelets_per_100_red_cells == pytest.approx(100 / 101)
    assert slide.parasitemia_percent == pytest.approx(100 / 101)
    assert images[0].summary().to_dict() == parts[0].to_dict()  # Prediction.summary() is summarize([self])


def test_attribute_counts_to_dict_and_rows():
    blast = Cell((0, 0, 10, 10), detection_index("myeloblast"), 0.9, {"nucleolus": "prominent"})
    other = Cell((20, 0, 30, 10), detection_index("myeloblast"), 0.9, {"nucleolus": "inconspicuous"})
    third = Cell((40, 0, 50, 10), detection_index("lymphoblast"), 0.9, {"nucleolus": "prominent"})
    found = summarize([prediction([blast, other, third] + cells({"rbc": 4, "platelet": 1}, row=1))])
    assert found.attribute_counts == {"nucleolus": {"inconspicuous": 1, "prominent": 2}}
    data = json.loads(json.dumps(found.to_dict()))
    assert data["differential"][6] == {
        "category": "blast",
        "classes": ["myeloblast", "lymphoblast", "monoblast"],
        "count": 3,
        "percent": 100.0,
        "percent_of_classified": 100.0,
    }
    assert data["platelets_per_100_red_cells"] == 25.0 and data["schistocyte_percent"] is None
    assert [f["code"] for f in data["flags"]] == list(found.flag_codes)
    rows = found.to_rows()
    assert all(tuple(row) == SUMMARY_COLUMNS for row in rows)
    by_item = {(r["section"], r["item"], r["unit"]): r for r in rows}
    assert by_item[("platelets", "platelets per 100 red cells", "per 100 red cells")]["value"] == 25.0
    assert by_item[("morphology", "nucleolus=prominent", "cells")]["count"] == 2
    assert by_item[("flags", "blasts_present", "")]["note"].startswith("blasts")


# --- the HTML report -------------------------------------------------------------------------------------


class _Collector(HTMLParser):
    """Collects text, start tags and image sources, and checks that non-void tags close in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.open: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.mismatched.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_holds_the_numbers_and_parses(tmp_path):
    pixels = np.full((60, 80, 3), 200, dtype=np.uint8)
    field = prediction(
        cells({"neutrophil": 3, "lymphocyte": 1, "rbc": 40, "platelet": 6}), "<b>&field.png", pixels
    )
    bare = prediction(cells({"rbc": 10, "myeloblast": 1}), "no-image.png")
    summary = summarize([field, bare])
    path = write_slide_report([field, bare], summary, tmp_path / "slide", title="Slide <1> & co")
    assert path == tmp_path / "slide" / "report.html"
    html_text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(html_text)
    parser.close()
    assert parser.mismatched == [] and parser.open == []
    text = " ".join(parser.text)
    assert "Slide <1> & co" in text and "<b>&field.png" in text  # escaped, shown as text
    assert "b" not in parser.tags and "script" not in parser.tags
    assert "svg" in parser.tags and parser.tags.count("rect") == 3  # neutrophil, lymphocyte, blast bars
    assert "60.00" in text and "20.00" in text  # 3 and 1 of 5 white cells, the blast 1 of 5
    assert f"{100 * 6 / 50:.2f}" in text  # 6 platelets per 50 red cells
    assert "blasts_present" in text and "few_white_cells" in text
    assert len(parser.images) == 1  # only the prediction with pixels has an overlay
    prefix = "data:image/png;base64,"
    assert parser.images[0].startswith(prefix)
    thumbnail = Image.open(io.BytesIO(base64.b64decode(parser.images[0][len(prefix) :])))
    assert thumbnail.format == "PNG" and max(thumbnail.size) <= 320
    assert list(tmp_path.joinpath("slide").iterdir()) == [path]  # no temporary file left behind
    assert not np.all(np.asarray(thumbnail.convert("RGB")) == 200)  # the cells are drawn on it

    # An image that already is an overlay picture is embedded as it is.
    plain = write_slide_report([field], None, tmp_path / "slide", file_name="plain.html", draw_overlays=False)
    parser = _Collector()
    parser.feed(plain.read_text(encoding="utf-8"))
    picture = Image.open(io.BytesIO(base64.b64decode(parser.images[0][len(prefix) :]))).convert("RGB")
    assert picture.size == (80, 60) and np.all(np.asarray(picture) == 200)


def test_the_report_writer_is_importable_from_the_clinical_module():
    from unihema.inference import clinical

    assert clinical.write_slide_report is write_slide_report
    with pytest.raises(AttributeError, match="no_such_name"):
        clinical.no_such_name  # noqa: B018


# --- real data: the ground truth, counted by summarize and directly --------------------------------------


def _ground_truth_predictions(samples) -> list[Prediction]:
    return [
        Prediction(
            source=s.sample_id,
            image_size=s.image_size,
            tasks=("detection",),
            cells=[
                Cell(tuple(float(v) for v in box), int(label), 1.0)
                for box, label in zip(s.boxes, s.box_labels)
            ],
        )
        for s in samples
    ]


def _direct_counts(samples) -> tuple[int, int, int]:
    rbc, wbc, platelet = (detection_index(name) for name in ("RBC", "WBC", "Platelets"))
    labels = np.concatenate([s.box_labels for s in samples]) if samples else np.zeros(0, dtype=np.int64)
    return int((labels == rbc).sum()), int((labels == wbc).sum()), int((labels == platelet).sum())


@pytest.mark.realdata
@pytest.mark.parametrize(("dataset", "reader"), [("bccd", "voc"), ("txl_pbc", "yolo")])
def test_ground_truth_counts_of_the_test_split(dataset, reader):
    samples = [s for s in get_reader(reader).read(dataset_path(dataset)).samples if s.split == "test"]
    assert samples, f"{dataset} has no test split"
    predictions = _ground_truth_predictions(samples)
    for sample, one in list(zip(samples, predictions))[:5] + [(samples[-1], predictions[-1])]:
        red, white, platelets = _direct_counts([sample])
        found = summarize([one])
        assert (found.red_cells, found.white_cells, found.platelets) == (red, white, platelets), (
            sample.sample_id
        )
        assert found.platelets_per_100_red_cells == (pytest.approx(100 * platelets / red) if red else None)
    red, white, platelets = _direct_counts(samples)
    slide = summarize(predictions)
    assert slide.n_images == len(samples) and slide.n_cells == sum(len(s.box_labels) for s in samples)
    assert (slide.red_cells, slide.white_cells, slide.platelets) == (red, white, platelets)
    assert slide.platelets_per_100_red_cells == pytest.approx(100 * platelets / red)
    # Both datasets box white cells without a type: the differential is all "unspecified".
    assert slide.classified_white_cells == 0 and slide.differential_row("unspecified").percent == 100.0
    assert slide.film == "thin" and slide.parasites == 0 and slide.low_confidence_cells == 0
    assert "few_white_cells" in slide.flag_codes and "parasites_present" not in slide.flag_codes
    if dataset == "txl_pbc":  # the test-split box counts its SOURCE.md lists
        assert (red, white, platelets) == (2456, 155, 76)
