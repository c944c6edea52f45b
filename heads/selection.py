"""Choosing a head's hyperparameters by cross-validation on its training images.

Every point of a small grid (GRIDS; a value given on the command line replaces its axis) is
scored on the out-of-fold predictions of the same folds: accuracy (balanced accuracy when
classes are weighted), ties going to the lower log-loss, then to the earlier point (grids
list the more regularized models first). The folds are by image (see dataset.image_folds).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

log = logging.getLogger("headstart")

# The grids searched. svm's gamma is a multiple of scikit-learn's "scale", 1 / (D * variance):
# on standardized features, one over the number of informative dimensions.
GRIDS: dict[str, dict[str, tuple]] = {
    "logreg": {"C": (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)},
    "svm": {"C": (0.1, 1.0, 10.0, 100.0), "gamma": (0.1, 0.3, 1.0, 3.0)},
    "knn": {"neighbors": (21, 15, 11, 7, 5, 3, 1)},
    "rf": {"max_depth": (8, None), "min_samples_leaf": (5, 1)},
    "mlp": {},
}
CV_TREES = 50  # trees per forest while choosing rf's depth and leaf size
CV_MAX_ROWS = 2000  # the cross-validation runs on a stratified subsample of at most these


@dataclass
class Selection:
    """What cross-validation found for one kind of head."""

    kind: str
    chosen: dict[str, Any]  # the hyperparameters to train with (given ones included)
    given: dict[str, Any]
    folds: int
    images: int  # the training images the folds were drawn from
    scoring: str  # "accuracy" or "balanced_accuracy"
    score: float  # the chosen point's out-of-fold score
    log_loss: float | None  # the chosen point's out-of-fold log-loss (None for svm)
    table: list[dict[str, Any]]  # every point searched, with its scores
    seconds: float
    held_out: np.ndarray = field(repr=False)  # the out-of-fold rows, in order, for a report
    y_true: np.ndarray = field(repr=False)  # their classes
    probabilities: np.ndarray = field(repr=False)  # the chosen point's out-of-fold output
    best_epochs: list[int] | None = None  # mlp: each fold's best epoch

    @property
    def searched(self) -> bool:
        return len(self.table) > 1

    def record(self) -> dict[str, Any]:
        """What head.json keeps of it."""
        return {
            "method": f"{self.folds}-fold cross-validation by image on {self.images} "
            "training images",
            "scoring": self.scoring,
            "given": self.given,
            "chosen": self.chosen,
            f"cv_{self.scoring}": self.score,
            "cv_log_loss": self.log_loss,
            "grid": self.table,
            **({"best_epochs": self.best_epochs} if self.best_epochs else {}),
        }

    def line(self) -> str:
        """One line for the terminal: what was chosen among what, and its score."""
        chosen = ", ".join(f"{name} {_shown(value)}" for name, value in self.chosen.items())
        scored = f"cross-validated {self.scoring.replace('_', ' ')} {self.score:.3f}"
        if not self.searched:
            return f"{self.kind}: {chosen or 'its settings'}: {scored} ({self.folds} folds)"
        varied = [name for name in GRIDS[self.kind] if name not in self.given]
        among = (
            f"{len(self.table)} values of {varied[0]}"
            if len(varied) == 1
            else f"{len(self.table)} combinations of {', '.join(varied[:-1])} and {varied[-1]}"
        )
        return f"{self.kind}: {chosen}, chosen among {among} by {self.folds}-fold " + (
            f"cross-validation ({scored})"
        )


def grid_for(kind: str, given: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point to try: the grid's axes, each given value fixing its own axis."""
    axes = {
        name: (given[name],) if name in given else values for name, values in GRIDS[kind].items()
    }
    return [dict(zip(axes, values)) for values in product(*axes.values())]


