"""Training on a store bigger than the memory budget (heads.memory): the features stay on
disk and are read a window of parts at a time (heads.store_rows).

- logreg learns incrementally: a pass standardizes, then stochastic gradient descent
  (scikit-learn's SGDClassifier, logistic loss, the L2 penalty of the chosen C) runs over
  the parts in a new random order each pass, stopping when the validation accuracy has not
  improved for two passes and keeping the best pass (ties: the lower log-loss);
- mlp trains from a tf.data pipeline over the same windows (MLPHead.fit_stream);
- knn, rf and svm need every row at once: they train on a stratified subsample of the
  training images that fits the budget, and say how many rows they used.

Validation is scored on every validation image, streamed; early stopping (and rf's forest
size) on a stratified subsample of them that fits the budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .dataset import LabelledFeatures, stratified_subsample
from .memory import MemoryBudget
from .sklearn_heads import save_sklearn_onnx

log = logging.getLogger("headstart")

MAX_PASSES, PATIENCE = 20, 2  # logreg's passes over the training rows
NO_VALIDATION_PASSES = 8  # logreg's passes with --val-split 0 (nothing to stop on)


def standardization(store_rows, rows: np.ndarray, window_rows: int):
    """A StandardScaler fitted on `rows` in one streamed pass (mean_, scale_: the features'
    mean and standard deviation, 1 where it is 0)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for _, X in store_rows.windows(rows, window_rows):
        scaler.partial_fit(X)
    return scaler


class StreamedLogreg:
    """Multiclass logistic regression (one-vs-rest, probabilities normalized) learned by
    stochastic gradient descent over a streamed store. C means what LogisticRegression's
    does: the penalty is 1 / (C * training rows) per row."""

    kind = "logreg"

    def __init__(self, C: float = 1.0, class_weight: str | None = None, seed: int = 0):
        self.C, self.class_weight, self.seed = C, class_weight, seed

    def hyperparameters(self) -> dict[str, Any]:
        estimator = getattr(self, "model_", None)
        return {
            "kind": "logreg",
            "C": self.C,
            "class_weight": self.class_weight,
            "trained_by": "stochastic gradient descent over the streamed store "
            "(one-vs-rest logistic loss)",
            "passes": getattr(self, "passes_", None),
            "best_pass": getattr(self, "best_pass_", None),
            "estimator": repr(estimator) if estimator is not None else "SGDClassifier",
        }

    def fit_stream(
        self, data: LabelledFeatures, rows: np.ndarray, validation, window_rows: int
    ) -> StreamedLogreg:
        from sklearn.linear_model import SGDClassifier
        from sklearn.metrics import log_loss
        from sklearn.pipeline import make_pipeline

        y = data.y
        classes = np.arange(len(data.classes))
        scaler = standardization(data.store_rows, rows, window_rows)
        sgd = SGDClassifier(
            loss="log_loss",
            alpha=1.0 / (self.C * len(rows)),
            class_weight=_class_weights(y[rows], classes) if self.class_weight else None,
            random_state=self.seed,
        )
        X_val = None if validation is None else scaler.transform(validation[0])
        best = (-1.0, np.inf, None, 0)  # accuracy, log-loss, weights, pass
        passes = MAX_PASSES if validation is not None else NO_VALIDATION_PASSES
        for number in range(1, passes + 1):
            started = time.monotonic()
            for chosen, X in data.store_rows.windows(rows, window_rows, self.seed * 7919 + number):
                for start in range(0, len(chosen), 4096):
                    block = slice(start, start + 4096)
                    scaled = scaler.transform(X[block]).astype(np.float32, copy=False)
                    sgd.partial_fit(scaled, y[chosen[block]], classes=classes)
            self.passes_ = number
            if X_val is None:
                log.info("logreg: pass %d of %d (%.1f s)", number, passes,
                         time.monotonic() - started)  # fmt: skip
                continue
            probabilities = sgd.predict_proba(X_val)
            loss = log_loss(validation[1], probabilities, labels=classes)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == validation[1]))
            log.info("logreg: pass %d: validation log-loss %.4f, accuracy %.3f (%.1f s)",
                     number, loss, accuracy, time.monotonic() - started)  # fmt: skip
            # accuracy decides, log-loss breaks ties (as the cross-validation chooses)
            if (accuracy, -loss) > (best[0], -best[1]):
                best = (accuracy, loss, (sgd.coef_.copy(), sgd.intercept_.copy()), number)
            elif number - best[3] >= PATIENCE:
                break
        if best[2] is not None:  # the weights of the best pass
            sgd.coef_, sgd.intercept_ = best[2]
        self.best_pass_ = best[3] or self.passes_
        self.model_ = make_pipeline(scaler, sgd)
        self.n_classes_ = len(classes)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X).astype(np.float32)

    def save(self, folder, dim: int):
        return save_sklearn_onnx(self.model_, folder, dim)


def _class_weights(y: np.ndarray, classes: np.ndarray) -> dict[int, float]:
    """class_weight="balanced" as a dict (partial_fit cannot compute it from one window)."""
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    return {int(c): float(len(y) / (len(present) * counts[c])) for c in present}


def validation_subsample(data: LabelledFeatures, val: np.ndarray, budget: MemoryBudget, seed: int):
    """(X, y) of a stratified subsample of the validation rows that fits the budget (all of
    them when they fit), for early stopping; None without validation rows."""
    if len(val) == 0:
        return None
    chosen = val
    if len(val) > budget.validation_rows():
        chosen = stratified_subsample(val, data.y[val], budget.validation_rows(), 1, seed)
    return data.features(chosen), data.y[chosen]


def training_subsample(
    data: LabelledFeatures, train: np.ndarray, size: int, seed: int
) -> np.ndarray:
    """About `size` of the training rows: a stratified subsample of the images, each with
    every view it has among `train` (all of them when they fit)."""
    if len(train) <= size:
        return train
    views = data.view_numbers
    images = train[views[train] == 0]
    per_image = len(train) / max(1, len(images))
    kept = stratified_subsample(images, data.y[images], int(size / per_image), 1, seed)
    kept_paths = {data.paths[row] for row in kept}
    return np.asarray([row for row in train if data.paths[row] in kept_paths], dtype=int)


def streamed_probabilities(head, data: LabelledFeatures, rows: np.ndarray, window_rows: int):
    """The head's probabilities for `rows`, in their order, read a window at a time."""
    probabilities = np.zeros((len(rows), len(data.classes)), np.float32)
    order = np.argsort(rows)
    for chosen, X in data.store_rows.windows(rows, window_rows):
        probabilities[order[np.searchsorted(rows[order], chosen)]] = head.predict_proba(X)
    return probabilities
