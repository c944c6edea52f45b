"""Feature store -> X, y for training, and the stratified validation split."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.errors import StoreError
from ..extractor.store import FeatureStore
from .errors import TrainingDataError


@dataclass
class LabelledFeatures:
    X: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # str (N,)
    paths: list[str]
    classes: list[str]  # sorted
    fingerprint: dict[str, Any]
    views: np.ndarray | None = None  # int (N,): 0 plain, 1..K augmented; None: all plain

    @property
    def view_numbers(self) -> np.ndarray:
        return np.zeros(len(self.paths), int) if self.views is None else self.views

    @property
    def y(self) -> np.ndarray:
        """Labels as indices into `classes`."""
        return np.searchsorted(self.classes, self.labels)


def load_labelled_features(features_dir: str | os.PathLike) -> LabelledFeatures:
    """Read every part of a store; refuse what cannot train a classifier, saying how many."""
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
        table = store.read_table(fingerprint)
    except StoreError as error:
        raise TrainingDataError(str(error)) from None

    labels = table["label"].to_pylist()
    paths = table["path"].to_pylist()
    views = np.asarray(table["view"], dtype=int) if "view" in table.column_names else None
    plain = range(len(paths)) if views is None else np.flatnonzero(views == 0)
    what = "rows" if views is None else "images"  # counted once, not once per view
    classes = check_labels(
        features_dir, [paths[i] for i in plain], [labels[i] for i in plain], what
    )
    X = np.asarray(table["features"].combine_chunks().flatten(), dtype=np.float32)
    X = X.reshape(len(paths), fingerprint["dim"])
    return LabelledFeatures(X, np.array(labels), paths, classes, fingerprint, views)


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
    return np.sort(train), np.sort(val)


VIEWS_IN_TRAINING = ("all", "none")


def split_by_image(
    data: LabelledFeatures, val_split: float, seed: int, views_in_training: str = "all"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), split by image, never by row: every view of a
    validation image stays out of training, and validation uses plain views only.
    `views_in_training`: "all" trains on every view of the training images, "none" on
    their plain views only."""
    views = data.view_numbers
    plain = np.flatnonzero(views == 0)
    train_images, val_images = stratified_split(data.y[plain], val_split, seed)
    training = {data.paths[i] for i in plain[train_images]}
    rows = [
        index
        for index, path in enumerate(data.paths)
        if path in training and (views_in_training == "all" or views[index] == 0)
    ]
    return np.asarray(rows, dtype=int), plain[val_images]
