"""Feature store stage: a folder of Parquet parts readable as one dataset.

    OUT_DIR/part-00001.parquet ...   rows: path, label, sha256, width, height, features
    OUT_DIR/_headstart.json          fingerprint, the images folder it holds, last run's summary
    OUT_DIR/_errors.csv              path,error for every input that could not be embedded
    OUT_DIR/_files-00001.parquet     the file record: each image's size and times when it
                                     was hashed, so unchanged files need not be read again
    OUT_DIR/_headstart.lock          held (flock) by the run writing the store

Every write goes through safe_files: a part is written under a `_headstart-tmp-` name and
renamed when complete, so a reader never sees half a part, and no name of ours is ever
written through a symbolic link. Rows are only ever added by new parts; stale rows (deleted
or changed files, or duplicates left by a run killed mid-compaction) are removed at the end
of a run by rewriting the parts that hold them into new parts before deleting the old ones.
Whatever moment a run is killed at, the next run converges to exactly one row per readable
image.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .ahead import Background
from .errors import FingerprintMismatchError, OutputError, StoreError, StoreLockedError
from .errors_csv import read_errors, write_errors_csv
from .feature_rows import FeatureRows, store_schema
from .file_record import is_record_name, record_prefix
from .fingerprint import fingerprint_differences
from .images_folder import ImagesFolder
from .json_input import parse_json
from .safe_files import OutputFolder, final_name_of, read_own_file
from .shard import Shard
from .store_locks import metadata_lock, take_writer_locks, writer_alive
from .store_parts import (
    check_one_row_per_image_view,
    check_part_fingerprint,
    check_part_rows,
    checked_fingerprint,
    mask,
    parquet_rows,
    part_fingerprint,
    read_listed_part,
    read_part,
    without_copies,
)

log = logging.getLogger("headstart")

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
CORRUPT_PREFIX = "_corrupt-"
SUMMARY_FILE, ERRORS_FILE = "_headstart.json", "_errors.csv"
METADATA_FILES = (SUMMARY_FILE, ERRORS_FILE)
SNAPSHOT_ATTEMPTS = 5  # readings of a store that a compaction changed, before giving up
KEY_COLUMNS = ["path", "sha256", "view"]  # a row's identity (view: where a store has it)


def is_store_name(name: str) -> bool:
    """Whether `name` is one headstart writes in a store (parts, summary, errors, locks)."""
    return (
        name in METADATA_FILES
        or (name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX))
        or (name.startswith(CORRUPT_PREFIX) and name.endswith(PART_SUFFIX))
        or is_record_name(name)
        or (name.startswith("_headstart.") and name.endswith(".lock"))
    )


class FeatureStore:
    def __init__(self, root: str | os.PathLike, shard: Shard | None = None):
        """With `shard`, this writer is one of several array jobs filling the same store:
        it writes parts named after its shard, touches only those, and merges its entries
        into the shared summary and errors list."""
        self.root = Path(root)
        self.shard = shard
        self.part_prefix = f"{PART_PREFIX}shard{shard.name}-" if shard else PART_PREFIX
        self._keys: dict[str, tuple[tuple[int, int, int] | None, pa.Table]] = {}

    # --- reading -------------------------------------------------------------------------

    def parts(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"{PART_PREFIX}*{PART_SUFFIX}"))

    def fingerprint(self) -> dict[str, Any] | None:
        """The store's fingerprint: from _headstart.json, else from the first part."""
        summary = self._summary()
        if summary is not None:
            if "fingerprint" not in summary:
                raise StoreError(f"{self.root / SUMMARY_FILE} is not a headstart summary")
            return checked_fingerprint(
                summary["fingerprint"], f"{self.root / SUMMARY_FILE}: fingerprint"
            )
        parts = self.parts()
        return part_fingerprint(parts[0]) if parts else None

    def last_run(self) -> dict[str, Any]:
        """The last run's summary from _headstart.json ({} if there is none, or if what is
        there is not an object: it is for people to read, nothing depends on it)."""
        try:
            last_run = (self._summary() or {}).get("last_run")
        except StoreError:
            return {}
        return last_run if isinstance(last_run, dict) else {}

    def images_dir(self) -> str | None:
        """The images folder (absolute) the store holds; None for a new store, or one
        written before headstart recorded it."""
        try:
            images_dir = (self._summary() or {}).get("images_dir")
        except StoreError:
            return None
        return images_dir if isinstance(images_dir, str) and images_dir else None

    def _summary(self) -> dict[str, Any] | None:
        """_headstart.json, None if there is none."""
        path = self.root / SUMMARY_FILE
        try:
            summary = parse_json(read_own_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StoreError(f"{path} is not a headstart summary ({error})") from None
        if not isinstance(summary, dict):
            raise StoreError(f"{path} is not a headstart summary (not a JSON object)")
        return summary

    def index(self, fingerprint: dict[str, Any]) -> dict[str, set[str]]:
        """path -> the sha256s stored for it (one, unless a run was killed mid-way).
        Every part must carry `fingerprint`: a part from another extractor is refused.
        Each part's keys are kept for remove_stale_rows, which then need not read them
        again (on a no-op re-run, a third of what is read)."""
        stored: dict[str, set[str]] = {}
        self._keys = {}
        for part, table in self.snapshot(fingerprint, columns=KEY_COLUMNS):
            self._keys[part.name] = (_identity(part), table)
            for path, sha256 in zip(table["path"].to_pylist(), table["sha256"].to_pylist()):
                stored.setdefault(path, set()).add(sha256)
        return stored

    def read_table(self, fingerprint: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
        """Every row of the store (`columns` only, if given) as one table, each part checked
        against `fingerprint`, read as one snapshot (see snapshot); a row that a
        compaction holds twice for a moment is returned once."""
        tables = [
            t.replace_schema_metadata(None) for t in self._checked_parts(fingerprint, columns)
        ]
        if not tables:
            empty = store_schema(fingerprint["dim"], fingerprint).empty_table()
            return empty.select(columns) if columns else empty
        table = without_copies(pa.concat_tables(tables))
        check_one_row_per_image_view(self.root, table)
        return table

    def _checked_parts(
        self, fingerprint: dict[str, Any], columns: list[str] | None = None
    ) -> list[pa.Table]:
        return [table for _, table in self.snapshot(fingerprint, columns)]

    def snapshot(
        self, fingerprint: dict[str, Any], columns: list[str] | None = None
    ) -> list[tuple[Path, pa.Table]]:
        """Every part and its rows (`columns` only, if given), checked against
        `fingerprint`, as one consistent snapshot: the parts are listed once and read; a
        part a writer removed meanwhile (a compaction replaces parts by new ones) means the
        listing no longer holds every row, so the reading starts over. Works on a read-only
        store: nothing is written."""
        for attempt in range(SNAPSHOT_ATTEMPTS):
            tables = []
            for part in self.parts():
                table = read_listed_part(part, columns)
                if table is None:
                    break  # changed while reading
                check_part_fingerprint(part, table.schema, fingerprint)
                check_part_rows(part, table, fingerprint, columns)
                tables.append((part, table))
            else:
                return tables
            time.sleep(0.1 * (attempt + 1))
        raise StoreError(
            f"{self.root} changed while it was read, {SNAPSHOT_ATTEMPTS} times in a row (an "
            "embed is compacting it); try again once that run has finished"
        )

    def writer_state(self) -> str | None:
        """'complete', 'running' (a writer holds the store now), 'interrupted' (the last
        run started and never finished: killed, or stopped by an error), or None for a
        store without a summary."""
        status = self.last_run().get("status")
        shards = self.last_run().get("shards")
        if shards:
            statuses = {run.get("status") for run in shards.values()}
            status = "complete" if statuses == {"complete"} else "running"
        if status is None or status == "complete":
            return status
        return "running" if writer_alive(self.root) else "interrupted"

    def warn_if_unfinished(self) -> None:
        """A reader's warning when the store is being written, or its last run stopped."""
        state = self.writer_state()
        if state == "running":
            log.warning("%s is being written by an embed right now; reading the rows written "
                        "so far", self.root)  # fmt: skip
        elif state == "interrupted":
            log.warning("%s: its last embed did not finish (killed, or stopped by an error); "
                        "these are the rows written so far, and the same embed run again "
                        "completes the store", self.root)  # fmt: skip

    # --- writing (only while holding the lock) ---------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock; a second writer is refused. The OS drops the lock when its
        process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind.
        Shard writers share the store lock (they exclude an unsharded run, not each other)
        and each holds its own shard's lock."""
        created = not os.path.lexists(self.root)
        with ExitStack() as held:
            self.folder = held.enter_context(OutputFolder(self.root))
            held.callback(setattr, self, "folder", None)
            try:
                take_writer_locks(self.folder, self.shard, held)
                yield
            except StoreLockedError:
                raise  # another run holds the store: not this run's to tidy
            except BaseException:
                if created and self.shard is None:
                    self._remove_if_empty()
                raise

    def _remove_if_empty(self) -> None:
        """A run that made the store folder and failed before writing a part (a weights
        file that is not one, say) leaves nothing behind: its own files, then the folder."""
        if self.parts():
            return
        for name in self.folder.names():
            info = self.folder.entry(name)
            ours = is_store_name(name) or final_name_of(name) is not None
            if ours and info is not None and not stat.S_ISDIR(info.st_mode):
                self.folder.remove_file(name)
        try:
            os.rmdir(self.root)
        except OSError:
            pass  # something else is in it now: left as it is

    def prepare(
        self, fingerprint: dict[str, Any], overwrite: bool, images: ImagesFolder | None = None
    ) -> None:
        """Refuse links at the store's names, drop what killed runs left half-written,
        check the fingerprint and the images folder (or clear the store with `overwrite`)
        and mark the run as running."""
        self._refuse_foreign_entries()
        for leftover in self.folder.leftover_temporaries(self._owns_part):
            self.folder.remove_file(leftover)  # a killed run's part: never visible
        with metadata_lock(self.folder):
            for leftover in self.folder.leftover_temporaries(METADATA_FILES.__contains__):
                self.folder.remove_file(leftover)  # metadata is written under this lock
            self._check_or_clear(fingerprint, overwrite, images)

    def _owns_part(self, name: str) -> bool:
        """A part (or a file record) this writer may have written (any, unsharded)."""
        if is_record_name(name):
            return self.shard is None or name.startswith(record_prefix(self.shard))
        return name.startswith(self.part_prefix) and name.endswith(PART_SUFFIX)

    def _refuse_foreign_entries(self) -> None:
        """A link, folder or special file under a name of ours is refused, naming it."""
        for name in self.folder.names():
            if is_store_name(name):
                self.folder.check_file_name(name)

    def _check_or_clear(
        self, fingerprint: dict[str, Any], overwrite: bool, images: ImagesFolder | None
    ) -> None:
        stored = self.fingerprint()
        refusal = None
        if stored is not None:
            differences = fingerprint_differences(stored, fingerprint)
            if differences:
                refusal = (
                    f"{self.root} holds features of another extractor ("
                    + "; ".join(differences)
                    + "). Use --overwrite to replace them, or choose another output folder"
                )
            elif images is not None:
                refusal = images.refusal(
                    self.root, self.images_dir(), lambda: self.index(fingerprint), bool(self.shard)
                )
        if refusal and not overwrite:
            raise FingerprintMismatchError(refusal)
        if refusal:
            if self.shard:
                raise StoreError(
                    "--overwrite cannot be combined with --shard (the other shards' "
                    "parts would go too); run one job without --shard with --overwrite "
                    "first, or choose another output folder"
                )
            self.clear()
        self._write_summary_unlocked(fingerprint, {"status": "running"}, images)

    def move_aside_unreadable_parts(self) -> list[tuple[Path, Path]]:
        """--repair: every part (this writer's own, for a shard) that cannot be read in full
        is renamed `_corrupt-NAME` (kept for inspection, ignored by readers), so the run
        embeds its images again. Returns each part moved and its new path."""
        moved = []
        for part in self.parts():
            if not part.name.startswith(self.part_prefix):
                continue
            try:
                parquet_rows(part)
            except (OSError, pa.ArrowException):
                aside = self._corrupt_name(part.name)
                self.folder.rename(part.name, aside)
                moved.append((part, self.root / aside))
        return moved

    def _corrupt_name(self, part: str) -> str:
        """`_corrupt-NAME`, or `_corrupt-2-NAME`... when an earlier repair kept that one."""
        name, copy = CORRUPT_PREFIX + part, 1
        while self.folder.entry(name) is not None:
            copy += 1
            name = f"{CORRUPT_PREFIX}{copy}-{part}"
        return name

    def clear(self) -> None:
        """Remove the store's parts, file records, summary and errors list: all headstart
        wrote there."""
        records = [name for name in self.folder.names() if is_record_name(name)]
        for path in [*self.parts(), self.root / SUMMARY_FILE, self.root / ERRORS_FILE]:
            self.folder.remove_file(path.name)
        for name in records:
            self.folder.remove_file(name)

    def write_part(self, rows: FeatureRows, fingerprint: dict[str, Any]) -> Path:
        views = fingerprint.get("views") is not None
        table = rows.to_table(store_schema(fingerprint["dim"], fingerprint, views))
        return self._write_table(table)

    def remove_stale_rows(self, wanted: dict[str, str]) -> tuple[int, int]:
        """Keep one row per (path, sha256) in `wanted`; rewrite or delete parts holding
        anything else. Returns the rows removed: of deleted or changed files, and second
        copies of kept rows (a run killed while compacting, shards that overlapped)."""
        kept: set[tuple[str, int]] = set()
        removed = copies = 0
        for part in self.parts():
            if self.shard and not part.name.startswith(self.part_prefix):
                continue  # other writers' parts: left to them, or to the next unsharded run
            keys = self._keys_of(part)  # the features only if needed
            views = keys["view"].to_pylist() if "view" in keys.column_names else None
            keep = []
            for index, (path, sha256) in enumerate(
                zip(keys["path"].to_pylist(), keys["sha256"].to_pylist())
            ):
                key = (path, views[index] if views else 0)  # one row per view of a file
                current = wanted.get(path) == sha256
                keep.append(current and key not in kept)
                if keep[-1]:
                    kept.add(key)
                copies += current and not keep[-1]
            if all(keep):
                continue
            removed += keep.count(False)
            if any(keep):
                table = read_part(part)
                self._write_table(table.filter(mask(keep)), table.schema.metadata)
            self.folder.remove_file(part.name)  # after the rewrite is renamed in: a kill in
            # between leaves duplicates, which the next run removes the same way
        self._keys = {}
        return removed - copies, copies

    def _keys_of(self, part: Path) -> pa.Table:
        """A part's path, sha256 (and view): as index() read them, if the part is the one
        it read, else from the part."""
        identity, keys = self._keys.pop(part.name, (None, None))
        if keys is not None and identity == _identity(part):
            return keys
        return read_part(part, KEY_COLUMNS)

    def write_errors(self, errors: Iterable[tuple[str, str]]) -> None:
        """Replace the errors list; a shard replaces only the entries of its own files."""
        errors = list(errors)
        with metadata_lock(self.folder):
            if self.shard:
                others = [row for row in read_errors(self.root / ERRORS_FILE)
                          if not self.shard.holds(row[0])]  # fmt: skip
                errors = sorted(others + errors)
            write_errors_csv(self.folder, ERRORS_FILE, errors)

    def write_summary(
        self, fingerprint: dict[str, Any], last_run: dict[str, Any], images: ImagesFolder
    ) -> None:
        with metadata_lock(self.folder):
            self._write_summary_unlocked(fingerprint, last_run, images)

    def _write_summary_unlocked(
        self, fingerprint: dict[str, Any], last_run: dict[str, Any], images: ImagesFolder | None
    ) -> None:
        if self.shard:  # each shard's last run, side by side
            shards = self.last_run().get("shards")
            shards = dict(shards) if isinstance(shards, dict) else {}
            shards[str(self.shard)] = last_run
            last_run = {"shards": dict(sorted(shards.items()))}
        summary = {
            "fingerprint": fingerprint,
            "images_dir": images.path if images else self.images_dir(),
            "last_run": last_run,
        }
        self.folder.write_text(SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    # --- helpers ---------------------------------------------------------------------------

    def _next_part_name(self) -> str:
        """part-NNNNN.parquet, or part-shardKofN-NNNNN.parquet for a shard: no two writers
        ever pick the same name."""
        prefix = self.part_prefix
        numbers = [
            int(p.name[len(prefix) : -len(PART_SUFFIX)])
            for p in self.parts()
            if p.name.startswith(prefix) and p.name[len(prefix) : -len(PART_SUFFIX)].isdigit()
        ]
        return f"{prefix}{max(numbers, default=0) + 1:05d}{PART_SUFFIX}"

    def _write_table(self, table: pa.Table, metadata: dict | None = None) -> Path:
        if metadata is not None:
            table = table.replace_schema_metadata(metadata)
        name = self._next_part_name()
        try:
            with self.folder.writing(name, durable=True) as handle:
                pq.write_table(table, handle)
        except OutputError as error:  # disk full, quota, read-only: no part, a clear message
            raise StoreError(
                f"{error}; the parts written before are kept, and the same command resumes "
                "once the cause is fixed"
            ) from None
        return self.root / name


def _identity(part: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(part)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def is_feature_store(folder: Path) -> bool:
    """Whether `folder` looks like a feature store (rather than, say, an images folder)."""
    return os.path.lexists(folder / SUMMARY_FILE) or bool(FeatureStore(folder).parts())


class PartWriter:
    """Collects rows and writes a store part every `rows_per_part` rows, on a thread of its
    own (Parquet encoding and fsync take tens of milliseconds that the network need not
    wait for): one part is written while the next fills. A failed write is raised by the
    next add() or by finish(); leaving the `with` block waits for the write under way, so
    no part is written after the store's lock is released."""

    def __init__(self, store: FeatureStore, fingerprint: dict, rows_per_part: int):
        self.store, self.fingerprint, self.rows_per_part = store, fingerprint, rows_per_part
        self._pending = FeatureRows.empty()
        self._thread = Background("parts")
        self._writing: Future | None = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._thread.__exit__(*exc_info)

    def add(self, rows: FeatureRows) -> None:
        self._pending = self._pending.concat(rows)
        while len(self._pending) >= self.rows_per_part:
            part, self._pending = self._pending.split(self.rows_per_part)
            self._write(part)

    def finish(self) -> None:
        if len(self._pending):
            self._write(self._pending)
            self._pending = FeatureRows.empty()
        self._wait()

    def _write(self, part: FeatureRows) -> None:
        self._wait()
        self._writing = self._thread.submit(self.store.write_part, part, self.fingerprint)

    def _wait(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()
