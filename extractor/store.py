"""Feature store stage: a folder of Parquet parts readable as one dataset.

    OUT_DIR/part-00001.parquet ...   rows: path, label, sha256, width, height, features
    OUT_DIR/_headstart.json          fingerprint + last run's summary
    OUT_DIR/_errors.csv              path,error for every input that could not be embedded
    OUT_DIR/_headstart.lock          held (flock) by the run writing the store

Crash safety: a part is written under a `_tmp-` name and renamed when complete, so a reader
never sees half a part. Rows are only ever added by new parts; stale rows (deleted or changed
files, or duplicates left by a run killed mid-compaction) are removed at the end of a run by
rewriting the parts that hold them into new parts before deleting the old ones. Whatever
moment a run is killed at, the next run converges to exactly one row per readable image.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FingerprintMismatchError, StoreError, StoreLockedError
from .fingerprint import fingerprint_differences
from .shard import Shard

METADATA_KEY = b"headstart"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
TEMP_PREFIX = "_tmp-"
SUMMARY_FILE, ERRORS_FILE, LOCK_FILE = "_headstart.json", "_errors.csv", "_headstart.lock"
META_LOCK_FILE = "_headstart.meta.lock"  # held for a moment around summary/errors updates


def store_schema(
    dim: int, fingerprint: dict[str, Any] | None = None, views: bool = False
) -> pa.Schema:
    """The parts' schema; `view` (0 = the plain image, 1..K augmented) only in stores made
    with --views: a store without it has plain views only."""
    metadata = {METADATA_KEY: json.dumps(fingerprint).encode()} if fingerprint else None
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
    if views:
        fields.append(pa.field("view", pa.int32(), nullable=False))
    fields.append(pa.field("features", pa.list_(pa.float32(), dim), nullable=False))
    return pa.schema(fields, metadata=metadata)


@dataclass
class FeatureRows:
    """Rows waiting to be written; `features` holds one float32 (D,) vector per row."""

    paths: list[str]
    labels: list[str | None]
    sha256s: list[str]
    widths: list[int]
    heights: list[int]
    features: list[np.ndarray]
    views: list[int] = field(default_factory=list)  # empty: every row is a plain view

    @classmethod
    def empty(cls) -> FeatureRows:
        return cls([], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.paths)

    def concat(self, other: FeatureRows) -> FeatureRows:
        return FeatureRows(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))

    def split(self, count: int) -> tuple[FeatureRows, FeatureRows]:
        """The first `count` rows and the rest."""
        columns = list(vars(self).values())
        return FeatureRows(*(c[:count] for c in columns)), FeatureRows(
            *(c[count:] for c in columns)
        )

    def to_table(self, schema: pa.Schema) -> pa.Table:
        dim = schema.field("features").type.list_size
        flat = np.concatenate(self.features).astype(np.float32, copy=False).reshape(-1)
        features = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        columns = {
            "path": self.paths,
            "label": self.labels,
            "sha256": self.sha256s,
            "width": self.widths,
            "height": self.heights,
            "view": self.views or [0] * len(self.paths),
        }
        arrays = [
            features if f.name == "features" else pa.array(columns[f.name], f.type) for f in schema
        ]
        return pa.Table.from_arrays(arrays, schema=schema)


class FeatureStore:
    def __init__(self, root: str | os.PathLike, shard: Shard | None = None):
        """With `shard`, this writer is one of several array jobs filling the same store:
        it writes parts named after its shard, touches only those, and merges its entries
        into the shared summary and errors list."""
        self.root = Path(root)
        self.shard = shard
        self.part_prefix = f"{PART_PREFIX}shard{shard.name}-" if shard else PART_PREFIX

    # --- reading -------------------------------------------------------------------------

    def parts(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"{PART_PREFIX}*{PART_SUFFIX}"))

    def fingerprint(self) -> dict[str, Any] | None:
        """The store's fingerprint: from _headstart.json, else from the first part."""
        summary = self.root / SUMMARY_FILE
        if summary.is_file():
            try:
                return json.loads(summary.read_text())["fingerprint"]
            except (ValueError, KeyError) as error:
                raise StoreError(f"{summary} is not a headstart summary ({error})") from None
        parts = self.parts()
        return part_fingerprint(parts[0]) if parts else None

    def last_run(self) -> dict[str, Any]:
        """The last run's summary from _headstart.json ({} if there is none)."""
        try:
            return json.loads((self.root / SUMMARY_FILE).read_text()).get("last_run") or {}
        except (OSError, ValueError, AttributeError):
            return {}

    def index(self, fingerprint: dict[str, Any]) -> dict[str, set[str]]:
        """path -> the sha256s stored for it (one, unless a run was killed mid-way).
        Every part must carry `fingerprint`: a part from another extractor is refused."""
        stored: dict[str, set[str]] = {}
        for table in self._checked_parts(fingerprint, columns=["path", "sha256"]):
            for path, sha256 in zip(table["path"].to_pylist(), table["sha256"].to_pylist()):
                stored.setdefault(path, set()).add(sha256)
        return stored

    def read_table(self, fingerprint: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
        """Every row of the store (`columns` only, if given) as one table, each part checked
        against `fingerprint`."""
        tables = [
            t.replace_schema_metadata(None) for t in self._checked_parts(fingerprint, columns)
        ]
        if not tables:
            empty = store_schema(fingerprint["dim"]).empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(tables)

    def _checked_parts(
        self, fingerprint: dict[str, Any], columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        for part in self.parts():
            if not part.exists():  # compacted away by a shard's writer since the listing
                continue
            table = _read_part(part, columns=columns)
            _check_part_fingerprint(part, table.schema, fingerprint)
            yield table

    # --- writing (only while holding the lock) ---------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock; a second writer is refused. The OS drops the lock when its
        process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind.
        Shard writers share the store lock (they exclude an unsharded run, not each other)
        and each holds its own shard's lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with ExitStack() as held:
            if self.shard is None:
                held.enter_context(self._flock(LOCK_FILE, fcntl.LOCK_EX, "another headstart run"))
            else:
                held.enter_context(self._flock(LOCK_FILE, fcntl.LOCK_SH, "an unsharded run"))
                shard_lock = f"_headstart.shard{self.shard.name}.lock"
                held.enter_context(self._flock(shard_lock, fcntl.LOCK_EX, f"shard {self.shard}"))
            yield

    @contextmanager
    def _flock(self, name: str, mode: int, who: str) -> Iterator[None]:
        handle = open(self.root / name, "a+")
        try:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreLockedError(
                    f"{self.root} is being written by {who} ({holder}); wait for it to "
                    "finish or choose another output folder"
                ) from None
            if mode == fcntl.LOCK_EX:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
            yield
        finally:
            handle.close()  # closing releases the flock

    @contextmanager
    def _metadata_lock(self) -> Iterator[None]:
        """A short wait-your-turn lock around read-modify-write of the shared files."""
        with open(self.root / META_LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> None:
        """Check the fingerprint (or wipe the store with `overwrite`) and drop temporaries."""
        mine = f"{TEMP_PREFIX}{self.part_prefix}*" if self.shard else f"{TEMP_PREFIX}*"
        for leftover in self.root.glob(mine):
            leftover.unlink(missing_ok=True)  # what a killed run did not finish: never visible
        with self._metadata_lock():
            self._check_or_clear(fingerprint, overwrite)

    def _check_or_clear(self, fingerprint: dict[str, Any], overwrite: bool) -> None:
        stored = self.fingerprint()
        if stored is not None:
            differences = fingerprint_differences(stored, fingerprint)
            if differences and not overwrite:
                raise FingerprintMismatchError(
                    f"{self.root} holds features of another extractor ("
                    + "; ".join(differences)
                    + "). Use --overwrite to replace them, or choose another output folder"
                )
            if differences:
                if self.shard:
                    raise StoreError(
                        "--overwrite cannot be combined with --shard (the other shards' "
                        "parts would go too); run one job without --shard with --overwrite "
                        "first, or choose another output folder"
                    )
                self.clear()
        self._write_summary_unlocked(fingerprint, {"status": "running"})

    def move_aside_unreadable_parts(self) -> list[Path]:
        """--repair: every part (this writer's own, for a shard) that cannot be read in full
        is renamed `_corrupt-NAME` (kept for inspection, ignored by readers), so the run
        embeds its images again. Returns the parts moved."""
        moved = []
        for part in self.parts():
            if not part.name.startswith(self.part_prefix):
                continue
            try:
                pq.read_table(part)
            except (OSError, pa.ArrowException):
                part.rename(part.with_name(f"_corrupt-{part.name}"))
                moved.append(part)
        return moved

    def clear(self) -> None:
        for path in [*self.parts(), self.root / SUMMARY_FILE, self.root / ERRORS_FILE]:
            path.unlink(missing_ok=True)

    def write_part(self, rows: FeatureRows, fingerprint: dict[str, Any]) -> Path:
        views = fingerprint.get("views") is not None
        table = rows.to_table(store_schema(fingerprint["dim"], fingerprint, views))
        return self._write_table(table)

    def remove_stale_rows(self, wanted: dict[str, str]) -> int:
        """Keep one row per (path, sha256) in `wanted`; rewrite or delete parts holding
        anything else. Returns the number of rows removed."""
        kept: set[tuple[str, int]] = set()
        removed = 0
        for part in self.parts():
            if self.shard and not part.name.startswith(self.part_prefix):
                continue  # other writers' parts: left to them, or to the next unsharded run
            table = _read_part(part)
            views = table["view"].to_pylist() if "view" in table.column_names else None
            keep = []
            for index, (path, sha256) in enumerate(
                zip(table["path"].to_pylist(), table["sha256"].to_pylist())
            ):
                key = (path, views[index] if views else 0)  # one row per view of a file
                keep.append(wanted.get(path) == sha256 and key not in kept)
                if keep[-1]:
                    kept.add(key)
            if all(keep):
                continue
            removed += keep.count(False)
            if any(keep):
                self._write_table(table.filter(pa.array(keep)), table.schema.metadata)
            part.unlink()  # after the rewrite is renamed in: a kill in between leaves
            # duplicates, which the next run removes the same way
        return removed

    def write_errors(self, errors: Iterable[tuple[str, str]]) -> None:
        """Replace the errors list; a shard replaces only the entries of its own files."""
        errors = list(errors)
        with self._metadata_lock():
            if self.shard:
                others = [row for row in _read_errors(self.root / ERRORS_FILE)
                          if not self.shard.holds(row[0])]  # fmt: skip
                errors = sorted(others + errors)
            write_errors_csv(self.root / ERRORS_FILE, errors)

    def write_summary(self, fingerprint: dict[str, Any], last_run: dict[str, Any]) -> None:
        with self._metadata_lock():
            self._write_summary_unlocked(fingerprint, last_run)

    def _write_summary_unlocked(self, fingerprint: dict[str, Any], last_run: dict[str, Any]):
        if self.shard:  # each shard's last run, side by side
            shards = dict(self.last_run().get("shards", {}))
            shards[str(self.shard)] = last_run
            last_run = {"shards": dict(sorted(shards.items()))}
        text = json.dumps({"fingerprint": fingerprint, "last_run": last_run}, indent=2)
        self._write_text(SUMMARY_FILE, text + "\n")

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
        final = self.root / self._next_part_name()
        temporary = self.root / (TEMP_PREFIX + final.name)
        try:
            with open(temporary, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except OSError as error:  # disk full, quota, read-only: no part, a clear message
            temporary.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write {final}: {error.strerror or error}; the parts written before "
                "are kept, and the same command resumes once the cause is fixed"
            ) from None
        return final

    def _write_text(self, name: str, text: str) -> None:
        write_text_atomically(self.root / name, text)


def is_feature_store(folder: Path) -> bool:
    """Whether `folder` looks like a feature store (rather than, say, an images folder)."""
    return (folder / SUMMARY_FILE).is_file() or bool(FeatureStore(folder).parts())


def write_errors_csv(path: Path, errors: Iterable[tuple[str, str]]) -> None:
    """`path,error` rows, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows(errors)
    write_text_atomically(Path(path), buffer.getvalue())


def _read_errors(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return [(row[0], row[1]) for row in rows[1:] if len(row) >= 2]


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` under a `_tmp-` name, then rename it into place."""
    temporary = path.with_name(TEMP_PREFIX + path.name)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def part_fingerprint(part: Path) -> dict[str, Any]:
    try:
        schema = pq.read_schema(part)
    except (OSError, pa.ArrowException) as error:
        raise _corrupt(part, error) from None
    return _fingerprint_of(part, schema)


def _fingerprint_of(part: Path, schema: pa.Schema) -> dict[str, Any]:
    metadata = schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise StoreError(f"{part} has no headstart fingerprint; it was not written by headstart")
    return json.loads(metadata[METADATA_KEY])


def _check_part_fingerprint(part: Path, schema: pa.Schema, expected: dict[str, Any]) -> None:
    differences = fingerprint_differences(_fingerprint_of(part, schema), expected)
    if differences:
        raise FingerprintMismatchError(
            f"{part} holds features of another extractor ({'; '.join(differences)}); "
            "move it out of the store, or run with --overwrite to replace the whole store"
        )


def _read_part(part: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(part, columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise _corrupt(part, error) from None


def _corrupt(part: Path, error: Exception) -> StoreError:
    return StoreError(
        f"{part} is not a readable Parquet part ({error}); run embed again with --repair "
        "to re-embed its rows"
    )
