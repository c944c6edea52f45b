"""Feature store -> X, y for training, and the stratified validation split."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.errors import StoreError
from ..extractor.store import FeatureStore
from .errors import TrainingDataError
from .memory import DEFAULT_MEMORY_BUDGET, MemoryBudget
from .store_rows import StoreRows


@dataclass
class LabelledFeatures:
    """A store's labelled rows: their features in memory (`X`), or, for a store bigger than
    the memory budget, on disk, read as needed through `store_rows` (`X` None)."""

    X: np.ndarray | None  # float32 (N, D); None: streamed from `store_rows`
    labels: np.ndarray  # str (N,)
    paths: list[str]
    classes: list[str]  # sorted
    fingerprint: dict[str, Any]
    views: np.ndarray | None = None  # int (N,): 0 plain, 1..K augmented; None: all plain
    images_dir: str | None = None  # the images folder the store records (paths are in it)
    store_rows: StoreRows | None = None
    budget: MemoryBudget | None = None
    # what a streamed pass over these rows made (heads.streamed): made once for all the
    # kinds --head auto trains
    passes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def view_numbers(self) -> np.ndarray:
        return np.zeros(len(self.paths), int) if self.views is None else self.views

    @cached_property
    def y(self) -> np.ndarray:
        """Labels as indices into `classes` (computed once: a million rows take a second)."""
        return np.searchsorted(self.classes, self.labels)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1]) if self.X is not None else self.store_rows.dim

    @property
    def streamed(self) -> bool:
        return self.X is None

    def features(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of `rows` (row numbers), in their order."""
        return self.X[rows] if self.X is not None else self.store_rows.features(rows)

    def in_memory(self, rows: np.ndarray) -> LabelledFeatures:
        """Just `rows` (renumbered 0..len(rows)-1, in their order), features in memory."""
        rows = np.asarray(rows, dtype=int)
        return LabelledFeatures(
            self.features(rows),
            self.labels[rows],
            [self.paths[row] for row in rows],
            self.classes,
            self.fingerprint,
            None if self.views is None else self.views[rows],
            self.images_dir,
        )


