"""Scan stage: IMAGES_DIR -> the sorted list of image files with their labels, and an account
of every other entry.

Labels follow `keras.utils.image_dataset_from_directory`: the first-level subfolder's name
(images deeper down belong to that first-level class); images directly in IMAGES_DIR have
no label. Every entry ends in exactly one place:
- `images`: regular files with a suffix of a format Pillow reads (`IMAGE_SUFFIXES`, from
  Pillow's own registry), or without a suffix and with an image header;
- `rejected` (path and reason): files named like images that cannot be (FIFOs, devices,
  sockets, non-UTF-8 names, links not followed, folders that cannot be listed);
- `not_images`: every other file (other suffixes, suffix-less files that are not images);
- `own_outputs`: folders headstart wrote (stores, head and model folders, reports, its work
  folders) and prediction files, never embedded as a class nor predicted.
Hidden files and folders (names starting with '.') are skipped on purpose, and not counted.
"""

from __future__ import annotations

import inspect
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.ImageFile import StubImageFile

from .decode import CANNOT_READ, DecodeError, is_image_file
from .errors import InputError
from .safe_files import OWN_PREFIX, kind_of

# Pillow's formats that only identify a file and need a plug-in to decode it, and videos
_UNDECODABLE_FORMATS = {"MPEG"}


def _image_suffixes() -> tuple[str, ...]:
    """The suffixes of every format Pillow can open and decode here, lower-case."""
    Image.init()
    suffixes = set()
    for suffix, format_name in Image.registered_extensions().items():
        opener = Image.OPEN.get(format_name, (None,))[0]
        if format_name == "MPO":  # multi-picture JPEGs open through the JPEG plug-in
            opener = Image.OPEN.get("JPEG", (None,))[0]
        if opener is None or format_name in _UNDECODABLE_FORMATS:
            continue
        if inspect.isclass(opener) and issubclass(opener, StubImageFile):
            continue  # BUFR, GRIB, HDF5, WMF: no decoder without an extra handler
        suffixes.add(suffix.lower())
    return tuple(sorted(suffixes))


IMAGE_SUFFIXES = _image_suffixes()
RESUME_PREFIX = "_headstart-resume-"  # train-cnn's state of a killed run, next to MODEL_DIR
CANNOT_LIST = "cannot list folder"  # the reason's start for a folder there but unreadable


@dataclass(frozen=True)
class ImageFile:
    """One image found by the scan. `path` is POSIX and relative to the scanned folder.
    `size`, `mtime_ns`, `ctime_ns`: the file's (a link's target's) when it was scanned."""

    path: str
    label: str | None
    location: Path
    size: int = -1
    mtime_ns: int = -1
    ctime_ns: int = -1


@dataclass(frozen=True)
class RejectedFile:
    """A file that looks like an image but cannot even be named in the store."""

    path: str
    reason: str


@dataclass
class ScanResult:
    images: list[ImageFile]
    rejected: list[RejectedFile]
    not_images: list[str] = field(default_factory=list)  # relative paths
    own_outputs: list[str] = field(default_factory=list)  # relative paths, folders end in /


