"""Replacing a whole output folder (a head folder, a model folder) without losing anything:
the new one is filled in a staging folder (safe_files), the old one is replaced only when it
holds nothing but files headstart writes there (its FolderLayout) and no link, and the swap
is two renames, so no half-written folder ever sits under the final name."""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError, OutputLockedError, SettingError, UnsafeOutputError
from .safe_files import (
    OLD_PREFIX,
    TEMP_PREFIX,
    OutputFolder,
    as_disk_error,
    kind_of,
    refusal,
    temporary_name,
)

log = logging.getLogger("headstart")


@dataclass(frozen=True)
class FolderLayout:
    """What headstart writes in a folder it replaces as a whole (a head, a model): `marker`
    names it, `files` are the relative paths it may hold (fnmatch patterns: `*` spans
    folders)."""

    marker: str
    files: tuple[str, ...]

    def owns(self, relative: str) -> bool:
        return any(fnmatch.fnmatchcase(relative, pattern) for pattern in self.files)


def check_replaceable(parent: OutputFolder, name: str, layout: FolderLayout) -> None:
    """Whether the folder `name` in `parent` may be replaced by a new one: it must be
    missing, empty, or a folder headstart wrote (holding `layout.marker`) that holds nothing
    but files of `layout` (anything else would be lost with it), and no link or special
    file anywhere inside."""
    path = parent / name
    info = parent.entry(name)
    if info is None:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeOutputError(f"-o {path}: exists and is not a folder; choose another")
    with parent.subfolder(name, create=False) as folder:
        names = folder.names()
        if names and layout.marker not in names:
            raise UnsafeOutputError(
                f"-o {path}: exists and is not a folder headstart wrote (no {layout.marker}); "
                "choose a new folder"
            )
        foreign = [file for file in _files_inside(folder) if not layout.owns(file)]
        if foreign:
            raise UnsafeOutputError(
                f"-o {path}: holds {', '.join(foreign[:3])}, which headstart did not write "
                "there and would remove with the old folder; move it out or choose another "
                "folder"
            )


def refuse_links_inside(folder: OutputFolder) -> None:
    """Refuse (naming it) any symbolic link or special file anywhere inside `folder`."""
    for _ in _files_inside(folder):
        pass


def _files_inside(folder: OutputFolder, prefix: str = "") -> Iterator[str]:
    """The relative paths of the regular files under `folder`; a link or special file
    anywhere is refused, naming it, and so is a folder whose entries cannot be removed."""
    if not os.access(folder.path, os.W_OK | os.X_OK):
        raise OutputError(
            f"{folder.path} is read-only, so what it holds could not be replaced; make it "
            "writable or choose another output folder"
        )
    for name in folder.names():
        info = folder.entry(name)
        if info is None:
            continue
        if stat.S_ISDIR(info.st_mode):
            with folder.subfolder(name, create=False) as inner:
                yield from _files_inside(inner, f"{prefix}{name}/")
        elif stat.S_ISREG(info.st_mode):
            yield prefix + name
        else:
            raise refusal(folder / name, kind_of(info))


def install_folder(
    parent: OutputFolder, staging: OutputFolder, name: str, layout: FolderLayout
) -> Path:
    """Rename the complete `staging` folder (in `parent`) to `name`, replacing the folder
    there, which is checked again first (see check_replaceable): the old folder is renamed
    aside, the new one renamed in, then the old one removed, so at no moment is there a
    half-written folder under `name`."""
    check_replaceable(parent, name, layout)
    staging.publish()
    aside = OLD_PREFIX + temporary_name(name)[len(TEMP_PREFIX) :]
    try:
        os.rename(name, aside, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
    except FileNotFoundError:
        aside = None  # nothing to replace
    except OSError as error:
        raise _swap_failed(parent / name, error) from None
    try:
        os.rename(staging.path.name, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
    except OSError as error:
        if aside:  # put the old folder back
            os.rename(aside, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
        raise _swap_failed(parent / name, error) from None
    staging.path = parent / name
    if aside:
        try:
            parent.remove_tree(aside)
        except OSError as error:  # the new folder is in place; the old one stays aside
            log.warning(
                "%s replaced, but its previous version could not be removed (%s); it is kept as %s",
                parent / name,
                error.strerror,
                parent / aside,
            )
    return parent / name


def _swap_failed(path: Path, error: OSError) -> OutputError:
    if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
        return OutputError(
            f"{path} was written by another run at the same moment; run again, or write to "
            "another folder"
        )
    return OutputError(f"cannot rename a folder to {path}: {error.strerror}")


@contextmanager
def staged_folder(parent: OutputFolder, name: str, layout: FolderLayout) -> Iterator[OutputFolder]:
    """A fresh staging folder to fill in the block; when the block ends it replaces the
    folder `name` (see install_folder), and if the block fails it is removed."""
    staging = parent.staging_folder(name)
    try:
        yield staging
        install_folder(parent, staging, name, layout)
    except BaseException as error:
        if staging.path.name != name:
            parent.remove_tree(staging.path.name)
        disk = as_disk_error(error, parent / name, keras=True)
        if disk is not None:
            raise disk from None
        raise
    finally:
        staging.close()


# The file that marks a folder as a headstart artifact, and what it is called
ARTIFACT_MARKERS = (("head.json", "head"), ("model.json", "model"), ("_headstart.json", "store"))


def check_outside_artifacts(out: Path, stores_too: bool = True) -> None:
    """An output may not go inside a head or model folder (nor, with `stores_too`, inside a
    feature store): it would sit among the artifact's own files, or be read as part of it."""
    for folder in out.parents:
        for marker, what in ARTIFACT_MARKERS:
            if (stores_too or what != "store") and os.path.lexists(folder / marker):
                kind = "feature store" if what == "store" else f"{what} folder"
                raise SettingError(
                    f"-o {out}: is inside the {kind} {folder}, whose files are headstart's; "
                    "write it elsewhere"
                )


LOCK_PREFIX = "_headstart-lock-"  # beside an output a run replaces as a whole (a head)


@contextmanager
def output_lock(parent: OutputFolder, name: str, busy: str) -> Iterator[None]:
    """Hold `_headstart-lock-NAME` in `parent` for this run: a second run writing `name`
    is refused with OutputLockedError `busy` (flock: the OS drops it if the run dies). The
    lock file is removed at the end; a run that took it while it was being removed sees it
    is no longer the file at that name and takes the new one."""
    lock_name = LOCK_PREFIX + name
    while True:
        handle = parent.open_lock(lock_name)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputLockedError(busy) from None
        current = parent.entry(lock_name)
        if current is not None and current.st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # removed by the previous holder meanwhile: take the new one
    try:
        yield
    finally:
        parent.remove_file(lock_name)
        handle.close()
