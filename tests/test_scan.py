"""Scan stage: labels as image_dataset_from_directory infers them, sorting, skipped names."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from headstart.extractor.errors import InputError
from headstart.extractor.scan import scan_images


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_labels_sorting_and_skipped_names(tmp_path):
    for relative in [
        "cats/b.jpg",
        "cats/a.PNG",
        "cats/deep/c.jpeg",
        "dogs/d.webp",
        "root.bmp",
        ".hidden/e.jpg",
        "cats/.f.jpg",
    ]:
        _touch_image(tmp_path / relative)
    (tmp_path / "notes.txt").write_text("not an image suffix")
    (tmp_path / "empty_class").mkdir()

    result = scan_images(tmp_path)

    assert [(i.path, i.label) for i in result.images] == [
        ("cats/a.PNG", "cats"),
        ("cats/b.jpg", "cats"),
        ("cats/deep/c.jpeg", "cats"),
        ("dogs/d.webp", "dogs"),
        ("root.bmp", None),
    ]
    assert result.rejected == []


def test_non_utf8_name_is_rejected_with_a_reason(tmp_path):
    _touch_image(tmp_path / "ok.jpg")
    _touch_image(tmp_path / os.fsdecode(b"caf\xe9.jpg"))
    result = scan_images(tmp_path)
    assert [i.path for i in result.images] == ["ok.jpg"]
    assert [(r.path, r.reason) for r in result.rejected] == [
        ("caf\\xe9.jpg", "file name is not valid UTF-8; rename it")
    ]


def test_missing_folder_and_folder_without_images(tmp_path):
    with pytest.raises(InputError, match="does not exist$"):
        scan_images(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match=r"^no images found in .*empty \(1 file, none an image"):
        scan_images(tmp_path / "empty")
    _touch_image(tmp_path / "file.jpg")
    with pytest.raises(InputError, match="is not a folder$"):
        scan_images(tmp_path / "file.jpg")
