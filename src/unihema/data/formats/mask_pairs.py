"""How the mask reader (:mod:`unihema.data.formats.masks`) finds its image + mask pairs.

The layouts, in the order tried (the first that pairs anything wins), are listed in the mask reader's
module docstring: masks with a separate ``images_root``, ``images/`` + ``masks/``, same-folder pairs, and any
two folders told apart by content (:func:`~unihema.data.formats.mask_values.looks_like_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unihema.data.formats._common import IMAGE_EXTENSIONS, candidate_dirs
from unihema.data.formats._pairing import SNIFF_FILES, FolderIndex
from unihema.data.formats.mask_values import is_lossy, looks_like_mask, named_like_masks

MASK_EXTENSION = ".png"
LOSSLESS_MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = ("_mask", "_gt", "_label")
MASK_DIRS = ("masks", "mask", "gt", "ground_truth")
MIN_PAIRED_FRACTION = 0.5  # share of a folder's image files that must form pairs for it to count


@dataclass(frozen=True)
class MaskPair:
    """A mask and its image; either may be ``None`` when the other has no partner (reported as skipped)."""

    mask: Path | None
    image: Path | None
    # Folder the pair is named after (its class CSV, Sample.extra["group"]): the mask's folder, or the image
    # folder when the masks have a folder of their own found by content.
    group: Path

    @property
    def stem(self) -> str:
        return (self.mask or self.image).stem  # type: ignore[union-attr]


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.suffix.lower() != MASK_EXTENSION:
            files.setdefault(p.stem, p)
    return files


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == MASK_EXTENSION)


def _base_stem(stem: str) -> str:
    """``"001_mask"`` -> ``"001"``; a stem without a mask suffix is returned as it is."""
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _suffixed_masks(folder: Path) -> list[Path]:
    """Non-PNG lossless files named ``<stem>_mask`` (``_gt``, ``_label``)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in LOSSLESS_MASK_EXTENSIONS
        and p.suffix.lower() != MASK_EXTENSION
        and _base_stem(p.stem) != p.stem
    )


def _pairs_in_folder(folder: Path) -> list[MaskPair]:
    """Same-folder pairs: ``X.<img>`` + ``X.png``, or ``X.<ext>`` + ``X_mask.png`` / ``X_mask.tif`` (any
    lossless format; also ``_gt``, ``_label``); most files must pair."""
    images = _image_files(folder)
    all_images = {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    pairs = []
    for png in _pngs(folder):
        image = images.get(png.stem)
        if image is None and _base_stem(png.stem) != png.stem:
            image = all_images.get(_base_stem(png.stem))
        if image is not None:
            pairs.append(MaskPair(png, image, folder))
    for mask in _suffixed_masks(folder):  # ``X_mask.tif`` beside ``X.jpg``
        image = next((p for p in images.values() if p.stem == _base_stem(mask.stem) and p != mask), None)
        if image is not None:
            pairs.append(MaskPair(mask, image, folder))
    n_files = len(all_images)
    # A folder of images that merely contains a few same-stem PNGs is not a mask dataset.
    if not pairs or 2 * len(pairs) < MIN_PAIRED_FRACTION * n_files:
        return []
    paired = {p.image for p in pairs} | {p.mask for p in pairs}
    unpaired = [MaskPair(None, img, folder) for img in images.values() if img not in paired]
    return sorted(pairs + unpaired, key=lambda p: p.stem)


def _holds_masks(index: FolderIndex, folder: Path) -> bool:
    """Whether the first files of ``folder`` are masks: few colours, or JPEG in a folder named like masks."""
    sample = list(index.images(folder).values())[:SNIFF_FILES]
    if not sample:
        return False
    if all(is_lossy(p) for p in sample):
        return named_like_masks(folder)
    return all(looks_like_mask(p) for p in sample if not is_lossy(p))


def _pairs_across_folders(index: FolderIndex) -> list[MaskPair]:
    """Pairs of a mask folder and an image folder anywhere below the root, told apart by content; each
    folder is used once, the folders with the most pairs first (``train/gt`` + ``train/img`` and so on)."""
    found: list[tuple[int, Path, Path]] = []
    for masks_dir in index.dirs:
        keys = {_base_stem(stem) for stem in index.images(masks_dir)}
        pairing = index.image_folder_for(masks_dir, keys, exclude=[masks_dir])
        if pairing is None or not _holds_masks(index, masks_dir):
            continue
        # Two folders of few-colour images (drawings, masks of masks): the one named like masks holds them.
        if _holds_masks(index, pairing.images) and (
            not named_like_masks(masks_dir) or named_like_masks(pairing.images)
        ):
            continue
        found.append((pairing.paired, masks_dir, pairing.images))
    used: set[Path] = set()
    pairs: list[MaskPair] = []
    for _, masks_dir, images_dir in sorted(found, key=lambda item: -item[0]):
        if masks_dir in used or images_dir in used:
            continue
        used |= {masks_dir, images_dir}
        masks = {_base_stem(stem): path for stem, path in index.images(masks_dir).items()}
        images = index.images(images_dir)
        for stem in sorted(set(masks) | set(images)):
            pairs.append(MaskPair(masks.get(stem), images.get(stem), images_dir))
    return pairs


def find_pairs(root: Path, images_root: Path | None) -> list[MaskPair]:
    """Mask/image pairs at or below ``root`` (see the module docstring for the layouts).

    Masks without an image and images without a mask come back with ``None`` in place of the missing file
    (except images of a separate ``images_root``, which may belong to a larger dataset).
    """
    root = Path(root)
    if images_root is not None:
        if not images_root.is_dir():
            return []
        images = _image_files(images_root)
        pairs = []
        for folder in candidate_dirs(root):
            if folder.resolve() == images_root.resolve():
                continue
            for png in _pngs(folder):
                pairs.append(MaskPair(png, images.get(png.stem), folder))
        return pairs
    for folder in candidate_dirs(root):
        image_dir = folder / "images"
        mask_dir = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
        if image_dir.is_dir() and mask_dir is not None:
            images = _image_files(image_dir) | {p.stem: p for p in _pngs(image_dir)}
            masks = {
                m.stem: m
                for m in sorted(mask_dir.iterdir())
                if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS
            }
            found = [
                MaskPair(masks.get(s), images.get(s), mask_dir) for s in sorted(set(images) | set(masks))
            ]
            if any(p.image is not None and p.mask is not None for p in found):
                return found
    pairs = []
    for folder in candidate_dirs(root):
        pairs.extend(_pairs_in_folder(folder))
    if any(p.image is not None and p.mask is not None for p in pairs):
        return pairs
    return _pairs_across_folders(FolderIndex(root))
