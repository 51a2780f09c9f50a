"""Small datasets in native layouts, built in a test's ``tmp_path`` (never copied from a dataset).

- :func:`voc_fixture`: a VOC set in ``Images/`` + ``XML Files/`` with a misnamed ``<filename>``, an unknown
  class and a byte-identical duplicate image;
- :func:`colour_mask_fixture`: images in a folder with a space in its name and colour-coded RGB TIFF masks
  in ``gt/`` (white background, blue cytoplasm, cyan nucleus), one with a colour the map does not hold;
- :func:`yolo_fixture`: a YOLO set in ``smear photos/`` + ``box files (yolo)/`` with ``classes.txt``.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CYAN, BLUE, WHITE, RED = (0, 255, 255), (0, 0, 255), (255, 255, 255), (255, 0, 0)
COLOUR_MAP = {"nucleus": list(CYAN), "cytoplasm": list(BLUE), "background": list(WHITE)}
SMEAR_FOLDER = "Blood Smear Set 2"  # the images' folder: a name with spaces


def photo(path: Path, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """A noisy smear-like RGB image (many colours, different pixels per path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    pixels = np.clip(np.asarray([210, 160, 190]) + rng.integers(-60, 60, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)
    return path


def voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]], size=(64, 48)) -> str:
    boxes = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    return (
        f'<?xml version="1.0"?>\n<annotation><folder>JPEGImages</folder><filename>{filename}</filename>'
        f"<path>C:/labelling/machine/{filename}</path><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{boxes}</annotation>\n"
    )


def voc_fixture(root: Path) -> Path:
    """``Images/`` + ``XML Files/``: a misnamed ``<filename>``, an unknown class, a duplicate image."""
    images, xml = root / "Images", root / "XML Files"
    xml.mkdir(parents=True)
    for stem in ("smear_01", "smear_02", "smear_03", "smear_05"):
        photo(images / f"{stem}.jpg")
    shutil.copyfile(images / "smear_01.jpg", images / "smear_04.jpg")  # byte-identical copy
    rbc = ("RBC", (5, 5, 20, 20))
    (xml / "smear_01.xml").write_text(voc_xml("smear_01.jpg", [rbc, ("WBC", (30, 10, 60, 40))]))
    (xml / "smear_02.xml").write_text(voc_xml("IMG_9999.jpg", [rbc]))  # misnamed <filename>
    (xml / "smear_03.xml").write_text(voc_xml("smear_03.jpg", [rbc, ("Alien", (1, 1, 9, 9))]))
    (xml / "smear_04.xml").write_text(voc_xml("smear_04.jpg", [rbc, ("WBC", (30, 10, 60, 40))]))
    (xml / "smear_05.xml").write_text(voc_xml("smear_05.jpg", [("Platelets", (40, 30, 48, 38))]))
    return root


def colour_mask(path: Path, stray: int = 0, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """White background, a blue cytoplasm disc with a cyan nucleus; ``stray`` red pixels in a corner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    rgb = np.full((height, width, 3), WHITE, np.uint8)
    rgb[(yy - 24) ** 2 + (xx - 32) ** 2 < 15**2] = BLUE
    rgb[(yy - 24) ** 2 + (xx - 32) ** 2 < 7**2] = CYAN
    rgb.reshape(-1, 3)[:stray] = RED
    Image.fromarray(rgb).save(path, format=fmt)
    return path


def colour_mask_fixture(root: Path) -> Path:
    """Images in a folder with a space in its name, colour-coded RGB TIFF masks in ``gt/``."""
    for stem in ("001", "002", "003", "004"):
        photo(root / SMEAR_FOLDER / f"{stem}.jpg")
    colour_mask(root / "gt" / "001.tif")
    colour_mask(root / "gt" / "002.tif")
    colour_mask(root / "gt" / "003.tif", stray=12)  # a colour the map does not hold
    return root


def disc_areas() -> tuple[int, int]:
    yy, xx = np.mgrid[:48, :64]
    distance = (yy - 24) ** 2 + (xx - 32) ** 2
    return int((distance < 15**2).sum()), int((distance < 7**2).sum())


def yolo_fixture(root: Path) -> Path:
    """Images in ``smear photos/``, labels in ``box files (yolo)/``, class names in ``classes.txt``."""
    for stem in ("a", "b", "c"):
        photo(root / "smear photos" / f"{stem}.jpg", size=(100, 50))
    labels = root / "box files (yolo)"
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n")
    (labels / "b.txt").write_text("")  # an image without objects
    (labels / "c.txt").write_text("2 0.9 0.9 0.1 0.1\n")
    (root / "classes.txt").write_text("RBC\nWBC\nPlatelets\n")
    return root
