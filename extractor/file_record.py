"""The file record: what lets a run trust an image without reading it.

A store's rows are keyed by each image's sha256, and the sha256 stays its identity; but
hashing every file on every run reads the whole folder (300 GB for a million photos) to
find that nothing changed. So each run records, beside the parts, what each file it read
looked like: its size, mtime_ns and ctime_ns (as git's index does; rsync uses the first
two), with the sha256 it had. The next run trusts a file whose three are the same, without
opening it, as long as that sha256 is still in the store; anything else is hashed as before.

    OUT_DIR/_files-00001.parquet              path, size, mtime_ns, ctime_ns, sha256,
    OUT_DIR/_files-shard0of4-00001.parquet    hashed_from_ns (one file per writer and save)

Racy timestamps (git's rule): a file modified at or after the start of the run that
recorded it may have been modified again within the same timestamp tick after it was read,
with the same size, and nothing would show it. Such an entry is not trusted: the file is
hashed again by the next run (which records it anew, then trusted). "At or after" allows
RACY_MARGIN_NS for file systems whose clock is coarser or behind ours (FAT's 2 s, a file
server's clock).

The record is a cache: a missing, unreadable or foreign-looking record only means files are
hashed again (`--rehash` asks for that). A run saves what it has hashed every
RECORD_EVERY_S, so a killed run's successor does not read again the files whose rows were
stored by then (or already were: the entry of a file whose row a killed run had not yet
written is not trusted, its sha256 being in no part), and at its end one record of every
file it saw, removing the records it replaces.

A file system that caches attributes (NFS's actimeo) may show a file changed on another
machine within the last seconds with its old times: the record then trusts it until the
cache expires, as git and rsync would; `--rehash` reads every file.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputError
from .feature_rows import number_array, numbers_of, string_array
from .safe_files import OutputFolder
from .scan import ImageFile
from .shard import Shard
from .terminal import said_by

log = logging.getLogger("headstart")

RECORD_PREFIX, RECORD_SUFFIX = "_files-", ".parquet"
RACY_MARGIN_NS = 2 * 10**9
RECORD_EVERY_S = 60.0

RECORD_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("sha256", pa.string()),
        ("hashed_from_ns", pa.int64()),  # the start of the run that read the file
    ]
)


_RECORD_NAME = re.compile(
    re.escape(RECORD_PREFIX) + r"(shard\d+of\d+-)?\d+" + re.escape(RECORD_SUFFIX)
)


def record_prefix(shard: Shard | None) -> str:
    """What the names of one writer's records start with (an unsharded run's, a shard's)."""
    return RECORD_PREFIX + (f"shard{shard.name}-" if shard else "")


def is_record_name(name: str) -> bool:
    """A file record's name (`_files-00001.parquet`, `_files-shard0of4-00001.parquet`):
    a user's `_files-notes.parquet` is not ours, never read nor removed."""
    return _RECORD_NAME.fullmatch(name) is not None


