"""The HTML report of one slide: its clinical summary, the differential as a bar chart, and its images.

:func:`write_slide_report` writes one self-contained HTML file (no external files, scripts or styles):
the overlays are embedded as base64 PNG thumbnails and the bar chart is inline SVG. Every piece of text
that comes from the data (sources, class names, messages, the title) is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from unihema.atomic import atomic_write_text
from unihema.data.vocab import DETECTION_CLASSES
from unihema.inference.clinical import ClinicalSummary, summarize
from unihema.inference.plotting import class_colour

if TYPE_CHECKING:
    from unihema.inference.results import Prediction

MISSING = "n/a"
"""What the report shows for an undefined quantity (a percentage without its denominator)."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.flag { color: #a00; } .images { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.8em; max-width: 320px; overflow-wrap: anywhere; }
"""


def _number(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table; cells are escaped, numbers right-aligned."""

    def cell(value: object) -> str:
        if isinstance(value, (int, float)) or value is None:
            return f'<td class="number">{escape(_number(value))}</td>'
        return f"<td>{escape(str(value))}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def differential_chart(summary: ClinicalSummary, width: int = 420, bar_height: int = 18) -> str:
    """The differential (percent of all white cells) as an inline SVG bar chart."""
    label_width, gap = 170, 4
    rows = [row for row in summary.differential if row.count > 0]
    height = max(1, len(rows)) * (bar_height + gap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + width + 70}" height="{height}" '
        f'role="img" aria-label="white-cell differential">'
    ]
    for i, row in enumerate(rows):
        y = i * (bar_height + gap)
        percent = row.percent or 0.0
        red, green, blue = class_colour(DETECTION_CLASSES.index(row.classes[0]))
        parts.append(
            f'<text x="0" y="{y + bar_height - 4}" font-size="12">{escape(row.category)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{width * percent / 100:.1f}" height="{bar_height}" '
            f'fill="rgb({red},{green},{blue})"><title>{escape(row.category)}: {row.count}</title></rect>'
            f'<text x="{label_width + width * percent / 100 + 4:.1f}" y="{y + bar_height - 4}" '
            f'font-size="12">{percent:.1f}%</text>'
        )
    if not rows:
        parts.append(f'<text x="0" y="{bar_height - 4}" font-size="12">no white cells</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(prediction: Prediction, side: int, draw: bool) -> str | None:
    """The overlay of ``prediction`` (``draw``) or its image as it is, as a PNG data URI no larger than
    ``side``; None without an image."""
    if prediction.image is None:
        return None
    picture = prediction.plot() if draw else Image.fromarray(prediction.image)
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary_sections(summary: ClinicalSummary) -> list[str]:
    thick = summary.film == "thick"
    white_basis = f"{summary.white_count_per_ul:,.0f}/uL" + (
        " (WHO assumption)" if summary.white_count_assumed else ""
    )
    red_basis = f"{summary.red_count_per_ul:,.0f}/uL" + (" (assumed)" if summary.red_count_assumed else "")
    flags = "".join(
        f'<li class="flag"><code>{escape(f.code)}</code>: {escape(f.message)}</li>' for f in summary.flags
    )
    sections = [
        "<h2>Review flags</h2>",
        f"<ul>{flags}</ul>" if flags else "<p>No flags.</p>",
        "<h2>White-cell differential</h2>",
        f"<p>{summary.white_cells:,} white cells, {summary.classified_white_cells:,} of a known type. "
        "&ldquo;% of white cells&rdquo; includes the white cells of unspecified type; "
        "&ldquo;% of classified&rdquo; leaves them out.</p>",
        differential_chart(summary),
        _table(
            ("category", "count", "% of white cells", "% of classified"),
            ((r.category, r.count, r.percent, r.percent_of_classified) for r in summary.differential),
        ),
        "<h2>Red cells and platelets</h2>",
        _table(
            ("quantity", "value", "unit"),
            [
                ("red cells", summary.red_cells, "cells"),
                *(
                    (r.name, r.percent, f"% of red cells ({r.count:,} cells)")
                    for r in summary.red_cell_shapes
                ),
                ("schistocytes", summary.schistocyte_percent, "% of red cells"),
                ("platelets", summary.platelets, "cells"),
                ("platelets per 100 red cells", summary.platelets_per_100_red_cells, "per 100 red cells"),
            ],
        ),
        "<h2>Malaria</h2>",
        _table(
            ("quantity", "value", "unit"),
            [
                ("film", "thick" if thick else "thin", ""),
                ("parasites", summary.parasites, "parasites"),
                ("infected red cells", summary.infected_red_cells, "cells"),
                ("parasitemia", summary.parasitemia_percent, "% of red cells"),
                ("parasite density", _number(summary.parasites_per_ul, 0), "parasites/uL"),
                ("white count used" if thick else "red count used", white_basis if thick else red_basis, ""),
            ],
        ),
        "<h2>Cells by class</h2>",
        _table(("class", "cells"), summary.class_counts.items()),
        "<h2>Quality</h2>",
        _table(
            ("quantity", "value", "unit"),
            [
                ("low-confidence cells", summary.low_confidence_cells, "cells"),
                (
                    "share",
                    summary.low_confidence_percent,
                    f"% of cells scoring below {summary.low_confidence_threshold:g}",
                ),
            ],
        ),
    ]
    if summary.attribute_counts:
        sections += [
            "<h2>Field-of-view morphology</h2>",
            _table(
                ("attribute", "value", "cells"),
                ((a, v, n) for a, values in summary.attribute_counts.items() for v, n in values.items()),
            ),
        ]
    if summary.warnings:
        sections += [
            "<h2>Warnings</h2>",
            "<ul>" + "".join(f"<li>{escape(w)}</li>" for w in summary.warnings) + "</ul>",
        ]
    return sections


def _image_sections(
    predictions: Sequence[Prediction],
    summary: ClinicalSummary,
    max_images: int,
    thumbnail_side: int,
    draw: bool,
) -> list[str]:
    per_image = [(p, summarize([p], film=summary.film)) for p in predictions]
    sections = [
        "<h2>Images</h2>",
        _table(
            ("image", "cells", "white cells", "red cells", "platelets", "parasites"),
            (
                (p.source, s.n_cells, s.white_cells, s.red_cells, s.platelets, s.parasites)
                for p, s in per_image
            ),
        ),
    ]
    figures = []
    for prediction, _ in per_image[:max_images]:
        uri = _thumbnail(prediction, thumbnail_side, draw)
        if uri is not None:
            caption = escape(prediction.source)
            figures.append(
                f'<figure><img src="{uri}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
            )
    if figures:
        sections.append('<div class="images">' + "".join(figures) + "</div>")
    if len(predictions) > max_images:
        sections.append(f"<p>{len(predictions) - max_images:,} more image(s) not shown.</p>")
    return sections


def render_slide_report(
    predictions: Sequence[Prediction],
    summary: ClinicalSummary | None = None,
    *,
    title: str = "UniHema slide report",
    max_images: int = 24,
    thumbnail_side: int = 320,
    draw_overlays: bool = True,
) -> str:
    """The report's HTML text (see :func:`write_slide_report`)."""
    summary = summarize(predictions) if summary is None else summary
    intro = (
        f"<p>{summary.n_images:,} image(s), {summary.n_cells:,} cells, {escape(summary.film)} film. "
        "Counts are detections, not a verified manual count: review the flagged items.</p>"
    )
    body = [
        f"<h1>{escape(title)}</h1>",
        intro,
        *_summary_sections(summary),
        *_image_sections(predictions, summary, max_images, thumbnail_side, draw_overlays),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_slide_report(
    predictions: Sequence[Prediction],
    summary: ClinicalSummary | None,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "UniHema slide report",
    file_name: str = "report.html",
    max_images: int = 24,
    thumbnail_side: int = 320,
    draw_overlays: bool = True,
) -> Path:
    """Write the slide's HTML report to ``out_dir / file_name`` atomically; returns its path.

    Args:
        predictions: the slide's images.
        summary: their :func:`~unihema.inference.clinical.summarize` (None computes it with the defaults).
        out_dir: the folder to write into (created if missing).
        title: the report's heading and page title.
        file_name: the report's file name.
        max_images: overlays embedded at most (the per-image table lists every image).
        thumbnail_side: longest side of an embedded overlay, in pixels.
        draw_overlays: draw the cells on each image (``Prediction.plot()``); False embeds
            ``Prediction.image`` as it is (for images that already are overlay pictures).
    """
    html_text = render_slide_report(
        predictions,
        summary,
        title=title,
        max_images=max_images,
        thumbnail_side=thumbnail_side,
        draw_overlays=draw_overlays,
    )
    return atomic_write_text(Path(out_dir) / file_name, html_text)