def scan_images(
    root: str | os.PathLike, follow_links: bool = False, exclude: Iterable[Path] = ()
) -> ScanResult:
    """List the images under `root`, sorted by relative path, and account for the rest.

    Symbolic links: a link to a file inside `root` is an image like any other; links to
    folders, and to files outside `root`, are followed only with `follow_links` (and then
    a folder reached twice, a link loop, is skipped). Each case not followed is recorded
    with its reason. The walk is iterative, so however deep the tree, it never recurses.
    Folders in `exclude` (this run's own output) are skipped as headstart's outputs.

    Raises InputError when `root` is missing, not a folder, or holds no image file at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    walk = _Walk(root, follow_links, {_identity(p) for p in exclude if p.is_dir()})
    walk.run()
    result = walk.result
    if not result.images and not result.rejected:
        raise InputError(f"no images found in {root} ({_no_images(result.not_images)})")
    result.images.sort(key=lambda image: image.path)
    result.rejected.sort(key=lambda item: item.path)
    result.not_images.sort()
    result.own_outputs.sort()
    return result


def _no_images(others: list[str]) -> str:
    if not others:
        return "no files"
    files = f"{len(others)} file{'s' if len(others) > 1 else ''}"
    return f"{files}, none an image Pillow reads, e.g. {min(others)}"


class _Walk:
    def __init__(self, root: Path, follow_links: bool, excluded: set[tuple[int, int]]):
        self.root, self.follow_links, self.excluded = root, follow_links, excluded
        self.real_root = os.path.realpath(root)
        self.result = ScanResult([], [])
        self.visited = {_identity(root)}

    def run(self) -> None:
        pending: list[tuple[Path, str]] = [(self.root, "")]  # folders to list, relative prefix
        while pending:
            folder, prefix = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError as error:
                if folder == self.root:
                    raise InputError(f"cannot read {self.root}: {error.strerror}") from None
                self._reject(prefix, f"{CANNOT_LIST}: {error.strerror}")
                continue
            for entry in entries:
                if not entry.name.startswith("."):  # hidden files and folders: skipped
                    pending += self._visit(entry, prefix + entry.name)

    def _visit(self, entry: os.DirEntry, relative: str) -> list[tuple[Path, str]]:
        """Account for one entry; returns the folder to list next, if it is one."""
        link = entry.is_symlink()
        if _is_folder(entry):
            if link and not self.follow_links:
                self._reject(relative + "/", _NOT_FOLLOWED_FOLDER)
                return []
            identity = _identity(Path(entry.path))
            if identity in self.excluded or _is_own_output(Path(entry.path)):
                self.result.own_outputs.append(_shown(relative + "/"))
                return []
            if identity in self.visited:
                self._reject(relative + "/", _LOOP)
                return []
            self.visited.add(identity)
            return [(Path(entry.path), relative + "/")]
        named_like_image = entry.name.lower().endswith(IMAGE_SUFFIXES)
        if link and not self.follow_links and not _inside(self.real_root, entry.path):
            if named_like_image:
                self._reject(relative, _NOT_FOLLOWED_FILE)
            else:
                self.result.not_images.append(_shown(relative))
            return []
        try:
            info = entry.stat()  # the link's target for a link
        except OSError as error:
            reason = "broken symbolic link" if link else f"{CANNOT_READ}: {error.strerror}"
            self._classify(entry, relative, named_like_image, reason)
            return []
        if not stat.S_ISREG(info.st_mode):
            reason = f"not a regular file (a {kind_of(info)}); skipped"
            self._classify(entry, relative, named_like_image, reason)
            return []
        if entry.name.startswith(OWN_PREFIX) or _is_prediction_file(entry):
            self.result.own_outputs.append(_shown(relative))
        elif named_like_image:
            self._add_image(entry, relative, info)
        elif Path(entry.name).suffix:
            self.result.not_images.append(_shown(relative))
        else:  # no suffix: the header says
            try:
                is_image = is_image_file(Path(entry.path))
            except DecodeError as error:  # cannot even be read: it may be an image
                self._reject(relative, str(error))
                return []
            if is_image:
                self._add_image(entry, relative, info)
            else:
                self.result.not_images.append(_shown(relative))
        return []

    def _classify(self, entry, relative: str, named_like_image: bool, reason: str) -> None:
        """A file that cannot be read: an error if it is named like an image."""
        if named_like_image:
            self._reject(relative, reason)
        else:
            self.result.not_images.append(_shown(relative))

    def _add_image(self, entry: os.DirEntry, relative: str, info: os.stat_result) -> None:
        if not _is_valid_utf8(relative):
            # Parquet strings are UTF-8: such a name could not be stored nor found again.
            self._reject(relative, "file name is not valid UTF-8; rename it")
            return
        parts = relative.split("/")
        label = parts[0] if len(parts) > 1 else None
        self.result.images.append(
            ImageFile(
                relative, label, Path(entry.path), info.st_size, info.st_mtime_ns, info.st_ctime_ns
            )
        )

    def _reject(self, relative: str, reason: str) -> None:
        self.result.rejected.append(RejectedFile(_shown(relative), reason))


_NOT_FOLLOWED_FOLDER = "symbolic link to a folder; not followed without --follow-links"
_NOT_FOLLOWED_FILE = (
    "symbolic link to a file outside IMAGES_DIR; not followed without --follow-links"
)
_LOOP = "folder already scanned (a symbolic link loop, or two links to one folder); skipped"

# The files that mark a folder as headstart's output (any one set, all of its names)
_OUTPUT_MARKS = (
    {"_headstart.json"},  # a feature store
    {"head.json", "model.onnx"},  # a head folder
    {"model.json", "model.onnx"},  # a train-cnn model folder
    {"model.json", "model.keras"},
    {"metrics.json", "confusion_matrix.png"},  # a report (predict's OUT_report/)
)


def _is_own_output(folder: Path) -> bool:
    if folder.name.startswith(OWN_PREFIX):
        return True  # a staging folder, a replaced one, or a killed train-cnn's state
    return any(all(os.path.lexists(folder / mark) for mark in marks) for marks in _OUTPUT_MARKS)


def _is_prediction_file(entry: os.DirEntry) -> bool:
    """A predictions file, or the errors list of a prediction run, written by predict."""
    suffix = Path(entry.name).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        return False
    try:
        if suffix == ".csv":
            with open(entry.path, "rb") as handle:
                header = handle.readline(4096)
            return header.startswith(b"path,") and (
                b",prediction,probability" in header or header.rstrip() == b"path,error"
            )
        import pyarrow.parquet as pq

        names = set(pq.read_schema(entry.path).names)
        return {"path", "prediction", "probability"} <= names
    except Exception:  # unreadable: not ours to recognise
        return False


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
