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


def scan_images(root: str | os.PathLike, follow_links: bool = False) -> ScanResult:
    """List the images under `root`, sorted by relative path.

    Symbolic links: a link to a file inside `root` is an image like any other; links to
    folders, and to files outside `root`, are followed only with `follow_links` (and then
    a folder reached twice, a link loop, is skipped). Each case not followed is recorded
    with its reason. The walk is iterative, so however deep the tree, it never recurses.

    Raises InputError when `root` is missing, not a folder, or holds no image file at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")

    real_root = os.path.realpath(root)
    images: list[ImageFile] = []
    rejected: list[RejectedFile] = []
    visited = {_identity(root)}
    pending: list[tuple[Path, str]] = [(root, "")]  # folders still to list, relative prefix
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            if folder == root:
                raise InputError(f"cannot read {root}: {error.strerror}") from None
            rejected.append(RejectedFile(_shown(prefix), f"cannot list folder: {error.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders
            relative = prefix + entry.name
            link = entry.is_symlink()
            if _is_folder(entry):
                if link and not follow_links:
                    rejected.append(RejectedFile(_shown(relative + "/"), _NOT_FOLLOWED_FOLDER))
                    continue
                identity = _identity(Path(entry.path))
                if identity in visited:
                    rejected.append(RejectedFile(_shown(relative + "/"), _LOOP))
                    continue
                visited.add(identity)
                pending.append((Path(entry.path), relative + "/"))
                continue
            if not entry.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if link and not follow_links and not _inside(real_root, entry.path):
                rejected.append(RejectedFile(_shown(relative), _NOT_FOLLOWED_FILE))
                continue
            if not _is_valid_utf8(relative):
                # Parquet strings are UTF-8: such a name could not be stored nor found again.
                rejected.append(
                    RejectedFile(_shown(relative), "file name is not valid UTF-8; rename it")
                )
                continue
            parts = relative.split("/")
            label = parts[0] if len(parts) > 1 else None
            images.append(ImageFile(relative, label, Path(entry.path)))

    if not images and not rejected:
        raise InputError(
            f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files)"
        )
    images.sort(key=lambda image: image.path)
    rejected.sort(key=lambda item: item.path)
    return ScanResult(images, rejected)


_NOT_FOLLOWED_FOLDER = "symbolic link to a folder; not followed without --follow-links"
_NOT_FOLLOWED_FILE = (
    "symbolic link to a file outside IMAGES_DIR; not followed without --follow-links"
)
_LOOP = "folder already scanned (a symbolic link loop, or two links to one folder); skipped"


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


def _inside(real_root: str, path: str) -> bool:
    target = os.path.realpath(path)
    return target == real_root or target.startswith(real_root + os.sep)


def _shown(relative: str) -> str:
    """A relative path as it can be printed and stored (undecodable bytes escaped)."""
    return os.fsencode(relative).decode("utf-8", "backslashreplace")


def _is_valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes back as lone surrogates
        return False
    return True
