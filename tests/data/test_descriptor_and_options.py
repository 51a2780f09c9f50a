"""Reader options from a ``unihema.yaml`` descriptor beside the data and from ``--option key=value``.

The fixtures (built in ``tmp_path``) come from :mod:`native_layouts`; ``unihema data check`` runs
in-process through :func:`unihema.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from support.native_layouts import COLOUR_MAP, SMEAR_FOLDER, colour_mask_fixture, disc_areas, voc_fixture
from unihema.cli import main
from unihema.data.formats import (
    DescriptorError,
    load_descriptor,
    parse_option_pairs,
    plan_read,
    read_dataset,
)

pytestmark = pytest.mark.filterwarnings("ignore::unihema.data.formats._common.ReaderWarning")


def write_descriptor(root: Path, content: object) -> Path:
    path = root / "unihema.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
    return path


def run_check(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["data", "check", str(root), *extra])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- --option


def test_parse_option_pairs_reads_yaml_values() -> None:
    options = parse_option_pairs(
        [
            "mapping=cell",
            "crop_size=48",
            "classification=true",
            "images_root=../other images",
            "foreground=[nucleus]",
            "colour_map={nucleus: [0, 255, 255], background: '#ffffff'}",
            'class_map={"Alien": "wbc"}',
            "fold=null",
        ]
    )
    assert options == {
        "mapping": "cell",
        "crop_size": 48,
        "classification": True,
        "images_root": "../other images",
        "foreground": ["nucleus"],
        "colour_map": {"nucleus": [0, 255, 255], "background": "#ffffff"},
        "class_map": {"Alien": "wbc"},
        "fold": None,
    }
    assert parse_option_pairs([]) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("mapping", r"--option 'mapping': expected key=value"),
        ("=cell", r"--option '=cell': '' is not an option name"),
        ("colour map=x", r"--option 'colour map=x': 'colour map' is not an option name"),
        ("mapping=", r"--option 'mapping=': no value after '=' \(write mapping=null for none\)"),
        (
            "colour_map={nucleus: [0, 255",
            r"--option 'colour_map=\{nucleus: \[0, 255': the value is not valid YAML",
        ),
    ],
)
def test_parse_option_pairs_names_the_bad_pair(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_option_pairs([pair])


def test_parse_option_pairs_refuses_a_key_given_twice() -> None:
    with pytest.raises(ValueError, match=r"--option 'mapping=cell': option 'mapping' is given twice"):
        parse_option_pairs(["mapping=nucleus", "mapping=cell"])


def test_check_with_options_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    colour_map = json.dumps(COLOUR_MAP)
    code, out, err = run_check(capsys, root, "--json", "--option", f"colour_map={colour_map}")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "masks" and report["format_source"] == "detected"
    assert report["format_rule"] == f"3 masks in 'gt/' paired by stem with images in '{SMEAR_FOLDER}/'"
    assert report["options"] == {"colour_map": COLOUR_MAP} and report["descriptor"] is None
    assert report["masks"] == 3 and report["images"] == 3
    assert [f["path"] for f in report["fixed"]] == ["gt/003.tif"]
    assert "(255, 0, 0) 12 px" in report["fixed"][0]["what"]
    assert [s["path"] for s in report["skipped"]] == [f"{SMEAR_FOLDER}/004.jpg"]

    code, out, err = run_check(
        capsys, root, "--json", "--option", f"colour_map={colour_map}", "--option", "unknown_colours=skip"
    )
    assert code == 0 and json.loads(out)["masks"] == 2

    code, out, err = run_check(capsys, root, "--option", "colour_mapp=1")
    assert code == 2 and out == ""
    assert err.strip() == (
        "unihema: error: option 'colour_mapp': the masks reader has no such option; its options: "
        "classification, colour_map, disease, foreground, images_root, mapping, unknown_colours, "
        "use_split_lists, verify_images"
    )
    code, _, err = run_check(capsys, root, "--option", "colour_map={nucleus: [0, 255]}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("unihema: error: option 'colour_map': colour_map: 'nucleus' is [0, 255]")
    code, _, err = run_check(capsys, root, "--option", "colour_map")
    assert code == 2 and "--option 'colour_map': expected key=value" in err


def test_check_text_output_shows_the_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = voc_fixture(tmp_path / "native voc")
    code, out, err = run_check(capsys, root)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2] == "format    voc (detected), options none"
    assert lines[3] == (
        "rule      5 XML files with <annotation> roots in 'XML Files/' paired by stem with 5 images in 'Images/'"
    )
    assert "  XML Files/smear_03.xml: object 1: class 'Alien' is not in the detection vocabulary" in lines
    assert (
        "  Images/smear_04.jpg: byte-identical to Images/smear_01.jpg with the same boxes; loaded once"
        in lines
    )
    assert "  XML Files/smear_02.xml: <filename> says IMG_9999.jpg, used smear_02.jpg (same stem)" in lines


def test_check_of_an_unknown_layout_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "notes.txt").write_text("x")
    code, out, err = run_check(capsys, tmp_path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no known dataset format recognised; looked in" in err and "'scans/'" in err
    assert "expected one of voc: XML files with an <annotation> root" in err
    code, _, err = run_check(capsys, tmp_path, "--format", "voc")
    assert code == 2 and "expected a Pascal VOC folder" in err and "'scans/'" in err


# ---------------------------------------------------------------------------------------------- descriptor


def test_descriptor_reads_a_colour_mask_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    path = write_descriptor(root, {"format": "masks", "options": {"colour_map": COLOUR_MAP}})
    descriptor = load_descriptor(root)
    assert descriptor is not None and descriptor.path == path and descriptor.format == "masks"
    result = read_dataset(root)
    cell, nucleus = disc_areas()
    assert [s.load_mask().sum() for s in result.samples] == [cell, cell, cell]

    code, out, err = run_check(capsys, root, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format_source"] == "descriptor" and report["descriptor"] == str(path)
    assert report["options"] == {"colour_map": COLOUR_MAP}
    code, out, _ = run_check(capsys, root)
    assert f"format    masks (descriptor {path}), options" in out

    # Options given on the command line (or in Python) override the descriptor's.
    plan = plan_read(root, options={"foreground": ["nucleus"]})
    assert plan.format_source == "descriptor" and plan.options["foreground"] == ["nucleus"]
    assert plan.sources == {"colour_map": "descriptor", "foreground": "given"}
    assert read_dataset(root, options={"foreground": ["nucleus"]}).samples[0].load_mask().sum() == nucleus
    code, out, _ = run_check(capsys, root, "--json", "--option", "foreground=[nucleus]")
    assert json.loads(out)["options"] == {"colour_map": COLOUR_MAP, "foreground": ["nucleus"]}


def test_descriptor_without_format_keeps_detection(tmp_path: Path) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    write_descriptor(root, {"options": {"colour_map": COLOUR_MAP}})
    plan = plan_read(root)
    assert plan.format == "masks" and plan.format_source == "detected" and plan.descriptor is not None
    # Options of a descriptor that names another format are not applied to the format given.
    write_descriptor(root, {"format": "voc", "options": {"class_map": {"a": "wbc"}}})
    plan = plan_read(root, "masks")
    assert plan.options == {} and plan.descriptor is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("format: [masks\n", "not a readable YAML file"),
        ("- masks\n", "expected a mapping with the fields format, options, got list"),
        ("formt: masks\n", "unknown field 'formt'; a descriptor has the fields format, options"),
        (
            "format: mask\n",
            "field 'format': 'mask' is not a reader; known formats: attributes, coco, folders",
        ),
        (
            "format: masks\noptions: [1, 2]\n",
            "field 'options': expected a mapping of option names to values, got list",
        ),
        (
            "format: masks\noptions: {colour_mapp: 1}\n",
            "field 'options.colour_mapp': the masks reader has no such option",
        ),
        ("options: {7: 1}\n", "field 'options': 7 is not an option name"),
    ],
)
def test_invalid_descriptors_name_the_file_and_the_field(tmp_path: Path, content: str, message: str) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    path = write_descriptor(root, content)
    with pytest.raises(DescriptorError) as err:
        load_descriptor(root)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    with pytest.raises(ValueError, match="unihema.yaml"):
        read_dataset(root)


def test_descriptor_option_values_are_checked_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    path = write_descriptor(root, {"format": "masks", "options": {"colour_map": {"nucleus": [0, 255]}}})
    with pytest.raises(ValueError) as err:
        read_dataset(root)
    assert str(err.value).startswith(f"{path}: field 'options.colour_map': colour_map: 'nucleus' is [0, 255]")
    write_descriptor(root, {"options": {"colour_mapp": COLOUR_MAP}})  # checked once the format is detected
    code, _, err = run_check(capsys, root)
    assert code == 2 and f"{path}: field 'options.colour_mapp': the masks reader has no such option" in err
    # An empty descriptor is allowed: it changes nothing.
    write_descriptor(root, "")
    assert load_descriptor(root) is not None and plan_read(root).format == "masks"
