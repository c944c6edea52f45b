"""Who may write a feature store now: its locks (flock, which the OS drops when the holding
process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind).

    _headstart.lock           an embed run: exclusive; shard runs share it (they exclude an
                              unsharded run, not each other)
    _headstart.shardK.lock    one shard's run: exclusive
    _headstart.meta.lock      held for a moment around read-modify-write of the summary and
                              the errors list

A second writer is refused with the holder's pid and host, which the lock file names.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import StoreError, StoreLockedError
from .safe_files import OutputFolder
from .shard import Shard

LOCK_FILE = "_headstart.lock"
META_LOCK_FILE = "_headstart.meta.lock"


def take_writer_locks(folder: OutputFolder, shard: Shard | None, held: ExitStack) -> None:
    """The locks a run writing `folder` (the store) holds until `held` closes."""
    if shard is None:
        held.enter_context(_flock(folder, LOCK_FILE, fcntl.LOCK_EX, "another headstart run"))
    else:
        held.enter_context(_flock(folder, LOCK_FILE, fcntl.LOCK_SH, "an unsharded run"))
        shard_lock = f"_headstart.shard{shard.name}.lock"
        held.enter_context(_flock(folder, shard_lock, fcntl.LOCK_EX, f"shard {shard}"))
        _refuse_shards_of_another_count(folder, shard)


_SHARD_LOCK = re.compile(r"_headstart\.shard(\d+)of(\d+)\.lock")


def _refuse_shards_of_another_count(folder: OutputFolder, shard: Shard) -> None:
    """The jobs of an array split the folder one way: a shard of another N (another
    array's job, a typo) writing meanwhile would embed the same files twice."""
    for name in folder.names():
        match = _SHARD_LOCK.fullmatch(name)
        if match is None or int(match.group(2)) == shard.count:
            continue
        with folder.open_lock(name) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it: a finished job's
            except BlockingIOError:
                holder = handle.read(200).decode("utf-8", "replace").strip()
        raise StoreLockedError(
            f"{folder.path} is being written by shard {match.group(1)}/{match.group(2)} "
            f"({holder or 'another process'}), of an array of {match.group(2)} jobs: every "
            f"job writing a store at once splits it the same way; wait for those to finish, "
            f"or give --shard K/{match.group(2)}"
        )


@contextmanager
def metadata_lock(folder: OutputFolder) -> Iterator[None]:
    """A short wait-your-turn lock around read-modify-write of the shared files."""
    with folder.open_lock(META_LOCK_FILE) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def writer_alive(root: Path) -> bool:
    """Whether a process holds the store's lock now (tried without taking it for long,
    with a read-only descriptor, so it works on a read-only store)."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # no lock file: nobody ever held it here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@contextmanager
def _flock(folder: OutputFolder, name: str, mode: int, who: str) -> Iterator[None]:
    with folder.open_lock(name) as handle:  # closing releases the flock
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read(200).decode("utf-8", "replace").strip() or "another process"
            raise StoreLockedError(
                f"{folder.path} is being written by {who} ({holder}); wait for it to "
                "finish or choose another output folder"
            ) from None
        if mode == fcntl.LOCK_EX:
            _write_holder(handle, folder.path / name)
        yield


def _write_holder(handle, path: Path) -> None:
    """Say in the lock file who holds it, for the message a second writer gets."""
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError as error:  # the store's folder is named: the lock file is ours to know
        raise StoreError(f"cannot write in {path.parent}: {error.strerror or error}") from None
