"""A feature store's rows without its features in memory: what each row is (path, label,
view) is read once, and the features are read from the parts when they are needed, a part
at a time. Memory then grows with the rows' names, not with their features: a store of a
million rows of 2,048 features (8 GB) trains within a budget of 1 GB.

Rows are numbered in the order a whole-store read gives them (parts in name order, a row a
compaction holds twice for a moment counted once), so a store read in memory and the same
store streamed give the same rows the same numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.errors import StoreError
from ..extractor.progress import Progress
from ..extractor.store import FeatureStore
from ..extractor.store_parts import check_part_fingerprint, check_part_rows, read_listed_part

log = logging.getLogger("headstart")


@dataclass(frozen=True)
class Part:
    path: Path
    rows: int  # as the part holds them, copies included
    identity: tuple[int, int, int]  # inode, size, mtime_ns: the part that was listed


@dataclass
class StoreRows:
    """A store's rows: their metadata, and where each one's features are."""

    root: Path
    fingerprint: dict[str, Any]
    parts: list[Part]
    part_of: np.ndarray  # int32 (N,): the part holding each row
    offset: np.ndarray  # int32 (N,): its row in that part
    paths: list[str]
    labels: list[str | None]
    views: np.ndarray | None  # int (N,), None for a store without views
    _said_large_parts: bool = False

    @classmethod
    def read(cls, store: FeatureStore, fingerprint: dict[str, Any]) -> StoreRows:
        """The metadata of every row, as one snapshot (FeatureStore.snapshot), in little
        memory: labels as shared strings, no sha256 kept (a million rows: about 100 MB)."""
        # width and height are read to be checked (a part may lie); `view` where there is one
        columns = ["path", "label", "width", "height", "view"]
        snapshot = store.snapshot(fingerprint, columns)
        parts, paths, part_of, offset, views, labels = [], [], [], [], [], []
        names: dict[str | None, str | None] = {}  # one string object per label
        while snapshot:
            path, table = snapshot.pop(0)  # each part's table freed once read
            info = os.stat(path)
            parts.append(Part(path, table.num_rows, (info.st_ino, info.st_size, info.st_mtime_ns)))
            paths += table["path"].to_pylist()
            labels += [names.setdefault(label, label) for label in table["label"].to_pylist()]
            part_of.append(np.full(table.num_rows, len(parts) - 1, np.int32))
            offset.append(np.arange(table.num_rows, dtype=np.int32))
            if "view" in table.column_names:
                views.append(np.asarray(table["view"], dtype=np.int32))
        rows = cls(
            store.root,
            fingerprint,
            parts,
            np.concatenate(part_of or [np.zeros(0, np.int32)]),
            np.concatenate(offset or [np.zeros(0, np.int32)]),
            paths,
            labels,
            np.concatenate(views) if fingerprint.get("views") and views else None,
        )
        return rows._without_copies()

    def _without_copies(self) -> StoreRows:
        """One row per (path, view): a run killed between writing a compacted part and
        removing the old one leaves the same row (same sha256) twice until the next run; a
        path held twice with different contents was put there by hand, and is refused. The
        rows are compared by hash first: only the few that collide are read again."""
        views = self.views if self.views is not None else np.zeros(len(self), np.int32)
        if self.views is None:
            hashes = (hash(path) for path in self.paths)
        else:
            hashes = (hash(key) for key in zip(self.paths, views.tolist()))
        keys = np.fromiter(hashes, np.int64, len(self))
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(np.diff(keys[order]) == 0)
        if not len(same):
            return self
        candidates = np.unique(np.concatenate([order[same], order[same + 1]]))
        first: dict[tuple[str, int], int] = {}
        dropped = []
        for row in candidates:  # in store order: the first of each pair is kept
            key = (self.paths[row], int(views[row]))
            if key in first:
                if self._sha256(row) != self._sha256(first[key]):
                    raise StoreError(
                        f"{self.root}: {key[0]!r} is stored more than once with different "
                        "contents (sha256), which embed never writes; a part was edited or "
                        "added by hand: move the parts you did not make out of the store "
                        "and run embed again"
                    )
                dropped.append(row)
            else:
                first[key] = row
        if not dropped:
            return self
        keep = np.setdiff1d(np.arange(len(self)), dropped)
        return StoreRows(
            self.root,
            self.fingerprint,
            self.parts,
            self.part_of[keep],
            self.offset[keep],
            [self.paths[row] for row in keep],
            [self.labels[row] for row in keep],
            None if self.views is None else self.views[keep],
        )

    def _sha256(self, row: int) -> str:
        part = self.parts[int(self.part_of[row])]
        table = read_listed_part(part.path, ["sha256"])
        if table is None:
            raise StoreError(f"{part.path} changed while it was being read; run again")
        return table["sha256"][int(self.offset[row])].as_py()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.fingerprint["dim"])

    def metadata_bytes(self) -> int:
        """About what the rows' metadata takes in memory, and what a train run builds of
        it (Python strings and lists, index arrays, sets of paths)."""
        text = sum(map(len, self.paths[:1000])) / max(1, min(len(self), 1000))
        return int(len(self) * (3 * (text + 57) + 64))

    def features(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), dim): the features of `rows`, in their order; each part
        holding any of them is read once."""
        rows = np.asarray(rows, dtype=np.int64)
        X = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(self.part_of[rows], kind="stable")
        parts = self.part_of[rows[order]]
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for chunk in np.split(order, bounds) if len(order) else []:
            part = int(self.part_of[rows[chunk[0]]])
            X[chunk] = self._part_features(part)[self.offset[rows[chunk]]]
        return X

    def windows(
        self,
        rows: np.ndarray,
        window_rows: int,
        seed: int | None = None,
        progress: str | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, float32 features) covering `rows` once, a window of whole parts
        of about `window_rows` rows at a time. With `seed`, the parts come in a random
        order and the rows of a window are shuffled (a store holds its images in folder
        order, class after class: a window of parts from all over the store mixes them);
        without, in store order. With `progress` (the pass's name), the rows done are
        shown as the windows are consumed (a bar, or a line every 30 s in a log)."""
        with Progress(len(rows), progress or "", unit="rows", shown=bool(progress)) as bar:
            for chosen, X in self._windows(rows, window_rows, seed):
                yield chosen, X
                bar.update(len(chosen))

    def _windows(
        self, rows: np.ndarray, window_rows: int, seed: int | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.asarray(rows, dtype=np.int64)
        by_part = np.argsort(self.part_of[rows], kind="stable")
        counts = np.bincount(self.part_of[rows], minlength=len(self.parts))
        starts = np.concatenate([[0], np.cumsum(counts)])
        order = np.flatnonzero(counts)
        largest = int(counts.max(initial=0))
        if largest > window_rows and not self._said_large_parts:
            self._said_large_parts = True
            log.warning("%s holds parts of up to %s rows, more than the %s rows at a time the "
                        "memory budget allows: each is read whole, over the budget (embed "
                        "--rows-per-part sets the size of the parts it writes)", self.root,
                        f"{largest:,}", f"{window_rows:,}")  # fmt: skip
        rng = None if seed is None else np.random.default_rng(seed)
        if rng is not None:
            order = rng.permutation(order)
        window: list[int] = []
        for position, part in enumerate(order):
            window.append(int(part))
            held = sum(int(counts[p]) for p in window)
            if held >= window_rows or position == len(order) - 1:
                chosen = np.concatenate([rows[by_part[starts[p] : starts[p + 1]]] for p in window])
                if rng is not None:
                    chosen = rng.permutation(chosen)
                yield chosen, self.features(chosen)
                window = []

    def _part_features(self, number: int) -> np.ndarray:
        """One part's features as float32 (rows as the part holds them), checked to be the
        part that was listed."""
        part = self.parts[number]
        changed = StoreError(
            f"{part.path} changed or went while it was being read (an embed compacting "
            f"{self.root}, or a hand); run again once nothing else writes the store"
        )
        try:
            info = os.stat(part.path)
        except FileNotFoundError:
            raise changed from None
        if (info.st_ino, info.st_size, info.st_mtime_ns) != part.identity:
            raise changed
        table = read_listed_part(part.path, ["features"])
        if table is None or table.num_rows != part.rows:
            raise changed
        check_part_fingerprint(part.path, table.schema, self.fingerprint)
        check_part_rows(part.path, table, self.fingerprint, ["features"])
        flat = table["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(part.rows, self.dim)
