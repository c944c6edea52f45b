"""The one way headstart creates, replaces and removes files (stores, head and model folders,
predictions, reports, exports, caches).

An output folder is opened once, following the path the user gave on purpose (`-o current`
where `current` links to `v3/` writes into `v3/`). Every name inside is then reached
relative to that open folder, never through a symbolic link:

- a file is written to a temporary `_headstart-tmp-<random>-NAME`, created with
  O_CREAT|O_EXCL|O_NOFOLLOW in the same folder, and renamed over NAME when complete, so
  readers see the old file or the new one, never half of one;
- existing files of ours (locks, summaries) are opened with O_NOFOLLOW and must be regular
  files; a symbolic link, FIFO or device where a file or folder of ours should be is refused
  with UnsafeOutputError naming it;
- files written in place (locks) must have no other hard link;
- only what headstart can prove it made is removed: its own temporaries (a name no one else
  makes) whose writer is dead (a writer holds its temporary flock-ed until it is renamed),
  and names the caller knows it wrote.

Staging folders (a trained head before it replaces HEAD_DIR) are made fresh with a random
name and mode 0700, so nothing can have been planted in them; safe_folders replaces a whole
folder with one.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import OutputError, OutputLockedError, UnsafeOutputError

OWN_PREFIX = "_headstart"  # the start of every name headstart keeps for itself
TEMP_PREFIX = "_headstart-tmp-"  # a name only headstart makes; readers ignore `_` names
# A replaced folder, between two renames: a run killed right then leaves the previous
# folder under this name, never cleaned up automatically (it is the user's last version).
OLD_PREFIX = "_headstart-old-"
_TEMP_NAME = re.compile(r"_headstart-tmp-[0-9a-f]{12}-(.+)", re.DOTALL)
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_LINK_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never stalls
SETTLE_S = 10  # a temporary younger than this may be a live one not locked yet
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES)
# Of those, the ones that can stop a write half-way (the others refuse the open itself)
_CUT_SHORT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def _folder_mode() -> int:
    """The mode a plain mkdir gives (0777 less the umask), read once, at import."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


FOLDER_MODE = _folder_mode()


def as_disk_error(error: BaseException, where: Path, keras: bool = False) -> OutputError | None:
    """`error` as an OutputError when it says the disk is full, read-only or failing (an
    OSError with that errno, or a library's error quoting it, as h5py's do), else None.
    `keras`: Keras was writing (HDF5 checkpoints), see OutputError.hdf5_cut_short."""
    if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
        code = error.errno  # h5py's strerror is a paragraph: the errno's short text is shown
    else:
        text = str(error)
        codes = [code for code in _DISK_ERRORS if os.strerror(code) in text]
        if not codes:
            return None
        code = codes[0]
    disk = OutputError(f"cannot write in {where}: {os.strerror(code)}")
    disk.hdf5_cut_short = keras and code in _CUT_SHORT_ERRORS and "h5py" in sys.modules
    return disk


def temporary_name(final: str) -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final}"


def final_name_of(name: str) -> str | None:
    """NAME for a temporary `_headstart-tmp-<random>-NAME`, else None."""
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


def kind_of(info: os.stat_result) -> str:
    """What a directory entry is, in words, for messages."""
    mode = info.st_mode
    for test, word in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return word
    return "special file"


def refusal(path: Path, what: str) -> UnsafeOutputError:
    remove = "it (a link only, not its target)" if what == "symbolic link" else f"that {what}"
    return UnsafeOutputError(
        f"{path} is a {what} where headstart keeps a file or folder of its own; headstart "
        "never goes through links or into special files inside its output folders: remove "
        f"{remove} or choose another output folder"
    )


def user_path(path: str | os.PathLike) -> Path:
    """The path the user gave, with links followed on purpose (documented): the file or
    folder headstart writes is the one the link points to."""
    resolved = Path(os.path.realpath(os.path.expanduser(path)))
    if not resolved.name:
        raise OutputError(f"-o {path}: give a file or folder to write, not {resolved}")
    if resolved.name.startswith(OWN_PREFIX):
        raise OutputError(
            f"-o {path}: names starting with {OWN_PREFIX} are headstart's own (temporaries, "
            "locks, summaries), which it may remove; choose another name"
        )
    return resolved