def select_hyperparameters(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    images: int,
    given: dict[str, Any],
    class_weight: str | None,
    seed: int,
    mlp_options: dict[str, Any] | None = None,
) -> Selection:
    """Score every grid point of `kind` on `folds` (row indices into X, y) and choose."""
    started = time.monotonic()
    classes = int(y.max()) + 1
    points = grid_for(kind, given)
    scorer = _SCORERS[kind]
    if kind == "svm" and "gamma" not in given:  # the grid's are multiples of "scale"
        unit = _scale_gamma(X[np.unique(np.concatenate([train for train, _ in folds]))])
        points = [dict(point, gamma=float(f"{point['gamma'] * unit:.4g}")) for point in points]
    context = _Context(classes, class_weight, seed, mlp_options or {})
    outputs = [[] for _ in points]
    best_epochs = []
    for number, fold in enumerate(_run_folds(kind, scorer, points, X, y, folds, context), 1):
        for gathered, output in zip(outputs, fold["outputs"]):
            gathered.append(output)
        best_epochs += fold.get("best_epochs", [])
        if kind == "mlp":  # the slow one: a line per fold
            log.info("mlp: cross-validation fold %d/%d: best epoch %d (%.1f s so far)",
                     number, len(folds), best_epochs[-1], time.monotonic() - started)  # fmt: skip
    held_out_rows = np.concatenate([held_out for _, held_out in folds])
    y_true = y[held_out_rows]
    scoring = "balanced_accuracy" if class_weight == "balanced" else "accuracy"
    table = []
    for point, gathered in zip(points, outputs):
        probabilities = np.concatenate(gathered)
        table.append({**point, **_scores(y_true, probabilities, classes, scoring, kind)})
    best = min(
        range(len(points)), key=lambda i: rank(table[i][scoring], table[i].get("log_loss"), i)
    )
    return Selection(
        kind=kind,
        chosen=points[best],
        given=dict(given),
        folds=len(folds),
        images=images,
        scoring=scoring,
        score=table[best][scoring],
        log_loss=table[best].get("log_loss"),
        table=table,
        seconds=time.monotonic() - started,
        held_out=held_out_rows,
        y_true=y_true,
        probabilities=np.concatenate(outputs[best]),
        best_epochs=best_epochs or None,
    )


def _run_folds(kind, scorer, points, X, y, folds, context):
    """Each fold's scores, in order. scikit-learn's folds run side by side, one per core,
    each on one BLAS thread: on these small matrices BLAS's own threads cost more than they
    give (a fold of logistic regressions on 1,000 images of 2,048 features: 3x faster on
    this 2-core machine). Keras' folds run one after the other (TensorFlow has its threads)."""

    def score(fold):
        train, held_out = fold
        return scorer(points, X[train], y[train], X[held_out], y[held_out], context)

    if kind == "mlp":
        yield from map(score, folds)
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    workers = min(len(folds), os.cpu_count() or 1)
    with quiet_fits(), threadpool_limits(limits=1, user_api="blas"):
        with ThreadPoolExecutor(workers) as pool:
            yield from pool.map(score, folds)


@contextmanager
def quiet_fits():
    """scikit-learn's advice that does not apply here, off the terminal: many classes of
    few images are what a fold of a small store holds."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        yield


@dataclass(frozen=True)
class _Context:
    """What every fold's scorer needs besides the fold."""

    classes: int
    class_weight: str | None
    seed: int
    mlp_settings: dict[str, Any]


def rank(score: float, log_loss: float | None, index: int) -> tuple:
    """The order of the choice, best first: the higher score, then the lower log-loss (none,
    as svm's votes give: last), then the earlier."""
    loss = np.inf if log_loss is None else round(log_loss, 9)
    return (-round(score, 9), loss, index)


def _scores(y_true, output, classes: int, scoring: str, kind: str) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, log_loss

    predicted = output.argmax(axis=1)
    scores = {scoring: float(
        balanced_accuracy_score(y_true, predicted) if scoring == "balanced_accuracy"
        else (predicted == y_true).mean()
    )}  # fmt: skip
    if kind != "svm":  # svm's folds give votes, not probabilities
        # float32 features give probabilities summing to 1 within 1e-7, not float64's eps
        output = output / output.sum(axis=1, keepdims=True)
        scores["log_loss"] = float(log_loss(y_true, output, labels=np.arange(classes)))
    return scores


