"""scikit-learn heads: logreg, svm, knn, rf. Saved as ONNX (skl2onnx), never pickled.

Every head follows the scikit-learn contract: `__init__` stores parameters, `fit(X, y)`
returns self, learned attributes end in `_`, `predict_proba(X)`, plus `save(folder)`.
y holds class indices 0..K-1; the class names live in head.json.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.backbone import OPSET
from ..extractor.safe_files import OutputFolder
from .errors import TrainingDataError
from .kinds import SKLEARN_KINDS

ONNX_INPUT = "features"  # float32 (N, D) -> output "probabilities" float32 (N, K)


class SklearnHead:
    """One of the scikit-learn classifiers, on float32 features. Its hyperparameters (C,
    gamma, neighbors, max_depth, min_samples_leaf) are chosen by heads.selection unless given;
    gamma None is scikit-learn's "scale"."""

    kinds = SKLEARN_KINDS

    def __init__(
        self,
        kind: str = "logreg",
        seed: int = 0,
        C: float = 1.0,
        gamma: float | None = None,
        neighbors: int = 5,
        max_depth: int | None = None,
        min_samples_leaf: int = 1,
        class_weight: str | None = None,
        max_trees: int = 500,
        patience: int = 3,
    ):
        self.kind, self.seed, self.C, self.gamma, self.neighbors = kind, seed, C, gamma, neighbors
        self.max_depth, self.min_samples_leaf = max_depth, min_samples_leaf
        self.class_weight, self.max_trees, self.patience = class_weight, max_trees, patience

    # The settings each kind uses; the others are not recorded (they did nothing)
    _USED = {
        "logreg": ("C", "class_weight"),
        "svm": ("C", "gamma", "class_weight", "seed"),
        "knn": ("neighbors",),
        "rf": ("max_depth", "min_samples_leaf", "class_weight", "seed", "max_trees", "patience"),
    }

    def hyperparameters(self) -> dict[str, Any]:
        """What this head was trained with, as fitted (knn's neighbours after clipping to
        the training images, svm's calibration folds, rf's trees grown)."""
        settings = {name: getattr(self, name) for name in self._USED[self.kind]}
        if settings.get("gamma", 0) is None:
            settings["gamma"] = "scale"
        estimator = getattr(self, "model_", None) or self._make_estimator()
        if self.kind == "knn" and hasattr(self, "model_"):
            settings["neighbors"] = int(self.model_.n_neighbors)
        if self.kind == "svm" and hasattr(self, "model_"):
            settings["calibration_folds"] = int(self.model_[-1].cv)
        if hasattr(self, "n_estimators_"):
            settings["trees"] = int(self.n_estimators_)
            settings["trees_chosen_by"] = self.trees_chosen_by_
        return {"kind": self.kind, **settings, "estimator": repr(estimator)}

    def fit(self, X: np.ndarray, y: np.ndarray, validation=None) -> SklearnHead:
        """`validation` (X_val, y_val): heads that can stop early (rf) stop on it; without
        it, rf stops on its out-of-bag estimate."""
        from threadpoolctl import threadpool_limits

        # one BLAS thread: on a head's small matrices, more cost more (logreg 3x slower
        # with 2 threads on 1,000 images of 2,048 features)
        from .selection import quiet_fits

        with quiet_fits(), threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X, y, validation)

    def _fit(self, X: np.ndarray, y: np.ndarray, validation) -> SklearnHead:
        self.model_ = self._make_estimator()
        if self.kind == "rf":
            self.trees_chosen_by_ = "validation log-loss" if validation else "out-of-bag log-loss"
            self.n_estimators_ = _grow_forest_until_no_gain(
                self.model_, X, y, validation, self.max_trees, self.patience
            )
        else:
            if self.kind == "knn":
                self.model_.set_params(n_neighbors=min(self.neighbors, len(y)))
            if self.kind == "svm":  # Platt scaling by cross-validation: folds need members
                smallest = int(np.bincount(y).min())
                if smallest < 2:
                    raise TrainingDataError(
                        "the svm head calibrates its probabilities by cross-validation, which "
                        "needs at least 2 training images of every class, and one class has "
                        f"{smallest}; add images, lower --val-split, or choose another --head"
                    )
                self.model_.set_params(calibratedclassifiercv__cv=min(5, smallest))
            self.model_.fit(X, y, **self._svm_class_weights(y))
        self.n_classes_ = int(y.max()) + 1
        return self

    def _svm_class_weights(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """svm's class weights as sample weights, which the Platt scaling sees too: with
        SVC's class_weight, the calibration learns the classes' shares back and the
        minority's recall gains little."""
        if self.kind != "svm" or self.class_weight != "balanced":
            return {}
        from sklearn.utils.class_weight import compute_sample_weight

        return {"calibratedclassifiercv__sample_weight": compute_sample_weight("balanced", y)}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("fit the head before predicting")
        return self.model_.predict_proba(X).astype(np.float32)

    def save(self, folder: Path, dim: int) -> Path:
        """Write folder/model.onnx: float32 features in, a plain probability tensor out;
        returns its path."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        model = self.model_
        classifier = model.steps[-1][1] if hasattr(model, "steps") else model
        with warnings.catch_warnings():  # skl2onnx reads SVC attributes sklearn 1.9 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            onnx_model = convert_sklearn(
                model,
                initial_types=[(ONNX_INPUT, FloatTensorType([None, dim]))],
                options={id(classifier): {"zipmap": False}},  # a plain probability tensor
                target_opset={"": OPSET, "ai.onnx.ml": 3},
            )
        with OutputFolder(folder, create=False) as target:
            return target.write_bytes("model.onnx", onnx_model.SerializeToString())

    def _make_estimator(self):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        if self.kind == "logreg":  # multinomial (the default for several classes with lbfgs)
            classifier = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=2000)
            return make_pipeline(StandardScaler(), classifier)
        if self.kind == "svm":  # probabilities by Platt scaling (SVC(probability=True) is
            # deprecated in scikit-learn 1.9; this is its replacement, and skl2onnx converts it)
            svc = SVC(  # class weights: as sample weights (see _svm_class_weights)
                C=self.C,
                gamma="scale" if self.gamma is None else self.gamma,
                random_state=self.seed,
            )
            return make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, ensemble=False))
        if self.kind == "knn":
            return KNeighborsClassifier(n_neighbors=self.neighbors)
        if self.kind == "rf":
            return RandomForestClassifier(
                n_estimators=25,
                max_depth=self.max_depth,
                min_samples_leaf=self.min_samples_leaf,
                class_weight=self.class_weight,
                warm_start=True,
                random_state=self.seed,
                n_jobs=-1,
            )
        raise ValueError(f"unknown sklearn head {self.kind!r}")


def _grow_forest_until_no_gain(forest, X, y, validation, max_trees: int, patience: int) -> int:
    """Add trees 25 at a time while the log-loss on `validation` (X_val, y_val) improves,
    or without it the out-of-bag log-loss (each training image scored by the trees that
    did not see it); keep the best size."""
    from sklearn.metrics import log_loss

    labels = np.arange(int(y.max()) + 1)
    if validation is not None:
        X_val, y_val = validation
        labels = np.arange(int(max(y.max(), y_val.max())) + 1)
    else:
        forest.set_params(oob_score=True)
    best_loss, best_size, stale = np.inf, 25, 0
    for size in range(25, max_trees + 1, 25):
        forest.set_params(n_estimators=size)
        with warnings.catch_warnings():  # a few images no tree left out, with few trees
            warnings.simplefilter("ignore", UserWarning)
            forest.fit(X, y)
        if validation is not None:
            loss = log_loss(y_val, forest.predict_proba(X_val), labels=labels)
        else:
            oob = forest.oob_decision_function_  # rows of class weights: made to sum to 1
            scored = np.isfinite(oob).all(axis=1) & (oob.sum(axis=1) > 0)
            oob = oob[scored] / oob[scored].sum(axis=1, keepdims=True)
            loss = log_loss(y[scored], oob, labels=labels)
        if loss < best_loss - 1e-4:
            best_loss, best_size, stale = loss, size, 0
        else:
            stale += 1
            if stale >= patience:
                break
    forest.estimators_ = forest.estimators_[:best_size]  # the trees grown up to the best
    forest.set_params(n_estimators=best_size, oob_score=False)
    return best_size
