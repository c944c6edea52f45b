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
    """One of the scikit-learn classifiers, on float32 features."""

    kinds = SKLEARN_KINDS

    def __init__(
        self,
        kind: str = "logreg",
        seed: int = 0,
        neighbors: int = 5,
        max_trees: int = 500,
        patience: int = 3,
    ):
        self.kind, self.seed, self.neighbors = kind, seed, neighbors
        self.max_trees, self.patience = max_trees, patience

    # The settings each kind uses; the others are not recorded (they did nothing)
    _USED = {
        "logreg": ("seed",),
        "svm": ("seed",),
        "knn": ("neighbors",),
        "rf": ("seed", "max_trees", "patience"),
    }

    def hyperparameters(self) -> dict[str, Any]:
        """What this head was trained with, as fitted (knn's neighbours after clipping to
        the training images, svm's calibration folds, rf's trees grown)."""
        settings = {name: getattr(self, name) for name in self._USED[self.kind]}
        estimator = getattr(self, "model_", None) or self._make_estimator()
        if self.kind == "knn" and hasattr(self, "model_"):
            settings["neighbors"] = int(self.model_.n_neighbors)
        if self.kind == "svm" and hasattr(self, "model_"):
            settings["calibration_folds"] = int(self.model_[-1].cv)
        if hasattr(self, "n_estimators_"):
            settings["trees"] = int(self.n_estimators_)
        return {"kind": self.kind, **settings, "estimator": repr(estimator)}

    def fit(self, X: np.ndarray, y: np.ndarray, validation=None) -> SklearnHead:
        """`validation` (X_val, y_val): heads that can stop early (rf) stop on it."""
        self.model_ = self._make_estimator()
        if self.kind == "rf" and validation is not None:
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
            self.model_.fit(X, y)
        self.n_classes_ = int(y.max()) + 1
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("fit the head before predicting")
        return self.model_.predict_proba(X).astype(np.float32)

    def save(self, folder: Path, dim: int) -> Path:
        """Write folder/model.onnx; returns its path."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        classifier = self.model_.steps[-1][1] if hasattr(self.model_, "steps") else self.model_
        with warnings.catch_warnings():  # skl2onnx reads SVC attributes sklearn 1.9 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            onnx_model = convert_sklearn(
                self.model_,
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
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        if self.kind == "svm":  # probabilities by Platt scaling (SVC(probability=True) is
            # deprecated in scikit-learn 1.9; this is its replacement, and skl2onnx converts it)
            calibrated = CalibratedClassifierCV(SVC(random_state=self.seed), ensemble=False)
            return make_pipeline(StandardScaler(), calibrated)
        if self.kind == "knn":
            return KNeighborsClassifier(n_neighbors=self.neighbors)
        if self.kind == "rf":
            return RandomForestClassifier(
                n_estimators=25, warm_start=True, random_state=self.seed, n_jobs=-1
            )
        raise ValueError(f"unknown sklearn head {self.kind!r}")


def _grow_forest_until_no_gain(forest, X, y, validation, max_trees: int, patience: int) -> int:
    """Add trees 25 at a time while validation log-loss improves; keep the best size."""
    from sklearn.metrics import log_loss

    X_val, y_val = validation
    labels = np.arange(int(max(y.max(), y_val.max())) + 1)
    best_loss, best_size, stale = np.inf, 25, 0
    for size in range(25, max_trees + 1, 25):
        forest.set_params(n_estimators=size)
        forest.fit(X, y)
        loss = log_loss(y_val, forest.predict_proba(X_val), labels=labels)
        if loss < best_loss - 1e-4:
            best_loss, best_size, stale = loss, size, 0
        else:
            stale += 1
            if stale >= patience:
                break
    forest.estimators_ = forest.estimators_[:best_size]  # the trees grown up to the best
    forest.set_params(n_estimators=best_size)
    return best_size
