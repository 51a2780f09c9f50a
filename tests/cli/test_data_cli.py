"""`unihema data list / info / download / check`, run in-process through `unihema.cli.main` and as a process.

The check tests load every staged dataset and compare the summary with the numbers of its SOURCE.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.paths import REPO_ROOT, dataset_path
from unihema.cli import main
from unihema.data import catalog

pytestmark = pytest.mark.realdata


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check_json(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "data", "check", str(path), "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return env


# --- list / info -----------------------------------------------------------------------------------------


def test_list_json_and_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "list", "--json")
    assert code == 0
    entries = json.loads(out)
    assert len(entries) == len(catalog.list_datasets())
    assert {e["name"] for e in entries} >= {"bccd", "txl_pbc_det", "pd_pf_det", "wbc_image_dataset_seg"}
    code, out, _ = run_cli(capsys, "data", "list", "--kind", "paper", "--json")
    assert len(json.loads(out)) == 46
    code, out, _ = run_cli(capsys, "data", "list", "--kind", "staged", "--task", "segmentation")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "tasks"]
    assert {line.split()[0] for line in lines[1:-1]} == {
        "bccd_nucleus_masks",
        "segmentation_wbc",
        "erythrocytesidb1",
    }
    assert lines[-1] == "3 dataset(s)"


def test_info_text_json_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "info", "SSL Seg")
    assert code == 0 and "wbc_image_dataset_seg" in out and "GPL-3.0" in out
    code, out, _ = run_cli(capsys, "data", "info", "plasmodium_phonecamera_det", "--json")
    data = json.loads(out)
    assert data["homepage"] is None and data["paper_task"] == "detection"
    code, _, err = run_cli(capsys, "data", "info", "bcdd")
    assert code == 2 and "unknown dataset 'bcdd'" in err and "bccd" in err


def test_data_list_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from unihema.cli import main\n"
        "rc = main(['data', 'list'])\n"
        "assert 'torch' not in sys.modules, 'unihema data list imported torch'\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "46" not in done.stderr and "pd_pf_det" in done.stdout


# --- download --------------------------------------------------------------------------------------------


class _FileHandler(BaseHTTPRequestHandler):
    body = b"catalog download test\n" * 1000

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/dataset.zip":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def local_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_uses_the_direct_link(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_url: str
) -> None:
    import hashlib

    import unihema.cli.data as data_cli

    entry = catalog.DatasetInfo(
        name="local_test", display_name="Local", kind="staged", tasks=("detection",), reader="voc",
        download_url=f"{local_url}/dataset.zip", sha256=hashlib.sha256(_FileHandler.body).hexdigest(),
        size=len(_FileHandler.body),
    )  # fmt: skip
    monkeypatch.setattr(data_cli, "get_dataset", lambda name: entry)
    code, out, err = run_cli(
        capsys, "data", "download", "local_test", "--to", str(tmp_path / "dl"), "--quiet"
    )
    assert code == 0, err
    assert Path(out.strip()) == tmp_path / "dl" / "dataset.zip"
    assert (tmp_path / "dl" / "dataset.zip").read_bytes() == _FileHandler.body
    broken = catalog.DatasetInfo(
        name="local_test", display_name="Local", kind="staged", tasks=("detection",), reader="voc",
        download_url=f"{local_url}/missing.zip",
    )  # fmt: skip
    monkeypatch.setattr(data_cli, "get_dataset", lambda name: broken)
    code, _, err = run_cli(capsys, "data", "download", "local_test", "--to", str(tmp_path / "dl"))
    assert code == 1 and "HTTP error 404" in err and f"{local_url}/missing.zip" in err


def test_download_without_direct_link_points_to_the_homepage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "data", "download", "bccd_det", "--to", str(tmp_path))
    assert code == 1
    assert "no direct download link" in err and "https://datasetninja.com/bccd#download" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli(capsys, "data", "download", "plasmodium_phonecamera_det", "--to", str(tmp_path))
    assert code == 1 and "knows no page" in err


# --- check on every staged dataset -----------------------------------------------------------------------


def test_check_bccd(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("bccd"))
    assert report["format"] == "voc" and report["images"] == 364
    # SOURCE.md: RBC 4155 (2 of them zero-area, dropped as fixed), WBC 372, Platelets 361.
    assert report["annotations"] == {"platelet": 361, "rbc": 4153, "wbc": 372}
    assert report["splits"] == {"train": 205, "val": 87, "test": 72}
    zero_area = [f["path"] for f in report["fixed"] if "zero area" in f["what"]]
    assert sorted(zero_area) == [
        "BCCD/Annotations/BloodImage_00338.xml",
        "BCCD/Annotations/BloodImage_00343.xml",
    ]
    assert report["skipped"] == []


def test_check_txl_pbc(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("txl_pbc"))
    assert report["format"] == "yolo" and report["images"] == 1440
    assert report["annotations"] == {"wbc": 1515, "rbc": 24271, "platelet": 851}
    assert report["splits"] == {"train": 1008, "val": 288, "test": 144}
    assert report["skipped"] == []
    ignored = {f["path"] for f in report["fixed"] if "not a label file" in f["what"]}
    assert ignored == {f"TXL_PBC/labels/{split}/classes.txt" for split in ("train", "val", "test")}


def test_check_bccd_nucleus_masks(capsys: pytest.CaptureFixture[str]) -> None:
    dataset_path("bccd")  # its images
    report = check_json(capsys, dataset_path("bccd_nucleus_masks"))
    assert report["format"] == "masks" and report["options"]["images_root"] == "../bccd/BCCD/JPEGImages"
    assert report["images"] == 364 and report["masks"] == 364
    assert sorted(Path(item["path"]).stem for item in report["skipped"]) == [
        "BloodImage_00096", "BloodImage_00280", "BloodImage_00329",
    ]  # fmt: skip


def test_check_segmentation_wbc(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("segmentation_wbc"))
    assert report["images"] == 400 and report["masks"] == 400
    assert report["annotations"] == {
        "neutrophil": 209,
        "lymphocyte": 90,
        "monocyte": 63,
        "eosinophil": 34,
        "basophil": 4,
    }
    stray = {Path(f["path"]).name for f in report["fixed"] if "stray" in f["what"]}
    assert stray == {"034.png", "035.png", "047.png", "050.png", "076.png"}


def test_check_pbc(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("pbc"))
    assert report["format"] == "folders" and report["images"] == 2560
    classes = (
        "basophil",
        "eosinophil",
        "erythroblast",
        "immature granulocyte",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    )
    assert report["annotations"] == dict.fromkeys(classes, 320)


def test_check_wbcatt(capsys: pytest.CaptureFixture[str]) -> None:
    dataset_path("pbc")  # its images
    report = check_json(capsys, dataset_path("wbcatt"))
    assert report["format"] == "attributes"
    # 1600 rows have their image staged (200/40/80 per class); the other 8698 of 10,298 rows are skipped.
    assert report["images"] == 1600 and len(report["skipped"]) == 10_298 - 1600
    assert report["splits"] == {"train": 1000, "val": 200, "test": 400}
    assert report["annotations"] == dict.fromkeys(
        ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"), 320
    )
    assert len(report["attributes"]) == 11
    assert all(sum(counts.values()) == 1600 for counts in report["attributes"].values())


def test_check_bccd_wbc_crops(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("bccd_wbc_crops"))
    assert report["images"] == 351
    assert report["annotations"] == {
        "neutrophil": 207,
        "eosinophil": 88,
        "lymphocyte": 33,
        "monocyte": 20,
        "basophil": 3,
    }


def test_check_chula_rbc12(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("chula_rbc12"))
    assert report["format"] == "points" and report["images"] == 208
    expected = {
        "normal rbc": 2304, "macrocyte": 230, "microcyte": 154, "spherocyte": 1204, "target cell": 985,
        "stomatocyte": 606, "ovalocyte": 758, "teardrop cell": 93, "burr cell": 206, "schistocyte": 300,
        "hypochromic rbc": 323, "elliptocyte": 375,
    }  # fmt: skip
    assert report["annotations"] == expected
    # The 79 "uncategorised" points are left out on purpose, each named: 7617 points in all.
    uncategorised = [f for f in report["fixed"] if "uncategorised" in f["what"]]
    assert len(uncategorised) == 79
    assert sum(report["annotations"].values()) + len(uncategorised) == 7617


def test_check_fiocruz_malaria_thick(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("fiocruz_malaria_thick"))
    assert report["images"] == 70
    assert report["annotations"] == {"p. falciparum": 436, "p. vivax": 142}
    assert report["splits"] == {"train": 30, "val": 20, "test": 20}


def test_check_erythrocytesidb1(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("erythrocytesidb1"))
    assert report["images"] == 626 and report["masks"] == 626
    assert report["annotations"] == {"circular rbc": 202, "elongated rbc": 211, "other rbc shape": 213}
    # Every image is one classification and one segmentation sample: 500 train / 126 test images.
    assert report["splits"] == {"train": 1000, "test": 252}
    moved = {Path(f["path"]).stem for f in report["fixed"] if "split" in f["what"]}
    assert moved == {"e0047", "o0048"}


def test_check_sickle_uganda(capsys: pytest.CaptureFixture[str]) -> None:
    report = check_json(capsys, dataset_path("sickle_uganda"))
    # 30 positive and 30 negative fields; the 'Unlabelled' copy of positive 155 carries drawn boxes too.
    assert report["annotations"]["sickle-negative field"] == 30
    assert report["annotations"]["sickle-positive field"] + len(report["skipped"]) == 30
    assert [Path(item["path"]).name for item in report["skipped"]] == ["155.jpg"]


def test_check_text_output_and_subprocess(capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_path("bccd_wbc_crops")
    code, out, _ = run_cli(capsys, "data", "check", str(path))
    assert code == 0
    assert "images    351" in out and "neutrophil  207" in out and "skipped   0" in out
    done = subprocess.run(
        [sys.executable, "-m", "unihema", "data", "check", str(path), "--json"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dataset"] == "bccd_wbc_crops" and report["images"] == 351
    assert {"dataset", "format", "images", "annotations", "masks", "skipped", "fixed"} <= set(report)


# --- a deliberately broken copy ---------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def test_check_names_every_problem_of_a_broken_copy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bccd, txl, seg = dataset_path("bccd"), dataset_path("txl_pbc"), dataset_path("segmentation_wbc")

    # BCCD: 5 images, one truncated, one XML corrupt.
    ids = ["00000", "00001", "00002", "00003", "00004"]
    for i in ids:
        _copy(
            bccd / f"BCCD/Annotations/BloodImage_{i}.xml",
            tmp_path / f"bccd/BCCD/Annotations/BloodImage_{i}.xml",
        )
        _copy(
            bccd / f"BCCD/JPEGImages/BloodImage_{i}.jpg",
            tmp_path / f"bccd/BCCD/JPEGImages/BloodImage_{i}.jpg",
        )
    truncated = tmp_path / "bccd/BCCD/JPEGImages/BloodImage_00001.jpg"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    (tmp_path / "bccd/BCCD/Annotations/BloodImage_00002.xml").write_text(
        "<annotation><object><name>RBC</name>"
    )
    report = check_json(capsys, tmp_path / "bccd")
    assert report["images"] == 3
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"BCCD/JPEGImages/BloodImage_00001.jpg", "BCCD/Annotations/BloodImage_00002.xml"}
    assert "truncated" in reasons["BCCD/JPEGImages/BloodImage_00001.jpg"]
    assert "XML" in reasons["BCCD/Annotations/BloodImage_00002.xml"]

    # TXL-PBC: 3 training images, one label line lies wholly outside the image.
    stems = sorted(p.stem for p in (txl / "TXL_PBC/labels/train").glob("*.txt") if p.name != "classes.txt")[
        :3
    ]
    _copy(txl / "TXL_PBC/data.yaml", tmp_path / "txl_pbc/TXL_PBC/data.yaml")
    for stem in stems:
        _copy(txl / f"TXL_PBC/images/train/{stem}.jpg", tmp_path / f"txl_pbc/TXL_PBC/images/train/{stem}.jpg")
        _copy(txl / f"TXL_PBC/labels/train/{stem}.txt", tmp_path / f"txl_pbc/TXL_PBC/labels/train/{stem}.txt")
    bad_label = tmp_path / f"txl_pbc/TXL_PBC/labels/train/{stems[0]}.txt"
    original_boxes = len(bad_label.read_text().split("\n")) - 1
    with open(bad_label, "a") as handle:
        handle.write("1 1.5 1.5 0.2 0.2\n")
    report = check_json(capsys, tmp_path / "txl_pbc")
    assert report["images"] == 3 and report["skipped"] == []
    outside = [f for f in report["fixed"] if "outside the image" in f["what"]]
    assert [f["path"] for f in outside] == [f"TXL_PBC/labels/train/{stems[0]}.txt"]
    expected_boxes = sum(len((txl / f"TXL_PBC/labels/train/{s}.txt").read_text().split()) // 5 for s in stems)
    assert report["boxes"] == expected_boxes and original_boxes > 0

    # segmentation_WBC: 5 pairs, one mask deleted.
    for stem in ("001", "002", "003", "004", "005"):
        for ext in ("bmp", "png"):
            _copy(seg / f"Dataset 1/{stem}.{ext}", tmp_path / f"segmentation_wbc/Dataset 1/{stem}.{ext}")
    rows = (seg / "Class Labels of Dataset 1.csv").read_text().splitlines()[:6]  # header + ids 1..5
    (tmp_path / "segmentation_wbc/Class Labels of Dataset 1.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "segmentation_wbc/Dataset 1/003.png").unlink()
    report = check_json(capsys, tmp_path / "segmentation_wbc")
    assert report["masks"] == 4 and report["images"] == 4
    named = {item["path"] for item in report["skipped"]}
    assert "Dataset 1/003.bmp" in named
    assert all("003" in item["path"] or "id 3" in item["reason"] for item in report["skipped"])


def test_check_refuses_a_folder_that_is_not_a_dataset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    code, out, err = run_cli(capsys, "data", "check", str(tmp_path))
    assert code != 0 and out == ""
    assert err.startswith("unihema: error: ") and str(tmp_path) in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "data", "check", str(tmp_path / "missing"))
    assert code != 0 and "not a directory" in err


def test_synthetic_command_writes_a_corpus_the_coco_reader_reads_back(tmp_path):
    from unihema.cli import main
    from unihema.data.formats import detect_format, get_reader

    out = tmp_path / "synthetic"
    assert (
        main(
            ["data", "synthetic", "--out", str(out), "--n-images", "6", "--image-size", "128", "--seed", "3"]
        )
        == 0
    )
    assert len(list(out.rglob("*.png"))) >= 6
    fmt = detect_format(out)
    result = get_reader(fmt).read(out)
    boxed = [s for s in result.samples if len(s.boxes)]
    assert fmt == "coco" and len({s.sample_id for s in boxed}) == 6 and not result.skipped
