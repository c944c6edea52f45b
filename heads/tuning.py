"""One kind of head trained as `train` trains it: hyperparameters chosen by cross-validation
on the training images (heads.selection) unless given, the head fitted on every training
image, then scored on the validation images (when there are any). `--head auto` trains each
kind this way and keeps the best cross-validated one (`best_candidate`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .dataset import LabelledFeatures
from .memory import shown
from .mlp import MLPHead
from .report import classification_metrics
from .selection import GRIDS, Selection, rank, select_hyperparameters
from .sklearn_heads import SklearnHead
from .streamed import (
    StreamedLogreg,
    streamed_probabilities,
    training_subsample,
    validation_subsample,
)

log = logging.getLogger("headstart")


@dataclass
class TrainingRows:
    """The rows each part of the training uses."""

    data: LabelledFeatures
    train: np.ndarray
    val: np.ndarray  # empty with --val-split 0
    folds: list[tuple[np.ndarray, np.ndarray]]  # cross-validation folds over `train`
    fold_images: int  # the training images the folds cover

    @cached_property
    def train_images(self) -> int:
        """Images, not rows: augmented views make more rows."""
        if self.data.views is None:
            return len(self.train)
        return len({self.data.paths[row] for row in self.train})

    @cached_property
    def cross_validation(self) -> tuple[LabelledFeatures, list, np.ndarray | None]:
        """What the cross-validation runs on: the data, its folds, and for a streamed
        store (whose folds cover a subsample, heads.selection.CV_MAX_ROWS) the store's row
        numbers of that data's rows, which are then just the folds' rows, in memory."""
        if not self.data.streamed or not self.folds:
            return self.data, self.folds, None
        covered = np.unique(np.concatenate([np.concatenate(fold) for fold in self.folds]))
        local = [(np.searchsorted(covered, a), np.searchsorted(covered, b)) for a, b in self.folds]
        return self.data.in_memory(covered), local, covered


@dataclass
class Candidate:
    """One kind of head, trained: the head, what chose its hyperparameters, its metrics on
    the validation images (None without any) and the seconds it all took."""

    kind: str
    head: SklearnHead | MLPHead
    selection: Selection | None
    metrics: dict[str, Any] | None
    seconds: float
    probabilities: np.ndarray | None = None  # on the validation images
    rows_used: int | None = None  # the training rows it learned from (a subsample: fewer)

    @property
    def cv_score(self) -> float | None:
        return None if self.selection is None else self.selection.score

    def row(self) -> dict[str, Any]:
        """Its line of `--head auto`'s table (and of head.json's candidates)."""
        chosen = self.selection.chosen if self.selection else {}
        return {
            "kind": self.kind,
            "hyperparameters": chosen,
            "cv_score": self.cv_score,
            "val_accuracy": None if self.metrics is None else self.metrics["accuracy"],
            "seconds": round(self.seconds, 2),
        }


def needs_selection(kind: str, given: dict[str, Any], rows: TrainingRows, auto: bool) -> bool:
    """Cross-validate when there is a hyperparameter to choose, when --head auto compares
    kinds by it, or when there are no validation images (it is then the only score, and the
    MLP's epoch count comes from it)."""
    free = [name for name in GRIDS[kind] if name not in given]
    return bool(free) or auto or len(rows.val) == 0


def train_candidate(
    kind: str,
    rows: TrainingRows,
    given: dict[str, Any],
    class_weight: str | None,
    seed: int,
    folder,
    mlp_options: dict[str, Any],
    auto: bool = False,
) -> Candidate:
    """Choose `kind`'s hyperparameters, fit it on the training rows, score it."""
    started = time.monotonic()
    data = rows.data
    given = {name: value for name, value in given.items() if name in GRIDS[kind]}
    selection = None
    if needs_selection(kind, given, rows, auto):
        selection = _select(kind, rows, given, class_weight, seed, mlp_options)
    settings = dict(given) if selection is None else dict(selection.chosen)
    if kind == "mlp":
        settings.update(mlp_options, folder=folder)
        if len(rows.val) == 0 and selection is not None and selection.best_epochs:
            settings["epochs"] = max(1, int(np.ceil(np.median(selection.best_epochs))))
            log.info("mlp: %d epochs on every image: the median of the folds' best epochs %s",
                     settings["epochs"], selection.best_epochs)  # fmt: skip
        head = MLPHead(seed=seed, class_weight=class_weight, **settings)
    else:
        head = SklearnHead(kind, seed=seed, class_weight=class_weight, **settings)
    if data.streamed:
        head, probabilities, used = _fit_streamed(kind, head, rows, seed)
    else:
        validation = (data.X[rows.val], data.y[rows.val]) if len(rows.val) else None
        head.fit(data.X[rows.train], data.y[rows.train], validation=validation)
        probabilities = head.predict_proba(validation[0]) if validation else None
        used = len(rows.train)
    metrics = None
    if probabilities is not None:
        metrics = classification_metrics(data.y[rows.val], probabilities, data.classes)
    seconds = time.monotonic() - started
    return Candidate(kind, head, selection, metrics, seconds, probabilities, used)


def _fit_streamed(kind: str, head, rows: TrainingRows, seed: int):
    """Fit `head` on a store too big for memory (heads.streamed): logreg and mlp over every
    training row, streamed; knn, rf and svm on a subsample that fits the budget. Returns
    the head, its probabilities on every validation row (None without any) and the number
    of training rows it learned from."""
    data, budget = rows.data, rows.data.budget
    window = budget.window_rows()
    validation = validation_subsample(data, rows.val, budget, seed)
    used = len(rows.train)
    if kind == "logreg":
        head = StreamedLogreg(head.C, head.class_weight, seed).fit_stream(
            data, rows.train, validation, window
        )
    elif kind == "mlp":
        head.fit_stream(data, rows.train, validation, window)
    else:
        subsample = training_subsample(data, rows.train, budget.subsample_rows(kind), seed)
        used = len(subsample)
        if used < len(rows.train):
            log.info("%s: trained on a stratified subsample of %s of the %s training rows "
                     "(what fits --memory-budget %s; knn, rf and svm hold every row at once)",
                     kind, f"{used:,}", f"{len(rows.train):,}",
                     shown(budget.total))  # fmt: skip
        head.fit(data.features(subsample), data.y[subsample], validation=validation)
    probabilities = None
    if len(rows.val):
        probabilities = streamed_probabilities(head, data, rows.val, window)
    return head, probabilities, used


def _select(kind, rows, given, class_weight, seed, mlp_options) -> Selection | None:
    """The cross-validation, or None (and a line why) when the folds cannot be made."""
    if not rows.folds:
        counts = np.bincount(rows.data.y[rows.train])
        log.info("%s: no cross-validation: a class has %d training image(s), and it takes 2; "
                 "the hyperparameters are %s", kind, counts[counts > 0].min(),
                 "the ones given and the defaults" if given else "the defaults")  # fmt: skip
        return None
    settings = {k: v for k, v in mlp_options.items() if k != "tensorboard"}
    data, folds, covered = rows.cross_validation
    selection = select_hyperparameters(
        kind,
        data.X,
        data.y,
        folds,
        rows.fold_images,
        given,
        class_weight,
        seed,
        {**settings, "log_epochs": False},
    )
    if covered is not None:  # the store's row numbers, for the report
        selection.held_out = covered[selection.held_out]
    subsample = ""
    if rows.fold_images < rows.train_images:  # bounded time: see CV_MAX_ROWS
        subsample = (f"; on a stratified subsample of {rows.fold_images:,} of the "
                     f"{rows.train_images:,} training images")  # fmt: skip
    log.info("%s (%.1f s%s)", selection.line(), selection.seconds, subsample)
    return selection


def best_candidate(candidates: list[Candidate]) -> Candidate:
    """The best cross-validated score (validation accuracy where there is none), ties to
    the lower cross-validated log-loss, then to the first in HEAD_KINDS' order."""

    def order(index: int) -> tuple:
        candidate = candidates[index]
        if candidate.selection is None:
            score = candidate.metrics["accuracy"] if candidate.metrics else -1.0
            return rank(score, None, index)
        return rank(candidate.selection.score, candidate.selection.log_loss, index)

    return candidates[min(range(len(candidates)), key=order)]