def load_labelled_features(
    features_dir: str | os.PathLike, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> LabelledFeatures:
    """Read a store's rows; refuse what cannot train a classifier, saying how many. The
    features are read into memory when they fit `memory_budget` (bytes) several times
    over, else left on disk to be streamed."""
    store = FeatureStore(features_dir)
    if not Path(features_dir).is_dir():
        raise TrainingDataError(f"{features_dir} does not exist or is not a folder")
    fingerprint = store.fingerprint()
    if fingerprint is None or not store.parts():
        raise TrainingDataError(
            f"{features_dir} holds no features; make them with: headstart embed IMAGES_DIR "
            f"-o {features_dir}"
        )
    store.warn_if_unfinished()
    try:
        rows = StoreRows.read(store, fingerprint)
        paths, labels, views = rows.paths, rows.labels, rows.views
        plain = range(len(paths)) if views is None else np.flatnonzero(views == 0)
        what = "rows" if views is None else "images"  # counted once, not once per view
        classes = check_labels(
            features_dir, [paths[i] for i in plain], [labels[i] for i in plain], what
        )
        budget = MemoryBudget(memory_budget, rows.metadata_bytes(), rows.dim)
        X = rows.features(np.arange(len(rows))) if budget.fits_in_memory(len(rows)) else None
    except StoreError as error:
        raise TrainingDataError(str(error)) from None
    return LabelledFeatures(
        X,
        np.array(labels, dtype=object),
        paths,
        classes,
        fingerprint,
        views,
        store.images_dir(),
        rows,
        budget,
    )


def check_labels(source, paths: list[str], labels: list[str | None], what: str) -> list[str]:
    """The sorted classes, or a TrainingDataError for labels that cannot train a classifier
    (`what`: "rows" or "images", as the message should count them)."""
    unlabelled = [p for p, label in zip(paths, labels) if label is None]
    if unlabelled:
        raise TrainingDataError(
            f"{source}: {len(unlabelled)} of {len(paths)} {what} have no label (images "
            f"directly in IMAGES_DIR, e.g. {unlabelled[0]}); put each image in a class folder"
        )
    counts = Counter(labels)
    if len(counts) < 2:
        raise TrainingDataError(
            f"{source}: a classifier needs at least 2 classes, found {len(counts)} "
            f"({', '.join(sorted(counts)) or 'none'})"
        )
    lonely = sorted(label for label, n in counts.items() if n < 2)
    if lonely:
        raise TrainingDataError(
            f"{source}: every class needs at least 2 images (one to train, one to "
            f"validate); {len(lonely)} class(es) have 1: {', '.join(lonely)}"
        )
    return sorted(counts)


def stratified_split(y: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): each class in both, reproducible for a seed."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y))
    val_size = max(classes, int(round(val_split * len(y))))
    if len(y) - val_size < classes:
        raise TrainingDataError(
            f"{len(y)} images are too few for --val-split {val_split} with {classes} classes: "
            "each class needs images on both sides"
        )
    indices = np.arange(len(y))
    train, val = train_test_split(indices, test_size=val_size, stratify=y, random_state=seed)
    train, val = _every_class_on_both_sides(y, train, val)
    return np.sort(train), np.sort(val)


def _every_class_on_both_sides(y: np.ndarray, train, val) -> tuple[list, list]:
    """Rounding can leave a small class wholly on one side (a high --val-split on
    imbalanced classes): move one of its images across, so that every class is trained on
    and validated. Splits where every class is on both sides stay as they are."""
    if set(np.unique(y[train])) == set(np.unique(y[val])) == set(np.unique(y)):
        return train, val  # the usual case, told without a loop over the rows
    train, val = list(train), list(val)
    for label in np.unique(y):
        for into, out_of in ((train, val), (val, train)):
            members = [row for row in out_of if y[row] == label]
            if not any(y[row] == label for row in into) and len(members) > 1:
                out_of.remove(members[0])
                into.append(members[0])
    return train, val


VIEWS_IN_TRAINING = ("all", "none")


def split_by_image(
    data: LabelledFeatures, val_split: float, seed: int, views_in_training: str = "all"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), split by image, never by row: every view of a
    validation image stays out of training, and validation uses plain views only (none
    when `val_split` is 0).
    `views_in_training`: "all" trains on every view of the training images, "none" on
    their plain views only."""
    views = data.view_numbers
    plain = np.flatnonzero(views == 0)
    if val_split == 0:  # a final model on every image
        train_images, val_images = np.arange(len(plain)), np.arange(0)
    else:
        train_images, val_images = stratified_split(data.y[plain], val_split, seed)
    if data.views is None:  # a row per image
        return np.sort(plain[train_images]), plain[val_images]
    training = {data.paths[i] for i in plain[train_images]}
    rows = [
        index
        for index, path in enumerate(data.paths)
        if path in training and (views_in_training == "all" or views[index] == 0)
    ]
    return np.asarray(rows, dtype=int), plain[val_images]


def image_folds(
    data: LabelledFeatures,
    rows: np.ndarray,
    folds: int,
    seed: int,
    views_in_training: str = "all",
    max_rows: int | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Stratified cross-validation folds over the training `rows`, by image as split_by_image
    splits: each fold is (training rows, held-out rows), the held-out rows plain views. With
    more than `max_rows` rows, the folds cover a stratified subsample of the images. Returns
    the folds and the number of images they cover; no folds when a class has under 2 images
    (fewer folds than asked when a class has fewer images than folds)."""
    from sklearn.model_selection import StratifiedKFold

    views = data.view_numbers
    images = rows[views[rows] == 0]  # one plain row per image
    if max_rows and len(rows) > max_rows:
        images = stratified_subsample(
            images, data.y[images], max_rows * len(images) // len(rows), folds, seed
        )
    labels = data.y[images]
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    folds = min(folds, smallest)
    if folds < 2:
        return [], len(images)
    wanted = {data.paths[image] for image in images}
    rows_of = {}  # the rows of each image the folds cover
    for row in rows:
        path = data.paths[row]
        if path in wanted and (views_in_training == "all" or views[row] == 0):
            rows_of.setdefault(path, []).append(row)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    result = []
    for train, held_out in splitter.split(images, labels):
        train_rows = np.sort([row for i in train for row in rows_of[data.paths[images[i]]]])
        result.append((train_rows.astype(int), np.sort(images[held_out])))
    return result, len(images)


def stratified_subsample(
    images: np.ndarray, labels: np.ndarray, size: int, least: int, seed: int
) -> np.ndarray:
    """About `size` of `images`, each class in proportion but with at least `least` images
    (or all it has), reproducible for a seed."""
    rng = np.random.default_rng(seed)
    fraction = size / len(images)
    kept = []
    for label in np.unique(labels):
        members = images[labels == label]
        count = min(len(members), max(least, int(round(fraction * len(members)))))
        kept.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(kept))