class FileRecord:
    """The record of one writer (a run, or a shard's run) of a store, open for the run."""

    def __init__(
        self, folder: OutputFolder, shard: Shard | None, images: list[ImageFile], started_ns: int
    ):
        """`images`: the scan's (their size and times); `started_ns`: the run's start (wall
        clock), before the scan."""
        self.folder = folder
        self.prefix = record_prefix(shard)
        self.unsharded = shard is None
        self.started_ns = started_ns
        self.images = {image.path: image for image in images}
        self.paths = list(self.images)
        self.stats = np.array(
            [(image.size, image.mtime_ns, image.ctime_ns) for image in self.images.values()],
            dtype=np.int64,
        ).reshape(-1, 3)
        self.saved = 0  # hashed files saved so far (Stream.hashed)
        self.last_save = time.monotonic()
        self.said_cannot_write = False

    # --- trusting -------------------------------------------------------------------------

    def trusted(self, stored: dict[str, set[str]]) -> dict[str, str]:
        """path -> sha256 of each image the record vouches for: the same size, mtime_ns and
        ctime_ns as when it was hashed, not modified within RACY_MARGIN_NS of the start of
        the run that hashed it, and rows of that sha256 in the store (`stored`)."""
        record = self._read()
        if record is None or not self.paths or not stored:
            return {}
        import pyarrow.compute as pc  # here: a first embed has no record, and no need of it

        # the newest entry of each path first: index_in finds a path's first entry
        record = record.take(pc.sort_indices(record, [("hashed_from_ns", "descending")]))
        found = pc.index_in(string_array(self.paths), value_set=record["path"])
        where = numbers_of(found, null=-1)
        known = np.flatnonzero(where >= 0)
        entry, now = where[known], self.stats[known]
        column = lambda name: numbers_of(record[name])[entry]  # noqa: E731
        same = (
            (now[:, 0] == column("size"))
            & (now[:, 1] == column("mtime_ns"))
            & (now[:, 2] == column("ctime_ns"))
        )
        # a run's start is after the margin and before this run's (an edited record's could
        # be anything: never trusted, nor let to overflow)
        hashed_from = column("hashed_from_ns")
        sane = (hashed_from > RACY_MARGIN_NS) & (hashed_from <= self.started_ns)
        settled = sane & (now[:, 1:].max(axis=1) < np.where(sane, hashed_from, 0) - RACY_MARGIN_NS)
        chosen = number_array(entry[same & settled], pa.int64())
        sha256s = record["sha256"].take(chosen).to_pylist()
        trusted = {}
        for i, sha256 in zip(known[same & settled], sha256s):
            if sha256 in stored.get(self.paths[i], ()):
                trusted[self.paths[i]] = sha256
        return trusted

    def _read(self) -> pa.Table | None:
        """Every writer's saved records as one table; None when there are none. A file that
        cannot be read as a record is left out, said once (its files are hashed again)."""
        tables = []
        for name in self._names(mine=False):
            try:
                with pq.ParquetFile(self.folder / name) as parquet:
                    table = parquet.read()
                table = table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
            except (OSError, pa.ArrowException, KeyError, ValueError) as error:
                log.warning("%s is not a readable file record (%s); ignored: the files it "
                            "recorded are read again", self.folder / name,
                            said_by(error, 200, keep="start"))  # fmt: skip
                continue
            tables.append(table.filter(table["path"].is_valid()))
        return pa.concat_tables(tables) if tables else None

    # --- saving ---------------------------------------------------------------------------

    def save_if_due(self, hashed: list[str], current: dict[str, str]) -> None:
        """Every RECORD_EVERY_S, save the files hashed since the last save (`hashed`: the
        paths read so far, in order; `current`: path -> sha256)."""
        if time.monotonic() - self.last_save >= RECORD_EVERY_S and len(hashed) > self.saved:
            self._save(hashed[self.saved :], current)
            self.saved = len(hashed)

    def finish(self, current: dict[str, str]) -> None:
        """At the run's end: one record of every file this run saw (read or trusted), then
        the records it replaces removed: this writer's (an unsharded run's: every writer's;
        no shard runs beside it)."""
        older = self._names(mine=not self.unsharded)
        if not self._save(current, current):
            return  # the older records stay: still true, if less complete
        for name in older:
            self.folder.remove_file(name)

    def _save(self, paths: Iterable[str], current: dict[str, str]) -> bool:
        entries = [self.images[path] for path in paths if path in self.images]
        int64 = pa.int64()
        table = pa.Table.from_arrays(
            [
                string_array([image.path for image in entries]),
                number_array([image.size for image in entries], int64),
                number_array([image.mtime_ns for image in entries], int64),
                number_array([image.ctime_ns for image in entries], int64),
                string_array([current[image.path] for image in entries]),
                number_array([self.started_ns] * len(entries), int64),
            ],
            schema=RECORD_SCHEMA,
        )
        try:
            with self.folder.writing(self._next_name(), durable=True) as handle:
                pq.write_table(table, handle)
        except OutputError as error:
            if not self.said_cannot_write:  # the parts and summary say the run's outcome
                self.said_cannot_write = True
                log.warning("%s; the next run reads those files again", error)
            return False
        finally:
            self.last_save = time.monotonic()
        return True

    def _names(self, mine: bool) -> list[str]:
        """The saved records: this writer's (`mine`), else every writer's."""
        names = [name for name in self.folder.names() if is_record_name(name)]
        if mine:
            names = [name for name in names if self._number(name) is not None]
        return sorted(names)

    def _number(self, name: str) -> int | None:
        """The save's number in this writer's record `name`; None for another's."""
        number = name[len(self.prefix) : -len(RECORD_SUFFIX)]
        return int(number) if name.startswith(self.prefix) and number.isdigit() else None

    def _next_name(self) -> str:
        numbers = [self._number(name) for name in self._names(mine=True)]
        return f"{self.prefix}{max(numbers, default=0) + 1:05d}{RECORD_SUFFIX}"
