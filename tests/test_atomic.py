import pytest
from PIL import Image

from unihema.atomic import atomic_save_image, atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_land_whole_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert atomic_write_text(target, "hello") == target and target.read_text() == "hello"
    atomic_write_bytes(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    image_path = atomic_save_image(Image.new("RGB", (3, 2), (1, 2, 3)), tmp_path / "x.png")
    assert Image.open(image_path).size == (3, 2)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "sub", "x.png"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def broken(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]
