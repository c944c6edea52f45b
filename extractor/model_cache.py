"""The cache of exported networks: one folder per network (model.onnx + manifest.json),
made once, atomically, and checked each time it is used.

A folder is trusted only whole: its manifest must read, and model.onnx must hash to the
manifest's `onnx_sha256`. Hashing a 90 MB model costs ~0.06 s, so the check is made once per
change of the file: `verified.json` records the size, mtime and inode that hashed right, and
a file that still has them is trusted. A damaged entry (truncated, changed, unreadable) is
never used: `cached_export` makes it again, `find_entry` passes it by.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HeadstartError, OutputError
from .json_input import parse_json
from .safe_files import TEMP_PREFIX, OutputFolder, as_disk_error, read_own_file

log = logging.getLogger("headstart")

MODEL_FILE, MANIFEST_FILE, VERIFIED_FILE = "model.onnx", "manifest.json", "verified.json"


@dataclass(frozen=True)
class CachedBackbone:
    onnx_path: Path
    manifest: dict[str, Any]  # backbone, weights, weights_sha256, onnx_sha256, dim, ...


class DamagedEntry(Exception):
    """A cache folder that cannot be trusted; the message says why."""


def sha256_of_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_entry(folder: Path) -> CachedBackbone | None:
    """The network cached in `folder`, checked (see the module's docstring); None when there
    is no entry. Raises DamagedEntry for one that cannot be trusted."""
    try:
        manifest = parse_json(read_own_file(folder / MANIFEST_FILE))
    except FileNotFoundError:
        if os.path.lexists(folder / MODEL_FILE):
            raise DamagedEntry(f"{folder} has {MODEL_FILE} but no {MANIFEST_FILE}") from None
        return None
    except (OSError, ValueError, HeadstartError) as error:
        raise DamagedEntry(f"{folder / MANIFEST_FILE} cannot be read ({error})") from None
    if not isinstance(manifest, dict) or "onnx_sha256" not in manifest:
        raise DamagedEntry(f"{folder / MANIFEST_FILE} is not a manifest headstart wrote")
    onnx_path = folder / MODEL_FILE
    try:
        signature = file_signature(onnx_path)
    except OSError as error:
        raise DamagedEntry(f"{onnx_path} cannot be read ({error.strerror})") from None
    if signature != _verified_signature(folder):
        if sha256_of_file(onnx_path) != manifest["onnx_sha256"]:
            raise DamagedEntry(
                f"{onnx_path} is not the file that was exported (its sha256 differs from "
                "the manifest's: truncated or changed)"
            )
        _record_verified(folder, signature)
    return CachedBackbone(onnx_path, manifest)


def file_signature(path: Path) -> list[int]:
    """Size, mtime and inode: what changes when a file is written or replaced."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _verified_signature(folder: Path) -> list[int] | None:
    try:
        return parse_json(read_own_file(folder / VERIFIED_FILE)).get("model.onnx")
    except (OSError, ValueError, AttributeError, HeadstartError):
        return None


def _record_verified(folder: Path, signature: list[int]) -> None:
    """Remember that the file with this signature hashed right (skipped quietly where the
    cache is read-only: it is then hashed on every use)."""
    try:
        with OutputFolder(folder, create=False) as entry:
            entry.write_text(VERIFIED_FILE, json.dumps({"model.onnx": signature}) + "\n")
    except OutputError:
        pass


def entries(models: Path) -> Iterator[Path]:
    """The cache's entry folders (exports still being written are not)."""
    if models.is_dir():
        for folder in sorted(models.iterdir()):
            if folder.is_dir() and not folder.name.startswith(TEMP_PREFIX):
                yield folder


def cached_export(
    folder: Path,
    export: Callable[[Path], dict[str, Any]],
    doing: str,
    can_export: Callable[[], None] = lambda: None,
) -> CachedBackbone:
    """The cache entry `folder`, made by `export(onnx_path)` -> manifest when missing or
    damaged (`doing` says what that is, in the log; `can_export()` raises first where it
    cannot be done here). Entries appear atomically: complete or not at all."""
    try:
        cached = read_entry(folder)
        if cached is not None:
            return cached
    except DamagedEntry as damage:
        log.warning("%s; exporting it again", damage)
    can_export()
    log.info("%s, once; it is cached in %s", doing, folder)
    with OutputFolder(folder.parent) as cache:
        cache.remove_leftovers(folder.name)  # a killed export's staging folder
        staging = cache.staging_folder(folder.name)  # fresh and private: written by path
        try:
            manifest = export(staging.path / MODEL_FILE)
            staging.write_text(MANIFEST_FILE, json.dumps(manifest, indent=2))
            signature = file_signature(staging.path / MODEL_FILE)
            staging.write_text(VERIFIED_FILE, json.dumps({"model.onnx": signature}) + "\n")
            staging.publish()
            _install(cache, staging, folder)
        except BaseException as error:
            disk = as_disk_error(error, folder.parent)
            if disk is not None:
                raise disk from None
            raise
        finally:
            staging.close()
            cache.remove_tree(staging.path.name)  # gone already, unless the rename failed
    return CachedBackbone(folder / MODEL_FILE, parse_json(read_own_file(folder / MANIFEST_FILE)))


def _install(cache: OutputFolder, staging: OutputFolder, folder: Path) -> None:
    """Rename the new entry into place, replacing a damaged one; a concurrent export that
    got there first wins (the two are the same network)."""
    try:
        damaged = read_entry(folder) is None and cache.entry(folder.name) is not None
    except DamagedEntry:
        damaged = True
    if damaged:
        cache.remove_tree(folder.name)  # an entry of ours that cannot be trusted
    try:
        os.rename(staging.path.name, folder.name, src_dir_fd=cache.fd, dst_dir_fd=cache.fd)
    except OSError:
        if read_entry(folder) is None:  # not a concurrent export that won the race
            raise
