"""Scan stage: IMAGES_DIR -> the sorted list of image files with their labels.

Labels follow `keras.utils.image_dataset_from_directory`: the first-level subfolder's name
(images deeper down belong to that first-level class); images directly in IMAGES_DIR have
no label. Hidden files and folders (names starting with '.') are skipped, and so are files
whose suffix is not an image format Pillow reads as a still image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageFile:
    """One image found by the scan. `path` is POSIX and relative to the scanned folder."""

    path: str
    label: str | None
    location: Path


@dataclass(frozen=True)
class RejectedFile:
    """A file that looks like an image but cannot even be named in the store."""

    path: str
    reason: str


@dataclass
class ScanResult:
    images: list[ImageFile]
    rejected: list[RejectedFile]


def scan_images(root: str | os.PathLike) -> ScanResult:
    """List the images under `root`, sorted by relative path.

    Raises InputError when `root` is missing, not a folder, or holds no image file at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")

    images: list[ImageFile] = []
    rejected: list[RejectedFile] = []
    for folder, dirnames, filenames in os.walk(root, onerror=_on_walk_error(root, rejected)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            location = Path(folder, name)
            relative = location.relative_to(root).as_posix()
            if not _is_valid_utf8(relative):
                # Parquet strings are UTF-8: such a name could not be stored nor found again.
                shown = os.fsencode(relative).decode("utf-8", "backslashreplace")
                rejected.append(RejectedFile(shown, "file name is not valid UTF-8; rename it"))
                continue
            parts = relative.split("/")
            label = parts[0] if len(parts) > 1 else None
            images.append(ImageFile(relative, label, location))

    if not images and not rejected:
        raise InputError(
            f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files)"
        )
    images.sort(key=lambda image: image.path)
    rejected.sort(key=lambda item: item.path)
    return ScanResult(images, rejected)


def _is_valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes back as lone surrogates
        return False
    return True


def _on_walk_error(root: Path, rejected: list[RejectedFile]):
    """An unreadable IMAGES_DIR is fatal; an unreadable subfolder is recorded and skipped."""

    def on_error(error: OSError) -> None:
        folder = Path(error.filename)
        if folder == root:
            raise InputError(f"cannot read {root}: {error.strerror}")
        shown = os.fsencode(folder.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")
        rejected.append(RejectedFile(shown + "/", f"cannot list folder: {error.strerror}"))

    return on_error
