"""The dataset catalog: the 46 datasets of the Uni-Hema paper, and the real datasets this package reads.

Two kinds of entries live in one registry:

- **paper entries** (``kind == "paper"``): one per dataset *and task group* as the paper counts them
  ("11 segmentation, 18 detection and 17 classification datasets", section 4.1: 46 in all). They are the
  rows of the dataset table the authors published with their code, reconciled with section 4.1:

  * the table lists "WBC Image Dataset" and "SSL Seg" with the same link (``zxaoyou/segmentation_WBC``)
    and section 4.1 names only the "WBC Image dataset [90]": one entry, with "SSL Seg" as an alias;
  * section 4.1 cites NuClick [32] among the classification sources, the table only under segmentation:
    an extra classification entry;
  * section 4.1 names PD-PF [74] among the detection datasets, the table does not: an extra detection
    entry. ErythrocytesIDB [19] and AneRBC [65] are also named among the detection datasets; they keep
    their single segmentation entry, with ``Task.DETECTION`` added to their tasks and a note.

  A dataset the table lists under two task groups (BCCD, KRD-WBC, MP-IDB, Acevedo, NuClick) has one entry
  per group, hence the ``_seg`` / ``_det`` / ``_cls`` suffix of every paper entry's name.
- **staged entries** (``kind == "staged"``): the real datasets with a native reader in
  :mod:`unihema.data.formats`, named like their folder (``bccd``, ``txl_pbc`` ...), with the reader and
  its options, the origin repository and commit, and the paper entries they correspond to.

Facts come from the paper (its section 4.1, tables and reference list), the authors' dataset table, and
for staged entries from each dataset's ``SOURCE.md``. A field nobody could check is ``None`` (shown as
"unknown"), never a guess. Links are kept as published, including the odd ones; ``notes`` says when a
link looks wrong.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES, cell_index, detection_index

UNKNOWN_TEXT = "unknown"
"""How a field that is not known is displayed."""

READER_FORMATS: tuple[str, ...] = ("voc", "yolo", "coco", "masks", "folders", "attributes", "points")
"""Names of the native-format readers; ``native_format`` is one of these or a descriptive string."""

Kind = Literal["paper", "staged"]
Vocabulary = Literal["detection", "cell"]

DET, SEG, CLS = Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog entry.

    Attributes:
        name: registry slug (``"bccd_det"``, ``"txl_pbc"``); lower case, digits and ``_``.
        display_name: the name as the paper / the authors' table / the source spells it.
        kind: ``"paper"`` for the paper's 46 datasets, ``"staged"`` for the real datasets read here.
        tasks: the tasks the dataset supervises (``unihema.data.schema.Task``).
        paper_task: for paper entries, the task group the paper counts the entry in; ``None`` otherwise.
        disease: disease context (``"malaria"``, ``"healthy"`` ...) or ``None`` when not known.
        magnification: microscope magnification(s) when known, else ``None``.
        native_format: a reader name of :data:`READER_FORMATS`, or a descriptive string ("unknown" when
            the format was not checked).
        classes: ``(source label, unified name)`` pairs, or ``None`` when the label set is not known. The
            unified name is a canonical entry of the vocabulary named by ``class_vocabulary``.
        class_vocabulary: ``"detection"`` (``DETECTION_CLASSES``) or ``"cell"`` (``CELL_CLASSES``).
        license: license as stated by the source, or ``None``.
        homepage: landing page (repository, data portal) or ``None``.
        download_url: a direct link to a downloadable file, or ``None`` when there is none.
        sha256: hex digest of the file at ``download_url`` when known.
        size: size in bytes of the file at ``download_url`` when known.
        paper_url: link to the dataset's paper, or ``None``.
        citation: the reference, as the Uni-Hema paper's reference list gives it when it cites the dataset.
        paper_ref: the Uni-Hema paper's reference number (``"[68]"``) when it cites the dataset.
        aliases: other names the dataset goes by (used by :func:`get_dataset`).
        reader: staged entries: the reader (format) name used to load the folder.
        reader_options: staged entries: keyword options passed to the reader's ``read``.
        corresponds_to: staged entries: names of the paper entries holding (part of) the same data.
        origin: staged entries: origin repository and commit.
        subset: staged entries: True when only part of the source was staged.
        notes: anything a user must know (odd links, quirks, reconciliation choices).
    """

    name: str
    display_name: str
    kind: Kind
    tasks: tuple[Task, ...]
    paper_task: Task | None = None
    disease: str | None = None
    magnification: str | None = None
    native_format: str = UNKNOWN_TEXT
    classes: tuple[tuple[str, str], ...] | None = None
    class_vocabulary: Vocabulary | None = None
    license: str | None = None
    homepage: str | None = None
    download_url: str | None = None
    sha256: str | None = None
    size: int | None = None
    paper_url: str | None = None
    citation: str | None = None
    paper_ref: str | None = None
    aliases: tuple[str, ...] = ()
    reader: str | None = None
    reader_options: tuple[tuple[str, Any], ...] = ()
    corresponds_to: tuple[str, ...] = ()
    origin: str | None = None
    subset: bool | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"catalog entry {self.name!r}: name must be lower-case letters, digits and '_'")
        if self.kind not in ("paper", "staged"):
            raise ValueError(
                f"catalog entry {self.name!r}: kind must be 'paper' or 'staged', got {self.kind!r}"
            )
        object.__setattr__(self, "tasks", tuple(Task(task) for task in self.tasks))
        if not self.tasks:
            raise ValueError(f"catalog entry {self.name!r}: tasks is empty")
        if self.kind == "paper" and self.paper_task not in self.tasks:
            raise ValueError(f"catalog entry {self.name!r}: paper_task {self.paper_task} not among its tasks")
        if (self.classes is None) != (self.class_vocabulary is None):
            raise ValueError(f"catalog entry {self.name!r}: classes and class_vocabulary go together")
        if self.classes is not None:
            lookup = detection_index if self.class_vocabulary == "detection" else cell_index
            for source, unified in self.classes:
                try:
                    lookup(unified)
                except KeyError:
                    raise ValueError(
                        f"catalog entry {self.name!r}: class {source!r} -> {unified!r} does not resolve in the "
                        f"{self.class_vocabulary} vocabulary"
                    ) from None
        if self.kind == "staged" and self.reader not in READER_FORMATS:
            raise ValueError(
                f"catalog entry {self.name!r}: staged entries need a reader, got {self.reader!r}"
            )
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            raise ValueError(f"catalog entry {self.name!r}: sha256 must be 64 hex digits")

    @property
    def options(self) -> dict[str, Any]:
        """``reader_options`` as a fresh dict (safe to modify)."""
        return {key: _thaw(value) for key, value in self.reader_options}

    @property
    def class_map(self) -> dict[str, int]:
        """Source label -> index in the unified vocabulary (``DETECTION_CLASSES`` or ``CELL_CLASSES``)."""
        if self.classes is None:
            return {}
        lookup = detection_index if self.class_vocabulary == "detection" else cell_index
        return {source: lookup(unified) for source, unified in self.classes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; unknown fields are ``None``."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "kind": self.kind,
            "tasks": [task.value for task in self.tasks],
            "paper_task": None if self.paper_task is None else self.paper_task.value,
            "disease": self.disease,
            "magnification": self.magnification,
            "native_format": self.native_format,
            "classes": None if self.classes is None else [list(pair) for pair in self.classes],
            "class_vocabulary": self.class_vocabulary,
            "license": self.license,
            "homepage": self.homepage,
            "download_url": self.download_url,
            "sha256": self.sha256,
            "size": self.size,
            "paper_url": self.paper_url,
            "citation": self.citation,
            "paper_ref": self.paper_ref,
            "aliases": list(self.aliases),
            "reader": self.reader,
            "reader_options": self.options,
            "corresponds_to": list(self.corresponds_to),
            "origin": self.origin,
            "subset": self.subset,
            "notes": self.notes,
        }