def _make_folders(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it made, outermost first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    made = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # made by another process meanwhile: not ours
        made.append(folder)
    return made


class OutputFolder:
    """An open folder that headstart writes into; see the module's docstring."""

    def __init__(self, path: str | os.PathLike, create: bool = True, _fd: int | None = None):
        self.path = Path(path)
        self.made: list[Path] = []  # the folders this made, outermost first
        if _fd is None:
            try:
                if create:
                    self.made = _make_folders(self.path)
                _fd = os.open(self.path, _FOLDER_FLAGS)
            except FileExistsError:
                raise OutputError(f"{self.path} exists and is not a folder") from None
            except NotADirectoryError:
                raise OutputError(f"{self.path} is not a folder") from None
            except OSError as error:
                raise OutputError(f"cannot use {self.path}: {error.strerror or error}") from None
        self.fd = _fd

    # --- the folder itself ---------------------------------------------------------------

    def close(self, failed: bool = False) -> None:
        """Close the folder; after a failure, the folders this made and left empty go."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if failed:
            for made in reversed(self.made):
                try:
                    os.rmdir(made)
                except FileNotFoundError:
                    continue  # removed already
                except OSError:
                    break  # not empty: it and its parents stay
            self.made = []

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=error is not None)

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def entry(self, name: str) -> os.stat_result | None:
        """The entry `name` itself (a link is not followed), None if there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def check_file_name(self, name: str) -> bool:
        """Whether `name` exists; refused if it is anything but a regular file."""
        info = self.entry(name)
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise refusal(self / name, kind_of(info))
        return info is not None

    def subfolder(self, name: str, create: bool = True) -> OutputFolder:
        """The folder `name` inside this one (made if missing); a link there is refused."""
        if create:
            try:
                os.mkdir(name, dir_fd=self.fd)
            except FileExistsError:
                pass
            except OSError as error:
                raise OutputError(f"cannot make {self / name}: {error.strerror}") from None
        try:
            fd = os.open(name, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as error:
            info = self.entry(name)
            if info is not None and not stat.S_ISDIR(info.st_mode):
                raise refusal(self / name, kind_of(info)) from None
            raise OutputError(f"cannot open {self / name}: {error.strerror}") from None
        return OutputFolder(self / name, _fd=fd)

    def staging_folder(self, name: str) -> OutputFolder:
        """A new, empty, private (0700) folder `_headstart-tmp-<random>-NAME` here, locked
        (flock) while it is open, so a later run can tell a dead run's leftover from a live
        one's; `publish` gives it a plain folder's mode before it is renamed into place."""
        temporary = temporary_name(name)
        try:
            os.mkdir(temporary, 0o700, dir_fd=self.fd)
        except OSError as error:
            raise OutputError(f"cannot make a folder in {self.path}: {error.strerror}") from None
        staging = self.subfolder(temporary, create=False)
        fcntl.flock(staging.fd, fcntl.LOCK_EX)
        return staging

    def lock(self, busy: str) -> None:
        """Hold an exclusive lock on this folder while it is open (flock: the OS drops it
        when the process dies); another holder makes it an OutputLockedError `busy`."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(busy) from None

    def publish(self) -> None:
        """Give this folder the mode a plain mkdir would (it was made private)."""
        os.chmod(self.fd, FOLDER_MODE)

    # --- writing -------------------------------------------------------------------------

    def pending(self, name: str, mode: str = "wb") -> PendingFile:
        """A new file that becomes `name` on `commit()`; see PendingFile."""
        return PendingFile(self, name, mode)

    @contextmanager
    def writing(self, name: str, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
        """Write `name` atomically: the handle writes a temporary, renamed over `name` when
        the block ends without error (removed otherwise). `durable`: fsync before renaming."""
        pending = self.pending(name, mode)
        try:
            yield pending.handle
        except BaseException as error:
            pending.discard()
            if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
                raise OutputError(f"cannot write {self / name}: {error.strerror}") from None
            raise
        pending.commit(durable)

    def write_bytes(self, name: str, data: bytes, durable: bool = False) -> Path:
        with self.writing(name, "wb", durable) as handle:
            handle.write(data)
        return self / name

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def create_file(self, name: str) -> IO:
        """A new file `name`, written in place (not atomic): for caches a run rebuilds.
        Fails if `name` exists (remove it first), so nothing is ever written through a link."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o666, dir_fd=self.fd)
        except OSError as error:
            raise OutputError(f"cannot create {self / name}: {error.strerror}") from None
        return open(fd, "r+b")

    def open_existing(self, name: str, mode: str = "rb") -> IO:
        """Open a file of ours that exists: no link followed, a regular file only."""
        flags = os.O_RDWR if "+" in mode else os.O_RDONLY
        return self._open_regular(name, flags, mode)

    def open_lock(self, name: str) -> IO[bytes]:
        """The lock file `name`, created if missing, open for reading and writing, unbuffered
        (a failed write fails there, not again when the file is closed)."""
        return self._open_regular(name, os.O_RDWR | os.O_CREAT, "r+b")

    def _open_regular(self, name: str, flags: int, mode: str) -> IO:
        try:
            fd = os.open(name, flags | _NO_LINK_FLAGS, 0o666, dir_fd=self.fd)
        except OSError as error:
            info = self.entry(name)
            if error.errno == errno.ELOOP or (info and not stat.S_ISREG(info.st_mode)):
                raise refusal(self / name, kind_of(info) if info else "link") from None
            folder_refuses = error.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
            if folder_refuses or (info is None and flags & os.O_CREAT):  # say the folder,
                # not the name of a lock file the user never heard of
                raise OutputError(f"cannot write in {self.path}: {error.strerror}") from None
            raise OutputError(f"cannot open {self / name}: {error.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise refusal(self / name, kind_of(info))
        if flags & os.O_RDWR and info.st_nlink > 1:  # written in place: another name's too
            os.close(fd)
            raise refusal(self / name, "file with other hard links")
        os.set_blocking(fd, True)
        if mode == "r+b":
            return open(fd, mode, buffering=0)
        return open(fd, mode, encoding=None if "b" in mode else "utf-8")

    # --- renaming and removing -----------------------------------------------------------

    def rename(self, old: str, new: str, into: OutputFolder | None = None) -> None:
        """Rename `old` to `new` (in folder `into`, default this one); `new` is replaced
        only when it is a regular file (a link or special file there is refused)."""
        target = into or self
        if not self._is_folder(old):
            target.check_file_name(new)
        os.replace(old, new, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def _is_folder(self, name: str) -> bool:
        info = self.entry(name)
        return info is not None and stat.S_ISDIR(info.st_mode)

    def remove_file(self, name: str) -> bool:
        """Remove the file (or link: never its target) `name`; False if it was missing.
        A folder there is left alone and refused."""
        info = self.entry(name)
        if info is None:
            return False
        if stat.S_ISDIR(info.st_mode):
            raise UnsafeOutputError(f"{self / name} is a folder, not a file of headstart's")
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def remove_tree(self, name: str) -> None:
        """Remove the folder `name`, which the caller made (a staging folder), with all it
        holds; links inside are removed, never followed."""
        try:
            shutil.rmtree(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def leftover_temporaries(
        self, belongs: Callable[[str], bool], folders: bool = False
    ) -> list[str]:
        """Temporaries of ours whose final name satisfies `belongs` and whose writer is gone:
        files (and staging folders, with `folders`) named `_headstart-tmp-<random>-NAME`
        that no live process holds locked (a writer holds its temporary locked until it is
        renamed into place)."""
        found = []
        for name in self.names():
            final = final_name_of(name)
            if final is not None and belongs(final) and self._abandoned(name, folders):
                found.append(name)
        return found

    def _abandoned(self, name: str, folders: bool) -> bool:
        try:
            fd = os.open(name, os.O_RDONLY | _NO_LINK_FLAGS, dir_fd=self.fd)
        except OSError:
            return False  # a link (O_NOFOLLOW), or gone
        try:
            info = os.fstat(fd)
            if not (stat.S_ISREG(info.st_mode) or (folders and stat.S_ISDIR(info.st_mode))):
                return False
            if time.time() - info.st_mtime < SETTLE_S:
                return False  # maybe between its creation and its writer's flock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False  # held: a live writer's
        finally:
            os.close(fd)

    def remove_leftovers(self, final: str) -> None:
        """Remove what killed runs writing `final` here left behind (see
        leftover_temporaries): never a live run's temporary, never anything else."""
        for name in self.leftover_temporaries(final.__eq__, folders=True):
            info = self.entry(name)
            if info is not None and stat.S_ISDIR(info.st_mode):
                self.remove_tree(name)
            elif info is not None:
                self.remove_file(name)


class PendingFile:
    """A file being written under a temporary name in `folder`: `handle` writes it,
    `commit()` renames it to its final name, `discard()` removes it."""

    def __init__(self, folder: OutputFolder, name: str, mode: str = "wb"):
        self.folder, self.name = folder, name
        folder.check_file_name(name)  # fail before the work, not at the rename
        self.temporary = temporary_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.temporary, flags, 0o666, dir_fd=folder.fd)
        except OSError as error:
            raise OutputError(f"cannot write in {folder.path}: {error.strerror}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until renamed: a later run sees it is live
        raw = open(fd, "wb")
        if "b" in mode:
            self.handle: IO = raw
        else:
            self.handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def commit(self, durable: bool = False) -> Path:
        try:
            self.handle.flush()
            if durable:
                os.fsync(self.handle.fileno())
            self.handle.close()
            self.folder.check_file_name(self.name)
            os.replace(
                self.temporary, self.name, src_dir_fd=self.folder.fd, dst_dir_fd=self.folder.fd
            )
        except OSError as error:
            self.discard()
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.temporary, dir_fd=self.folder.fd)
        except OSError:
            pass


def read_own_file(path: str | os.PathLike) -> bytes:
    """The bytes of a file of ours (a summary, an errors list) that readers open: the last
    component is not followed if it is a link, and it must be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_LINK_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise refusal(Path(path), "symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refusal(Path(path), kind_of(info))
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)