def _scale_gamma(X: np.ndarray) -> float:
    """scikit-learn's gamma="scale" once X is standardized: one over the number of
    dimensions that vary (a constant one stays 0)."""
    return 1.0 / max(1, int((X.std(axis=0) > 0).sum()))


def _shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _standardized(X_train, X_held_out):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_held_out)


def _every_class(model, X, classes: int) -> np.ndarray:
    """predict_proba with one column per class, also for a class a fold lacks."""
    probabilities = np.zeros((len(X), classes))
    probabilities[:, model.classes_] = model.predict_proba(X)
    return probabilities


def _logreg(points, X, y, X_out, _y_out, context: _Context):
    """Warm-started along increasing C: each fit starts from the last (a regularization path)."""
    from sklearn.linear_model import LogisticRegression

    X, X_out = _standardized(X, X_out)
    model = LogisticRegression(max_iter=2000, warm_start=True, class_weight=context.class_weight)
    outputs = [None] * len(points)
    for index in sorted(range(len(points)), key=lambda i: points[i]["C"]):
        model.set_params(C=points[index]["C"]).fit(X, y)
        outputs[index] = _every_class(model, X_out, context.classes)
    return {"outputs": outputs}


def _svm(points, X, y, X_out, _y_out, context: _Context):
    """The RBF kernel from squared distances computed once per fold, for every gamma and C
    (scikit-learn's kernel="precomputed"): the same model as SVC(gamma=...), many times
    faster than recomputing distances for every point."""
    from sklearn.svm import SVC

    X, X_out = _standardized(X, X_out)
    inside, across = _squared_distances(X, X), _squared_distances(X_out, X)
    outputs = [None] * len(points)
    for gamma in dict.fromkeys(point["gamma"] for point in points):  # each kernel once
        train_kernel, out_kernel = np.exp(-gamma * inside), np.exp(-gamma * across)
        for index in (i for i, point in enumerate(points) if point["gamma"] == gamma):
            model = SVC(
                kernel="precomputed", C=points[index]["C"], class_weight=context.class_weight
            )
            votes = model.fit(train_kernel, y).predict(out_kernel)
            outputs[index] = np.eye(context.classes)[votes]
    return {"outputs": outputs}


def _squared_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A, B = A.astype(np.float64), B.astype(np.float64)
    squared = (A**2).sum(axis=1)[:, None] + (B**2).sum(axis=1)[None, :] - 2 * A @ B.T
    return np.maximum(squared, 0)


def _knn(points, X, y, X_out, _y_out, context: _Context):
    from sklearn.neighbors import KNeighborsClassifier

    outputs = []
    for point in points:
        model = KNeighborsClassifier(n_neighbors=min(point["neighbors"], len(y))).fit(X, y)
        outputs.append(_every_class(model, X_out, context.classes))
    return {"outputs": outputs}


def _rf(points, X, y, X_out, _y_out, context: _Context):
    from sklearn.ensemble import RandomForestClassifier

    outputs = []
    for point in points:
        model = RandomForestClassifier(
            CV_TREES,
            class_weight=context.class_weight,
            random_state=context.seed,
            n_jobs=1,  # the folds run side by side
            **point,
        )
        outputs.append(_every_class(model.fit(X, y), X_out, context.classes))
    return {"outputs": outputs}


def _mlp(points, X, y, X_out, y_out, context: _Context):
    """One early-stopped training per fold (on the fold's held-out images): its output and
    its best epoch, from which a final model on every image takes its epoch count."""
    from .mlp import MLPHead

    # a new model per fold: TensorFlow warns of "retracing", which is expected here
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    head = MLPHead(seed=context.seed, class_weight=context.class_weight, **context.mlp_settings)
    head.fit(X, y, validation=(X_out, y_out))
    return {"outputs": [head.predict_proba(X_out)], "best_epochs": [head.best_epoch_]}


_SCORERS = {"logreg": _logreg, "svm": _svm, "knn": _knn, "rf": _rf, "mlp": _mlp}