def display(value: Any) -> str:
    """Text for a field value: ``None`` and empty values read "unknown"."""
    if value is None or value == "" or value == () or value == []:
        return UNKNOWN_TEXT
    if isinstance(value, Task):
        return value.value
    if isinstance(value, (tuple, list)):
        return ", ".join(display(item) for item in value)
    return str(value)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _freeze(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    def freeze_value(value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple((key, freeze_value(item)) for key, item in value.items())
        if isinstance(value, list):
            return tuple(freeze_value(item) for item in value)
        return value

    return tuple((key, freeze_value(value)) for key, value in options.items())


def _thaw(value: Any) -> Any:
    # Frozen mappings are tuples of (str, value) pairs; everything else stays as is (json-able).
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in value)
    ):
        return {key: _thaw(item) for key, item in value}
    return value


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    """Classes whose source label already is the unified name."""
    return tuple((name, name) for name in names)


# --- classes shared by several entries -----------------------------------------------------------------

_SMEAR_3: tuple[tuple[str, str], ...] = (("RBC", "rbc"), ("WBC", "wbc"), ("Platelets", "platelet"))
_WBC_5: tuple[tuple[str, str], ...] = _same("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
_PBC_8: tuple[tuple[str, str], ...] = (
    ("basophil", "basophil"), ("eosinophil", "eosinophil"), ("erythroblast", "erythroblast"),
    ("ig", "immature granulocyte"), ("lymphocyte", "lymphocyte"), ("monocyte", "monocyte"),
    ("neutrophil", "neutrophil"), ("platelet", "platelet"),
)  # fmt: skip
# The 21 bone-marrow classes of BMC, in the order of the authors' 45-class head (their ids 0-20).
_BMC_21: tuple[tuple[str, str], ...] = tuple((name, name) for name in CELL_CLASSES[:21])
# LeukemiaAttri: 13 WBC types plus "None" (the authors' detection ids 1-14).
_LEUKEMIAATTRI_14: tuple[tuple[str, str], ...] = (
    *((name, name) for name in DETECTION_CLASSES[:13]),
    ("None", "unidentified"),
)
# Malaria life stages of M5 (the authors' detection ids 15-18).
_M5_STAGES: tuple[tuple[str, str], ...] = _same("gametocyte", "schizont", "trophozoite", "ring")
# BBBC041 (P. vivax) categories.
_BBBC041: tuple[tuple[str, str], ...] = (
    ("red blood cell", "rbc"), ("trophozoite", "trophozoite"), ("ring", "ring"), ("schizont", "schizont"),
    ("gametocyte", "gametocyte"), ("leukocyte", "leukocyte"), ("difficult", "difficult"),
)  # fmt: skip


# --- the paper's 46 datasets ----------------------------------------------------------------------------


def _paper(
    name: str, display_name: str, paper_task: Task, *, tasks: tuple[Task, ...] = (), **fields: Any
) -> DatasetInfo:
    all_tasks = (paper_task, *(task for task in tasks if task != paper_task))
    return DatasetInfo(
        name=name, display_name=display_name, kind="paper", tasks=all_tasks, paper_task=paper_task, **fields
    )


_CITE = {
    "[1]": "Syed Saiden Abbas and Tjeerd MH Dijkstra. Detection and stage classification of plasmodium falciparum from images of giemsa stained thin blood films using random forest classifiers. Diagnostic pathology, 15(1):130, 2020.",
    "[2]": "Andrea Acevedo, Anna Merino, Santiago Alférez, Ángel Molina, Laura Boldú, and José Rodellar. A dataset of microscopic peripheral blood cell images for development of automatic recognition systems. Data in brief, 30:105474, 2020.",
    "[3]": "Haval Taha Ali, Fattah Alizadeh, and Nawsherwan Sadiq Mohammad. White blood cell microscopic image dataset for segmentation. Available at SSRN 4617448.",
    "[4]": "JR Alipo-on, FI Escobar, JL Novia, MM Atienza, S Manay, MJ Tan, N AlDahoul, and E Yu. Dataset for machine learning-based classification of white blood cells of the juvenile visayan warty pig. 2022.",
    "[7]": "Alexandra Bodzas, Pavel Kodytek, and Jan Zidek. A high-resolution large-scale dataset of pathological and normal white blood cells. Scientific Data, 10(1):466, 2023.",
    "[12]": "Deponker Sarker Depto, Shazidur Rahman, Md Mekayel Hosen, Mst Shapna Akter, Tamanna Rahman Reme, Aimon Rahman, Hasib Zunair, M Sohel Rahman, and MRC Mahdy. Automatic segmentation of blood cells from microscopic slides: a comparative analysis. Tissue and Cell, 73:101653, 2021.",
    "[13]": "Eden. parasite detection dataset. https://universe.roboflow.com/eden-lcx9y/parasite-detection, 2024.",
    "[14]": "Ahmed Elsafty, Ahmed Soliman, and Yomna Ahmed. 1 million segmented red blood cells with 240 k classified in 9 shapes and 47 k patches of 25 manual blood smears. Scientific Data, 11(1):722, 2024.",
    "[17]": "Lu Gan and Xi Li. Txl-pbc: a freely accessible labeled peripheral blood cell dataset. arXiv preprint arXiv:2407.13214, 2024.",
    "[19]": "Manuel Gonzalez-Hidalgo, FA Guerrero-Pena, Silena Herold-García, Antoni Jaume-i Capó, and Pedro D Marrero-Fernández. Red blood cell cluster separation from digital images for use in sickle cell disease. IEEE journal of biomedical and health informatics, 19(4):1514-1525, 2014.",
    "[21]": "Matthias Hehr, Ario Sadafi, Christian Matek, Peter Lienemann, Christian Pohlkamp, Torsten Haferlach, Karsten Spiekermann, and Carsten Marr. A morphological dataset of white blood cells from patients with four different genetic aml entities and non-malignant controls (aml-cytomorphology_mll_helmholtz). 2023.",
    "[24]": "Jane Hung and Anne Carpenter. Applying faster r-cnn for object detection on malaria images. In Proceedings of the IEEE conference on computer vision and pattern recognition workshops, pages 56-61, 2017.",
    "[30]": "Yasmin M Kassim, Feng Yang, Hang Yu, Richard J Maude, and Stefan Jaeger. Diagnosing malaria patients with plasmodium falciparum and vivax using deep learning for thick smear images. Diagnostics, 11(11):1994, 2021.",
    "[32]": "Navid Alemi Koohbanani, Mostafa Jahanifar, Neda Zamani Tajadin, and Nasir Rajpoot. Nuclick: a deep learning framework for interactive segmentation of microscopic images. Medical Image Analysis, 65:101771, 2020.",
    "[33]": "Zahra Mousavi Kouzehkanan, Sepehr Saghari, Eslam Tavakoli, Peyman Rostami, Mohammadjavad Abaszadeh, Farzaneh Mirzadeh, Esmaeil Shahabi Satlsar, Maryam Gheidishahran, Fatemeh Gorgi, Saeed Mohammadi, et al. Raabin-wbc: a large free access dataset of white blood cells from normal peripheral blood. bioRxiv, pages 2021-05, 2021.",
    "[38]": "Andrea Loddo, Cecilia Di Ruberto, Michel Kocher, and Guy Prod'Hom. Mp-idb: the malaria parasite image database for image processing and analysis. In Sipaim-Miccai Biomedical Workshop, pages 57-65. Springer, 2018.",
    "[41]": "Christian Matek, Simone Schwarz, Carsten Marr, and Karsten Spiekermann. A single-cell morphological dataset of leukocytes from aml patients and non-malignant controls (aml-cytomorphology_lmu). The Cancer Imaging Archive (TCIA), 2019.",
    "[42]": "Christian Matek, Sebastian Krappe, Christian Münzenmayer, Torsten Haferlach, and Carsten Marr. Highly accurate differentiation of bone marrow cell morphologies using deep neural networks on a large image data set. Blood, 138(20):1917-1927, 2021.",
    "[43]": "Mostafa Mohamed and Behrouz Far. An enhanced threshold based technique for white blood cells nuclei automatic segmentation. In 2012 IEEE 14th International Conference on e-Health Networking, Applications and Services (Healthcom), pages 202-207. IEEE, 2012.",
    "[46]": "S Mourya, S Kant, P Kumar, A Gupta, and R Gupta. All challenge dataset of isbi 2019 (c-nmc 2019) (version 1) [dataset]. The Cancer Imaging Archive, 2019.",
    "[52]": "Jimut Bahan Pal, Aniket Bhattacharyea, Debasis Banerjee, and Br Tamal Maharaj. Advancing instance segmentation and wbc classification in peripheral blood smear through domain adaptation: A study on pbc and the novel rv-pbs datasets. Expert Systems with Applications, 249:123660, 2024.",
    "[55]": "John A Quinn, Alfred Andama, Ian Munabi, and Fred N Kiwanuka. Automated blood smear analysis for mobile malaria diagnosis. Mobile point-of-care monitors and diagnostic device design, page 115, 2018.",
    "[59]": "Abdul Rehman, Talha Meraj, Aiman Mahmood Minhas, Ayisha Imran, Mohsen Ali, and Waqas Sultani. A large-scale multi domain leukemia dataset for the white blood cells detection with morphological attributes for explainability. In MICCAI, pages 553-563. Springer, 2024.",
    "[65]": "Muhammad Shahzad, Syed Hamad Shirazi, Muhammad Yaqoob, Zakir Khan, Assad Rasheed, Israr Ahmed Sheikh, Asad Hayat, and Huiyu Zhou. Anerbc dataset: a benchmark dataset for computer-aided anemia diagnosis using rbc images. Database, 2024:baae120, 2024.",
    "[66]": "Usman Ali Shams, Isma Javed, Muhammad Fizan, Aqib Raza Shah, Ghulam Mustafa, Muhammad Zubair, Yehia Massoud, Muhammad Qasim Mehmood, and Muhammad Asif Naveed. Bio-net dataset: Ai-based diagnostic solutions using peripheral blood smear images. Blood Cells, Molecules, and Diseases, 105:102823, 2024.",
    "[67]": "Eugene Shenderov. Acute promyelocytic leukemia (apl). Kaggle Dataset, 2019.",
    "[68]": "shenggan, Nicolas Chen, cosmicad, and akshaylamba. Bccd: Blood cell count and detection, 2018.",
    "[70]": "Waqas Sultani, Wajahat Nawaz, Syed Javed, Muhammad Sohail Danish, Asma Saadia, and Mohsen Ali. Towards low-cost and efficient malaria detection. In 2022 IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR), pages 20655-20664. IEEE, 2022.",
    "[74]": "F Boray Tek, Andrew G Dempster, and Izzet Kale. Computer vision for microscopy diagnosis of malaria. Malaria journal, 8(1):153, 2009.",
    "[76]": "Satoshi Tsutsui, Winnie Pang, and Bihan Wen. Wbcatt: a white blood cell dataset annotated with detailed morphological attributes. Advances in Neural Information Processing Systems, 36:50796-50824, 2023.",
    "[78]": "Florence Tushabe, Samuel Mwesige, Vicent Kasule, Emily Nsiimire, Sarah C Musani, David Areu, and Emmanuel Othieno. An image-based sickle cell detection method. Authorea Preprints, 2024.",
    "[84]": "Feng Yang, Mahdieh Poostchi, Hang Yu, Zhou Zhou, Kamolrat Silamut, Jian Yu, Richard J Maude, Stefan Jaeger, and Sameer Antani. Deep learning for smartphone-based malaria parasite detection in thick blood smears. IEEE journal of biomedical and health informatics, 24(5):1427-1438, 2019.",
    "[85]": "Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister, and Bingbing Ni. Medmnist v2-a large-scale lightweight benchmark for 2d and 3d biomedical image classification. Scientific Data, 10(1):41, 2023.",
    "[90]": "Xin Zheng, Yong Wang, Guoyou Wang, and Jianguo Liu. Fast and robust segmentation of white blood cell images by self-supervised learning. Micron, 107:55-71, 2018.",
}  # fmt: skip


def _ref(number: str) -> dict[str, str]:
    return {"paper_ref": number, "citation": _CITE[number]}


_RG = "https://www.researchgate.net"
_MENDELEY_ANERBC = "https://data.mendeley.com/public-api/zip/hms3sjzt7f/download/1"
_FIGSHARE_RVPBS = "https://figshare.com/ndownloader/articles/23804523/versions/2"
_MPIDB = "https://github.com/andrealoddo/MP-IDB-The-Malaria-Parasite-Image-Database-for-Image-Processing-and-Analysis"
_RAABIN_ROBOFLOW = "https://universe.roboflow.com/raabintest/raabin-wbc-data"

_PAPER_ENTRIES: tuple[DatasetInfo, ...] = (
    # ---- segmentation (11) ----
    _paper(
        "malaria_detection_2019_seg", "Malaria-Detection-2019", SEG, disease="malaria",
        download_url="https://data.mendeley.com/public-api/zip/5bf2kmwvfn/download/1",
        paper_url="https://link.springer.com/article/10.1186/s13000-020-01040-9", **_ref("[1]"),
        aliases=("MD-2019", "Malaria Cell Images"),
        notes="P. falciparum, Giemsa-stained thin films (per the cited paper's title).",
    ),
    _paper(
        "nuclick_seg", "NuClick", SEG, homepage="https://github.com/navidstuv/NuClick",
        paper_url="https://arxiv.org/pdf/2005.14511.pdf", **_ref("[32]"),
    ),
    _paper(
        "krd_wbc_seg", "KRD-WBC", SEG, homepage="https://data.mendeley.com/datasets/jzdj6h7gms/2",
        paper_url="https://data.mendeley.com/datasets/jzdj6h7gms/2", **_ref("[3]"), aliases=("KRD",),
        notes="Table 1 of the paper gives its disease as 'Unknown'.",
    ),
    _paper(
        "wbc_image_dataset_seg", "WBC Image Dataset", SEG, tasks=(CLS,), native_format="masks",
        classes=_WBC_5, class_vocabulary="cell", license="GPL-3.0",
        homepage="https://github.com/zxaoyou/segmentation_WBC", paper_url="https://doi.org/10.1016/j.micron.2018.01.010",
        **_ref("[90]"), aliases=("SSL Seg", "segmentation_WBC"),
        notes="The authors' table also lists 'SSL Seg' with the same link; section 4.1 names one 'WBC Image "
        "dataset [90]', so both rows are this entry. Masks: 0 background, 128 cytoplasm, 255 nucleus; "
        "one WBC class label per image (CSV).",
    ),
    _paper(
        "white_blood_cell_dataset_seg", "White Blood Cell Dataset", SEG, native_format="masks",
        homepage="https://www.raabindata.com/free-data/",
        paper_url=f"{_RG}/profile/Amr-Guaily/publication/261072982_An_efficient_technique_for_white_blood_cells_nuclei_automatic_segmentation",
        **_ref("[43]"),
        notes="The authors' table links raabindata.com for this row, but the reference it cites [43] is the "
        "BCCD WBC-nucleus mask set distributed in github.com/arbackes/White-Blood-Cell-dataset (staged here "
        "as bccd_nucleus_masks).",
    ),
    _paper(
        "erythrocytesidb_seg", "ErythrocytesIDB", SEG, tasks=(DET,), disease="sickle cell disease",
        homepage="https://doi.org/10.5281/zenodo.18299473",
        paper_url=f"{_RG}/publication/265607505_Red_Blood_Cell_Cluster_Separation_From_Digital_Images_for_Use_in_Sickle_Cell_Disease",
        **_ref("[19]"), aliases=("Erythrocytes", "erythrocytesIDB"),
        notes="Section 4.1 also names 'Erythrocytes [19]' among the detection datasets.",
    ),
    _paper(
        "anerbc_ii_anemic_seg", "AneRBC-II-Anemic", SEG, tasks=(DET,), disease="anemia",
        download_url=_MENDELEY_ANERBC, **_ref("[65]"), aliases=("AneRBC-Anemic",),
        notes="One archive holds both AneRBC-II subsets (anemic and healthy). Section 4.1 also names "
        "'AneRBC [65]' among the detection datasets.",
    ),
    _paper(
        "anerbc_ii_healthy_seg", "AneRBC-II-Healthy", SEG, tasks=(DET,), disease="healthy",
        download_url=_MENDELEY_ANERBC, **_ref("[65]"), aliases=("AneRBC-Healthy",),
        notes="One archive holds both AneRBC-II subsets (anemic and healthy). Section 4.1 also names "
        "'AneRBC [65]' among the detection datasets.",
    ),
    _paper(
        "mp_idb_seg", "MP-IDB", SEG, disease="malaria", homepage=_MPIDB, paper_url=_MPIDB, **_ref("[38]"),
        notes="Table 1 of the paper reports a segmentation row 'IDB2 [38]' with disease 'Leukemia'; the "
        "reference [38] is MP-IDB (malaria).",
    ),
    _paper(
        "elsafty_rbc_seg", "Elsafty-RBC for AI", SEG, disease="anemia",
        download_url="https://figshare.com/ndownloader/files/43957974",
        paper_url=f"{_RG}/journal/Scientific-Data-2052-4463/publication/381921572_1_Million_Segmented_Red_Blood_Cells_With_240_K_Classified_in_9_Shapes_and_47_K_Patches_of_25_Manual_Blood_Smears",
        **_ref("[14]"), aliases=("Elsafty",),
    ),
    _paper(
        "bbbc041seg_seg", "BBBC041Seg", SEG, homepage="https://datasetninja.com/blood-cell-segmentation",
        paper_url="https://www.sciencedirect.com/science/article/abs/pii/S0040816621001695", **_ref("[12]"),
        notes="Not seen in training: the paper evaluates on it as an unseen dataset (Table 2).",
    ),
    # ---- detection (18) ----
    _paper(
        "leukemiaattri_det", "LeukemiaAttri", DET, tasks=(Task.FOV_MORPHOLOGY, Task.MLM), disease="leukemia",
        magnification="40x, 100x", native_format="YOLO txt with 6 attribute columns (cls x y w h a1..a6)",
        classes=_LEUKEMIAATTRI_14, class_vocabulary="detection",
        homepage="https://github.com/intelligentMachines-ITU/Blood-Cancer-Dataset-Lukemia-Attri-MICCAI-2024",
        paper_url="https://papers.miccai.org/miccai-2024/paper/4180_paper.pdf/", **_ref("[59]"),
        notes="Subsets H_40x_C2, H_100x_C2, L_40x_C2, L_100x_C2 (high-/low-cost microscope, objective). "
        "Source of the 6 field-of-view morphology attributes and of the LeukemiaAttri-MLM sentences.",
    ),
    _paper(
        "m5_det", "M5", DET, disease="malaria", magnification="400x, 1000x", classes=_M5_STAGES,
        class_vocabulary="detection",
        homepage="https://github.com/intelligentMachines-ITU/LowCostMalariaDetection_CVPR_2022",
        paper_url="https://im.itu.edu.pk/m5-malaria-dataset/", **_ref("[70]"),
        notes="Subsets H_1000x, L_1000x, H_400x, L_400x (high-/low-cost microscope, magnification).",
    ),
    _paper(
        "txl_pbc_det", "TXL PBC", DET, disease="healthy", native_format="yolo",
        classes=(("WBC", "wbc"), ("RBC", "rbc"), ("Platelets", "platelet")), class_vocabulary="detection",
        license="MIT", homepage="https://github.com/lugan113/TXL-PBC_Dataset",
        paper_url="https://arxiv.org/abs/2407.13214", **_ref("[17]"), aliases=("TXL-PBC", "TXL"),
        notes="The authors' table gives no links; homepage and paper are those of the dataset's authors.",
    ),
    _paper(
        "bccd_det", "BCCD", DET, disease="healthy", native_format="voc", classes=_SMEAR_3,
        class_vocabulary="detection", license="MIT", homepage="https://datasetninja.com/bccd#download",
        **_ref("[68]"),
        notes="Original release: github.com/Shenggan/BCCD_Dataset (Pascal VOC, MIT). The authors' table has "
        "no paper link for this row.",
    ),
    _paper(
        "sickle_cell_det", "Sickle-cell", DET, disease="sickle cell disease", classes=(("Sickle Cells", "sickle cell"),),
        class_vocabulary="detection",
        paper_url=f"{_RG}/profile/Florence-Tushabe-2/publication/385820893_An_Image-based_Sickle_Cell_Detection_Method",
        **_ref("[78]"), aliases=("Sick-cell", "Sickle Cell"),
        notes="The authors' table has no data link for this row.",
    ),
    _paper(
        "plasmodium_det", "Plasmodium", DET, disease="malaria", **_ref("[55]"),
        notes="The authors' table gives no links for this row.",
    ),
    _paper(
        "plasmodium_phonecamera_det", "Plasmodium Phonecamera", DET, disease="malaria",
        notes="The authors' table gives no links and no reference for this row.",
    ),
    _paper(
        "tuberculosis_phonecamera_det", "Tuberculosis Phonecamera", DET, disease="tuberculosis",
        classes=(("TBbacillus", "tb bacillus"),), class_vocabulary="detection",
        notes="The authors' table gives no links and no reference for this row.",
    ),
    _paper(
        "vivax_det", "Vivax", DET, disease="malaria", classes=_BBBC041, class_vocabulary="detection",
        homepage="https://datasetninja.com/malaria-bounding-boxes",
        paper_url=f"{_RG}/profile/Anne-Carpenter-3/publication/324769547_Applying_Faster_R-CNN_for_Object_Detection_on_Malaria_Images",
        **_ref("[24]"), aliases=("BBBC041",),
        notes="P. vivax thin smears (Broad Bioimage Benchmark Collection BBBC041).",
    ),
    _paper(
        "thickbloodsmears_det", "ThickBloodSmears", DET, disease="malaria",
        homepage="https://lhncbc.nlm.nih.gov/LHC-research/LHC-projects/image-processing/malaria-datasheet.html",
        paper_url=f"{_RG}/profile/Stefan-Jaeger-4/publication/336011001_Deep_Learning_for_Smartphone-Based_Malaria_Parasite_Detection_in_Thick_Blood_Smears",
        **_ref("[84]"),
    ),
    _paper(
        "nih_nlm_thick_pv_det", "NIH-NLM-Thick PV", DET, disease="malaria",
        homepage="https://data.lhncbc.nlm.nih.gov/public/Malaria/Thick_Smears_150/index.html", **_ref("[30]"),
        notes="The authors' table has no paper link for this row; section 4.1 cites [30].",
    ),
    _paper(
        "parasite_det", "Parasite", DET, disease="parasites",
        homepage="https://universe.roboflow.com/eden-lcx9y/parasite-detection", **_ref("[13]"),
        aliases=("Parasites",),
        notes="The authors' table links a paper on P. falciparum / vivax thick smears (Diagnostics 2021) as "
        "this row's data; Table 1 of the paper cites [13] (a Roboflow project), used as homepage here.",
    ),
    _paper(
        "acevedo_det", "Acevedo", DET, disease="healthy", native_format="folders",
        homepage="https://data.mendeley.com/datasets/snkd93bnjr/draft?a=d9582c71-9af0-4e59-9062-df30df05a121",
        paper_url=f"{_RG}/publication/340522931_A_dataset_of_microscopic_peripheral_blood_cell_images_for_development_of_automatic_recognition_systems",
        **_ref("[2]"), aliases=("PBC",),
        notes="Listed under detection in the authors' table although the dataset holds single-cell images "
        "(one centred cell per image); see acevedo_cls.",
    ),
    _paper(
        "mp_idb_det", "MP-IDB", DET, disease="malaria", homepage=_MPIDB,
        paper_url=f"{_RG}/profile/Andrea-Loddo-3/publication/331570908_MP-IDB_The_Malaria_Parasite_Image_Database_for_Image_Processing_and_Analysis",
        **_ref("[38]"),
        notes="Evaluated as an unseen dataset in Table 2 ('Malaria [38, 66]').",
    ),
    _paper(
        "bio_net_det", "Bio-Net", DET,
        homepage="https://www.sciencedirect.com/science/article/abs/pii/S1079979624000019",
        paper_url="https://doi.org/10.1016/j.bcmd.2024.102823", **_ref("[66]"),
        notes="Evaluated as an unseen dataset in Table 2. The table's data link is the article page.",
    ),
    _paper(
        "raabin_m1_det", "Raabin-M1", DET, disease="healthy", homepage=_RAABIN_ROBOFLOW,
        paper_url=f"{_RG}/publication/353163296_Raabin-WBC_a_large_free_access_dataset_of_white_blood_cells_from_normal_peripheral_blood",
        **_ref("[33]"),
    ),
    _paper(
        "raabin_m2_det", "Raabin-M2", DET, disease="healthy", homepage=_RAABIN_ROBOFLOW, **_ref("[33]"),
        notes="The authors' table has no paper link for this row.",
    ),
    _paper(
        "pd_pf_det", "PD-PF", DET, disease="malaria", **_ref("[74]"),
        notes="Named only in section 4.1 ('PD-PF [74]'), not in the authors' table: no links.",
    ),
    # ---- classification (17) ----
    _paper(
        "bmc_cls", "BMC", CLS, disease="lymphoma", classes=_BMC_21, class_vocabulary="cell",
        homepage="https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=101941770",
        paper_url="https://ashpublications.org/blood/article/138/20/1917/477932/Highly-accurate-differentiation-of-bone-marrow",
        **_ref("[42]"),
        notes="Bone-marrow cytology, 21 classes. Table 1 of the paper gives its disease as 'Lymphoma'.",
    ),
    _paper(
        "aml_matek_cls", "AML Matek", CLS, disease="acute myeloid leukemia",
        homepage="https://www.cancerimagingarchive.net/collection/aml-cytomorphology_lmu/",
        paper_url="https://doi.org/10.7937/tcia.2019.36f5o9ld", **_ref("[41]"),
    ),
    _paper(
        "raabin_wbc_cls", "Raabin WBC", CLS, disease="healthy", classes=_WBC_5, class_vocabulary="cell",
        homepage="https://raabindata.com/free-data/", paper_url="https://www.nature.com/articles/s41598-021-04426-x",
        **_ref("[33]"), aliases=("Raabin",),
        notes="5 WBC classes from normal peripheral blood.",
    ),
    _paper(
        "warty_pig_cls", "Warty Pig", CLS,
        homepage="https://drive.google.com/drive/folders/1CsDoL448kvAtFVd5jowVJGKjFLv3qjz4",
        paper_url="https://ieee-dataport.org/documents/dataset-machine-learning-based-classification-white-blood-cells-juvenile-visayan-warty-pig",
        **_ref("[4]"), notes="White blood cells of the juvenile Visayan warty pig (animal blood).",
    ),
    _paper(
        "lisc_cls", "LISC", CLS, homepage="http://users.cecs.anu.edu.au/~hrezatofighi/Data/Leukocyte%20Data.htm",
        paper_url="https://pubmed.ncbi.nlm.nih.gov/21300521/",
        notes="Not in the paper's reference list; links from the authors' table.",
    ),
    _paper(
        "krd_wbc_cls", "KRD-WBC", CLS, homepage="https://data.mendeley.com/datasets/jzdj6h7gms/2",
        paper_url="https://data.mendeley.com/datasets/jzdj6h7gms/2", **_ref("[3]"),
    ),
    _paper(
        "bccd_cls", "BCCD", CLS, disease="healthy", homepage="https://www.kaggle.com/datasets/konstantinazov/bccd-dataset",
        paper_url=f"{_RG}/publication/261072982_An_efficient_technique_for_white_blood_cells_nuclei_automatic_segmentation",
        **_ref("[68]"),
        notes="The authors' table links a WBC-nuclei segmentation paper as this row's paper, not BCCD's.",
    ),
    _paper(
        "hrls_cls", "HRLS", CLS, **_ref("[7]"),
        notes="The authors' table gives no links; section 4.1 cites [7] (pathological and normal WBCs).",
    ),
    _paper(
        "apl_aml_cls", "APL_AML", CLS, disease="leukemia (APL, AML)",
        homepage="https://www.kaggle.com/datasets/eugeneshenderov/acute-promyelocytic-leukemia-apl/data",
        paper_url="https://pubmed.ncbi.nlm.nih.gov/33990660/", **_ref("[67]"), aliases=("APL",),
    ),
    _paper(
        "white_blood_cell_dataset_cls", "White-Blood-Cell-Dataset", CLS,
        homepage="https://github.com/arbackes/White-Blood-Cell-dataset",
        paper_url="https://ieeexplore.ieee.org/abstract/document/6379408/",
        notes="The authors' table writes both links as malformed markdown ('[#](url)'); the urls are kept.",
    ),
    _paper(
        "acevedo_cls", "Acevedo", CLS, disease="healthy", native_format="folders", classes=_PBC_8,
        class_vocabulary="cell", download_url="https://data.mendeley.com/public-api/zip/snkd93bnjr/download/1",
        paper_url="https://www.sciencedirect.com/science/article/abs/pii/S0169260719303578",
        **_ref("[2]"), aliases=("PBC", "PBC_dataset_normal_DIB"),
        notes="Also evaluated as an unseen dataset in Table 2. 8 classes, one centred cell per image.",
    ),
    _paper(
        "rv_pbs_cls", "RV PBS", CLS, download_url=_FIGSHARE_RVPBS,
        paper_url="https://www.sciencedirect.com/science/article/abs/pii/S0957417424005268", **_ref("[52]"),
        aliases=("RV-PBS",), notes="Evaluated as an unseen dataset in Table 2 ('RV-PBS.8').",
    ),
    _paper(
        "pbc_8_da_cls", "PBC-8-DA", CLS, download_url=_FIGSHARE_RVPBS,
        notes="The authors' table gives the RV PBS archive link (as malformed markdown) and no paper.",
    ),
    _paper(
        "c_nmc_2019_cls", "C-NMC2019", CLS, disease="acute lymphoblastic leukemia",
        homepage="https://faspex.cancerimagingarchive.net/aspera/faspex/public/package?context=eyJyZXNvdXJjZSI6InBhY2thZ2VzIiwidHlwZSI6ImV4dGVybmFsX2Rvd25sb2FkX3BhY2thZ2UiLCJpZCI6IjczNCIsInBhc3Njb2RlIjoiNDM3ZmMzM2RkMzQ1ZmMzZjNjM2FlY2JmZWQ0MThlY2NjYTkzM2RmMiIsInBhY2thZ2VfaWQiOiI3MzQiLCJlbWFpbCI6ImhlbHBAY2FuY2VyaW1hZ2luZ2FyY2hpdmUubmV0In0=",
        **_ref("[46]"), aliases=("C-NMC",),
        notes="Evaluated as an unseen dataset in Table 2. The link is an Aspera package page, not a file.",
    ),
    _paper(
        "bloodmnist_cls", "BloodMNIST", CLS, homepage="https://zenodo.org/records/5208230",
        paper_url="https://www.nature.com/articles/s41597-022-01721-8", **_ref("[85]"), aliases=("MiniSit",),
        notes="Part of MedMNIST v2; Table 2 of the paper lists it as 'MiniSit [85]' (unseen).",
    ),
    _paper(
        "aml_hehr_cls", "AML Hehr", CLS, disease="acute myeloid leukemia",
        homepage="https://www.cancerimagingarchive.net/collection/aml-cytomorphology_mll_helmholtz/",
        paper_url="https://journals.plos.org/digitalhealth/article?id=10.1371/journal.pdig.0000187", **_ref("[21]"),
    ),
    _paper(
        "nuclick_cls", "NuClick", CLS, homepage="https://github.com/navidstuv/NuClick",
        paper_url="https://arxiv.org/pdf/2005.14511.pdf", **_ref("[32]"),
        notes="Cited among the classification sources in section 4.1 ([32]); the authors' table lists "
        "NuClick under segmentation only.",
    ),
)  # fmt: skip


# --- the staged real datasets ---------------------------------------------------------------------------


def _github(repo: str, commit: str) -> dict[str, str]:
    return {
        "homepage": f"https://github.com/{repo}",
        "download_url": f"https://github.com/{repo}/archive/{commit}.zip",
        "origin": f"{repo}@{commit}",
    }


def _staged(
    name: str,
    display_name: str,
    reader: str,
    tasks: tuple[Task, ...],
    *,
    options: Mapping[str, Any] | None = None,
    **fields: Any,
) -> DatasetInfo:
    return DatasetInfo(
        name=name, display_name=display_name, kind="staged", tasks=tasks, reader=reader,
        native_format=reader, reader_options=_freeze(options or {}), **fields,
    )  # fmt: skip


_STAGED_ENTRIES: tuple[DatasetInfo, ...] = (
    _staged(
        "bccd", "BCCD (Blood Cell Count and Detection)", "voc", (DET,), disease="healthy", classes=_SMEAR_3,
        class_vocabulary="detection", license="MIT", **_github("Shenggan/BCCD_Dataset", "d272fb14cdff6e473fafeeeba32aba5f560e9e43"),
        corresponds_to=("bccd_det",), subset=False, citation=_CITE["[68]"], paper_ref="[68]",
        notes="364 images, 640x480. 2 zero-area boxes (BloodImage_00338, 00343); RBC boxes are incomplete; "
        "6 images have no WBC box. 221 images reappear in txl_pbc.",
    ),
    _staged(
        "txl_pbc", "TXL-PBC", "yolo", (DET,), disease="healthy",
        classes=(("WBC", "wbc"), ("RBC", "rbc"), ("Platelets", "platelet"), ("Platelet", "platelet"), ("PC", "platelet")),
        class_vocabulary="detection", license="MIT", **_github("lugan113/TXL-PBC_Dataset", "056d09e45403f4d1321b99cdb2cfcc3eb605edcf"),
        paper_url="https://arxiv.org/abs/2407.13214", citation=_CITE["[17]"], paper_ref="[17]",
        corresponds_to=("txl_pbc_det",), subset=False,
        notes="1440 images in train/val/test. Each labels/<split>/ holds a classes.txt that is not a label "
        "file. Reuses 221 BCCD and 500 PBC images byte for byte.",
    ),
    _staged(
        "bccd_nucleus_masks", "BCCD WBC-nucleus masks (BloodImageSetS6NucSeg)", "masks", (SEG,),
        options={"images_root": "../bccd/BCCD/JPEGImages", "mapping": "nonzero"},
        license=None, **_github("arbackes/White-Blood-Cell-dataset", "65cc7fe8eaf73892aedcadfa513fabcf869204f7"),
        citation=_CITE["[43]"], paper_ref="[43]", corresponds_to=("white_blood_cell_dataset_seg", "white_blood_cell_dataset_cls"),
        subset=False,
        notes="Masks only: the images are the BCCD JPEGs (../bccd/BCCD/JPEGImages). 367 masks, 364 paired; "
        "BloodImage_00096, 00280 and 00329 have no image. Foreground = nonzero pixels.",
    ),
    _staged(
        "segmentation_wbc", "WBC Image Dataset (segmentation_WBC)", "masks", (SEG, CLS),
        options={"mapping": "cell", "classification": True},
        classes=(("1", "neutrophil"), ("2", "lymphocyte"), ("3", "monocyte"), ("4", "eosinophil"), ("5", "basophil")),
        class_vocabulary="cell", license="GPL-3.0",
        **_github("zxaoyou/segmentation_WBC", "fa9c01622f52bccb9aeb8a6f2628f564e377767d"),
        paper_url="https://doi.org/10.1016/j.micron.2018.01.010", citation=_CITE["[90]"], paper_ref="[90]",
        corresponds_to=("wbc_image_dataset_seg",), subset=False,
        notes="300 (Dataset 1, JTSC) + 100 (Dataset 2, CellaVision) BMP images with PNG masks (0 background, "
        "128 cytoplasm, 255 nucleus); whole-WBC foreground = cytoplasm + nucleus (values nearer to 128 or "
        "255 than to 0, which also clears the stray low values of 5 Dataset 2 masks).",
    ),
    _staged(
        "pbc", "PBC (Acevedo et al., PBC_dataset_normal_DIB)", "folders", (CLS,), disease="healthy",
        classes=_PBC_8, class_vocabulary="cell", **_github("AuralinACC/Blood-Cell-Classification", "d2e7b75e11e21df3fb39f4d1d30004381663d96a"),
        paper_url="https://www.sciencedirect.com/science/article/abs/pii/S0169260719303578", citation=_CITE["[2]"],
        paper_ref="[2]", corresponds_to=("acevedo_cls", "acevedo_det"), subset=True,
        notes="Subset: 2560 of 17,092 images, 320 per class. The host repo's MIT license covers that repo; "
        "the original dataset's license was not checked.",
    ),
    _staged(
        "wbcatt", "WBCAtt", "attributes", (Task.CELL_MORPHOLOGY, CLS),
        disease="healthy", classes=tuple((name.capitalize(), name) for name, _ in _WBC_5), class_vocabulary="cell",
        license="MIT", **_github("apple2373/wbcatt", "ad255b80f6d56b9f72508b04466c3c4a2c95c97b"),
        paper_url="https://arxiv.org/abs/2306.13531", citation=_CITE["[76]"], paper_ref="[76]", subset=True,
        notes="11 morphology attributes for 10,298 PBC cells. The images are PBC's, staged for 1600 rows; the "
        "reader looks for them in the sibling folder pbc. The paper builds its WBCAtt-VQA set from it and "
        "evaluates on it as unseen (Table 2).",
    ),
    _staged(
        "bccd_wbc_crops", "BCCD WBC crops", "folders", (CLS,), disease="healthy",
        classes=(("Neutrophil", "neutrophil"), ("Eosinophil", "eosinophil"), ("Lymphocyte", "lymphocyte"), ("Monocyte", "monocyte"), ("Basophil", "basophil")),
        class_vocabulary="cell", license=None, **_github("apple2373/BCCD", "7751031e0b41bcfdff998cbc4c698a445a60b49e"),
        corresponds_to=("bccd_cls",), subset=False,
        notes="351 WBC crops from BCCD images in class folders (BCCD_cropped/<Class>/). Basophil has 3 crops. "
        "labels.csv is the raw, partly empty Kaggle file: the folders are the labels.",
    ),
    _staged(
        "chula_rbc12", "Chula RBC-12", "points", (CLS,),
        classes=(
            ("0", "normal rbc"), ("1", "macrocyte"), ("2", "microcyte"), ("3", "spherocyte"), ("4", "target cell"),
            ("5", "stomatocyte"), ("6", "ovalocyte"), ("7", "teardrop cell"), ("8", "burr cell"), ("9", "schistocyte"),
            ("10", "uncategorised rbc"), ("11", "hypochromic rbc"), ("12", "elliptocyte"),
        ),
        class_vocabulary="cell", license="MIT", **_github("Chula-PIC-Lab/Chula-RBC-12-Dataset", "fa130f48135d79bbd69f8e540b533511017d6896"),
        paper_url="https://arxiv.org/abs/2012.01321", subset=True,
        notes="Subset: 208 of 623 labelled images, 7617 points (x y class per line, no box size). Not one "
        "of the paper's datasets.",
    ),
    _staged(
        "fiocruz_malaria_thick", "FIOCRUZ malaria thick-smear detection (Roboflow malaria-nq3nz v2)", "yolo", (DET,),
        disease="malaria", classes=(("p.falciparum", "p. falciparum"), ("p.vivax", "p. vivax")), class_vocabulary="detection",
        license="CC BY 4.0", **_github("williancarddd/fiocruz-malaria-cells-detec", "641541365b870d36ac48a4034dcb3502e9a71aa0"),
        subset=True,
        notes="Subset: 70 of 207 thick-smear fields (4000x3000), 436 falciparum + 142 vivax boxes; only "
        "parasites are boxed. Not one of the paper's datasets; the FIOCRUZ origin is not confirmed.",
    ),
    _staged(
        "erythrocytesidb1", "erythrocytesIDB1 individual cells", "folders", (CLS, SEG), disease="sickle cell disease",
        classes=(("circular", "circular rbc"), ("falciforme", "elongated rbc"), ("outras", "other rbc shape")),
        class_vocabulary="cell", license=None,
        **_github("victoralcantara75/erythrocytes-classification", "bc44bfd8d6503a2efbed0dd075e4657fc01a1ca8"),
        citation=_CITE["[19]"], paper_ref="[19]", corresponds_to=("erythrocytesidb_seg",), subset=False,
        notes="626 80x80 cells (circular 202, elongated 211, other 213) with one TIFF mask each, fold 1 of the "
        "host repo's 5-fold split; pair masks by class and stem (2 stems sit in different split folders).",
    ),
    _staged(
        "sickle_uganda", "Sickle cell disease smears from Uganda (Tushabe et al.)", "folders", (CLS,),
        disease="sickle cell disease",
        classes=(("Positive", "sickle-positive field"), ("Negative", "sickle-negative field")), class_vocabulary="cell",
        license=None, **_github("sahodeVroY/Sickle-Cell-Disease-Detection", "b0048474879a89ea4e55996cc1791c4d0256892d"),
        citation=_CITE["[78]"], paper_ref="[78]", corresponds_to=("sickle_cell_det",), subset=True,
        notes="Subset: 30 positive fields (Labelled copy with boxes drawn on the pixels + clean Unlabelled "
        "copy) and 30 negative fields; image-level labels only, no box file.",
    ),
)  # fmt: skip


_REGISTRY: dict[str, DatasetInfo] = {}
for _entry in (*_PAPER_ENTRIES, *_STAGED_ENTRIES):
    if _entry.name in _REGISTRY:
        raise ValueError(f"catalog entry {_entry.name!r} defined twice")
    _REGISTRY[_entry.name] = _entry

PAPER_DATASET_COUNT = 46
"""Number of datasets the paper trains and evaluates on (11 segmentation + 18 detection + 17 classification)."""


def list_datasets(kind: Kind | None = None) -> list[DatasetInfo]:
    """Every catalog entry (paper entries first, in the paper's task order), optionally of one ``kind``."""
    return [entry for entry in _REGISTRY.values() if kind is None or entry.kind == kind]


def paper_datasets() -> list[DatasetInfo]:
    """The paper's 46 datasets (segmentation, then detection, then classification)."""
    return list_datasets("paper")


def staged_datasets() -> list[DatasetInfo]:
    """The real datasets this package reads, with their reader and options."""
    return list_datasets("staged")


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def get_dataset(name: str) -> DatasetInfo:
    """The entry named ``name`` (slug, display name or alias, case and punctuation ignored).

    A display name or alias shared by several entries (``"BCCD"``: ``bccd``, ``bccd_det``, ``bccd_cls``)
    resolves to the staged entry when there is one, else raises ``KeyError`` listing the candidates.

    Raises:
        KeyError: unknown name, with the closest matches.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    key = _key(name)
    matches = [
        entry
        for entry in _REGISTRY.values()
        if key in {_key(entry.name), _key(entry.display_name), *map(_key, entry.aliases)}
    ]
    staged = [entry for entry in matches if entry.kind == "staged" and _key(entry.name) == key]
    if staged:
        return staged[0]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(entry.name for entry in matches)
        raise KeyError(f"dataset name {name!r} is ambiguous: it matches {names}")
    candidates = {_key(entry.name): entry.name for entry in _REGISTRY.values()}
    for entry in _REGISTRY.values():
        for alias in (entry.display_name, *entry.aliases):
            candidates.setdefault(_key(alias), entry.name)
    close = difflib.get_close_matches(key, list(candidates), n=5, cutoff=0.5)
    suggestions = list(dict.fromkeys(candidates[c] for c in close))
    hint = (
        f"; did you mean {', '.join(suggestions)}?" if suggestions else "; run `unihema data list` to see all"
    )
    raise KeyError(f"unknown dataset {name!r}{hint}")


def staged_dataset_for_folder(folder_name: str) -> DatasetInfo | None:
    """The staged entry whose name is ``folder_name`` (a dataset folder's name), or ``None``."""
    entry = _REGISTRY.get(folder_name)
    return entry if entry is not None and entry.kind == "staged" else None


# --- markdown ---------------------------------------------------------------------------------------------


def _link(url: str | None, text: str = "link") -> str:
    return f"[{text}]({url})" if url else UNKNOWN_TEXT


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _classes_text(entry: DatasetInfo) -> str:
    if entry.classes is None:
        return UNKNOWN_TEXT
    return "; ".join(
        source if source == unified else f"{source} → {unified}" for source, unified in entry.classes
    )


def catalog_markdown() -> str:
    """The catalog as the markdown of ``docs/datasets.md`` (the file is generated from this)."""
    lines = [
        "# Datasets",
        "",
        "<!-- Generated by unihema.data.catalog.catalog_markdown(); do not edit by hand. -->",
        "",
        'The catalog behind `unihema data list` / `unihema data info NAME`. "unknown" means nobody could',
        "check the fact; nothing here is guessed. Links are kept as the authors published them; the notes",
        "say when one looks wrong.",
        "",
        f"## The paper's {PAPER_DATASET_COUNT} datasets",
        "",
        "One entry per dataset and task group, as the paper counts them (section 4.1: 11 segmentation,",
        "18 detection and 17 classification datasets). The rows of the authors' dataset table, reconciled",
        'with section 4.1: "SSL Seg" is an alias of the WBC Image Dataset (same link, one dataset in 4.1);',
        "NuClick is also a classification source ([32] in 4.1) and PD-PF [74] a detection source that the",
        "table omits; ErythrocytesIDB and AneRBC, also named among the detection datasets in 4.1, keep one",
        "entry each with the detection task added.",
        "",
    ]
    for task, title in ((SEG, "Segmentation"), (DET, "Detection"), (CLS, "Classification")):
        entries = [entry for entry in paper_datasets() if entry.paper_task == task]
        lines += [
            f"### {title} ({len(entries)})",
            "",
            "| name | dataset | ref | tasks | disease | magnification | format | classes (→ unified) | license | data | paper | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in entries:
            data = (
                _link(entry.download_url, "download") if entry.download_url else _link(entry.homepage, "page")
            )
            lines.append(
                "| "
                + " | ".join(
                    _cell(text)
                    for text in (
                        f"`{entry.name}`",
                        entry.display_name,
                        display(entry.paper_ref),
                        display([task.value for task in entry.tasks]),
                        display(entry.disease),
                        display(entry.magnification),
                        display(entry.native_format),
                        _classes_text(entry),
                        display(entry.license),
                        data,
                        _link(entry.paper_url),
                        entry.notes,
                    )
                )  # fmt: skip
                + " |"
            )
        lines.append("")
    lines += [
        "## Datasets read by this package",
        "",
        "Real datasets with a native reader (`unihema data check PATH` uses the reader and options below",
        'when the folder is named like the entry). "paper entry" names the catalog entries holding the',
        "same data.",
        "",
        "| name | dataset | reader | options | tasks | classes (→ unified) | license | subset | origin | paper entry | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in staged_datasets():
        options = json.dumps(entry.options, sort_keys=True) if entry.reader_options else "none"
        lines.append(
            "| "
            + " | ".join(
                _cell(text)
                for text in (
                    f"`{entry.name}`",
                    entry.display_name,
                    str(entry.reader),
                    f"`{options}`",
                    display([task.value for task in entry.tasks]),
                    _classes_text(entry),
                    display(entry.license),
                    display(entry.subset if entry.subset is None else ("yes" if entry.subset else "no")),
                    _link(entry.homepage, display(entry.origin)),
                    ", ".join(f"`{n}`" for n in entry.corresponds_to) or "none (not in the paper)",
                    entry.notes,
                )
            )  # fmt: skip
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


def write_catalog_markdown(path: str | os.PathLike[str]) -> Path:
    """Write :func:`catalog_markdown` to ``path`` atomically (``python -m unihema.data.catalog docs/datasets.md``)."""
    target = Path(path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(catalog_markdown())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def info_text(entry: DatasetInfo) -> str:
    """Human-readable description of one entry (``unihema data info``)."""
    rows: list[tuple[str, str]] = [
        ("name", entry.name),
        ("dataset", entry.display_name),
        ("kind", "one of the paper's datasets" if entry.kind == "paper" else "staged dataset with a reader"),
        ("tasks", display([task.value for task in entry.tasks])),
    ]
    if entry.kind == "paper":
        rows.append(("paper task group", display(entry.paper_task)))
    rows += [
        ("disease", display(entry.disease)),
        ("magnification", display(entry.magnification)),
        ("native format", display(entry.native_format)),
        (
            "classes",
            _classes_text(entry) + (f" ({entry.class_vocabulary} vocabulary)" if entry.classes else ""),
        ),
        ("license", display(entry.license)),
        ("homepage", display(entry.homepage)),
        ("download", display(entry.download_url)),
        ("sha256", display(entry.sha256)),
        ("size", display(entry.size)),
        ("paper", display(entry.paper_url)),
        ("reference", display(entry.paper_ref)),
        ("citation", display(entry.citation)),
    ]
    if entry.aliases:
        rows.append(("aliases", display(entry.aliases)))
    if entry.kind == "staged":
        rows += [
            ("reader", display(entry.reader)),
            ("reader options", json.dumps(entry.options, sort_keys=True) if entry.reader_options else "none"),
            ("origin", display(entry.origin)),
            ("subset", display(entry.subset if entry.subset is None else ("yes" if entry.subset else "no"))),
            ("paper entries", ", ".join(entry.corresponds_to) or "none (not one of the paper's datasets)"),
        ]
    else:
        staged = [other.name for other in staged_datasets() if entry.name in other.corresponds_to]
        rows.append(("staged copies", display(staged)))
    if entry.notes:
        rows.append(("notes", entry.notes))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


__all__ = [
    "PAPER_DATASET_COUNT",
    "READER_FORMATS",
    "UNKNOWN_TEXT",
    "DatasetInfo",
    "catalog_markdown",
    "display",
    "get_dataset",
    "info_text",
    "list_datasets",
    "paper_datasets",
    "staged_dataset_for_folder",
    "staged_datasets",
    "write_catalog_markdown",
]


if __name__ == "__main__":
    print(write_catalog_markdown(sys.argv[1] if len(sys.argv) > 1 else "docs/datasets.md"))
