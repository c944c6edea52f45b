"""Training on a store bigger than the memory budget (heads.memory): the features stay on
disk and are read a window of parts at a time (heads.store_rows).

- logreg learns incrementally: a pass standardizes, then mini-batch gradient descent on
  the same multinomial logistic loss and L2 penalty of the chosen C as the in-memory head
  runs over the parts in a new random order each pass, stopping once two passes have not
  lowered the validation log-loss by MIN_GAIN and keeping the best pass;
- mlp trains from a tf.data pipeline over the same windows (MLPHead.fit_stream);
- knn, rf and svm need every row at once: they train on a stratified subsample of the
  training images that fits the budget, and say how many rows they used.

Validation is scored on every validation image, streamed; early stopping (and rf's forest
size) on a stratified subsample of them that fits the budget.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from .dataset import LabelledFeatures, stratified_subsample
from .memory import MemoryBudget
from .mlp import balanced_weights
from .sklearn_heads import ONNX_INPUT

log = logging.getLogger("headstart")

# logreg's passes over the training rows: at most MAX_PASSES, ending once PATIENCE passes
# have not lowered the validation log-loss by MIN_GAIN (relative)
MAX_PASSES, PATIENCE, MIN_GAIN = 30, 2, 0.001
NO_VALIDATION_PASSES = 8  # logreg's passes with --val-split 0 (nothing to stop on)


def standardization(data: LabelledFeatures, rows: np.ndarray, window_rows: int):
    """A StandardScaler fitted on `rows` in one streamed pass (mean_, scale_: the features'
    mean and standard deviation, 1 where it is 0); once for every kind that asks."""
    from sklearn.preprocessing import StandardScaler

    def fitted():
        scaler = StandardScaler()
        passing = data.store_rows.windows(rows, window_rows, progress="standardizing the features")
        for _, X in passing:
            scaler.partial_fit(X)
        return scaler

    return _made_once(data, ("standardization", _key(rows)), fitted)


def _made_once(data: LabelledFeatures, key: tuple, make):
    """What a pass over the store made, kept in `data` for the next kind (--head auto)."""
    if key not in data.passes:
        data.passes[key] = make()
    return data.passes[key]


def _key(rows: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


class StreamedLogreg:
    """Multinomial logistic regression, as the in-memory logreg head (softmax over the
    classes, L2 penalty of C: 1 / (C * training rows) per row, features standardized),
    learned by mini-batch gradient descent (Adam) over a streamed store. Saved as an ONNX
    graph of three nodes: MatMul, Add, Softmax, the standardization folded in."""

    kind = "logreg"
    batch_size, learning_rate = 256, 1e-3

    def __init__(self, C: float = 1.0, class_weight: str | None = None, seed: int = 0):
        self.C, self.class_weight, self.seed = C, class_weight, seed

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "kind": "logreg",
            "C": self.C,
            "class_weight": self.class_weight,
            "trained_by": "mini-batch gradient descent (Adam, learning rate "
            f"{self.learning_rate}, batches of {self.batch_size}) on the multinomial logistic "
            "loss, over the streamed store",
            "passes": getattr(self, "passes_", None),
            "best_pass": getattr(self, "best_pass_", None),
            "estimator": "softmax regression on standardized features",
        }

    def fit_stream(
        self, data: LabelledFeatures, rows: np.ndarray, validation, window_rows: int
    ) -> StreamedLogreg:
        from sklearn.metrics import log_loss

        y, classes = data.y, np.arange(len(data.classes))
        scaler = standardization(data, rows, window_rows)
        self.mean_ = scaler.mean_.astype(np.float32)
        self.scale_ = scaler.scale_.astype(np.float32)
        self.coef_ = np.zeros((data.dim, len(classes)), np.float32)
        self.intercept_ = np.zeros(len(classes), np.float32)
        weights = np.ones(len(classes), np.float32)
        if self.class_weight:
            for label, weight in balanced_weights(y[rows]).items():
                weights[label] = weight
        adam = _Adam([self.coef_, self.intercept_], self.learning_rate)
        penalty = 1.0 / (self.C * len(rows))
        best = (-1.0, np.inf, None, 0)  # accuracy, log-loss, weights, pass
        passes = MAX_PASSES if validation is not None else NO_VALIDATION_PASSES
        for number in range(1, passes + 1):
            started = time.monotonic()
            seed = self.seed * 7919 + number
            for chosen, X in data.store_rows.windows(
                rows, window_rows, seed, progress=f"logreg: pass {number}"
            ):
                for start in range(0, len(chosen), self.batch_size):
                    batch = slice(start, start + self.batch_size)
                    features = (X[batch] - self.mean_) / self.scale_
                    labels = y[chosen[batch]]
                    gradient = _softmax(features @ self.coef_ + self.intercept_)
                    gradient[np.arange(len(labels)), labels] -= 1.0
                    gradient *= (weights[labels] / len(labels))[:, None]
                    adam.step([features.T @ gradient + penalty * self.coef_, gradient.sum(0)])
            self.passes_ = number
            if validation is None:
                log.info("logreg: pass %d of %d (%.1f s)", number, passes,
                         time.monotonic() - started)  # fmt: skip
                continue
            probabilities = self.predict_proba(validation[0])
            loss = log_loss(validation[1], probabilities, labels=classes)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == validation[1]))
            log.info("logreg: pass %d: validation log-loss %.4f, accuracy %.3f (%.1f s)",
                     number, loss, accuracy, time.monotonic() - started)  # fmt: skip
            # the objective's own measure decides: the loss the in-memory head minimizes
            if loss < best[1] * (1 - MIN_GAIN):
                best = (accuracy, loss, (self.coef_.copy(), self.intercept_.copy()), number)
            elif number - best[3] >= PATIENCE:
                break
        if best[2] is not None:  # the weights of the best pass
            self.coef_, self.intercept_ = best[2]
        self.best_pass_ = best[3] or self.passes_
        self.n_classes_ = len(classes)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        features = (np.asarray(X, np.float32) - self.mean_) / self.scale_
        return _softmax(features @ self.coef_ + self.intercept_).astype(np.float32)

    def save(self, folder, dim: int):
        """model.onnx: features -> MatMul -> Add -> Softmax -> probabilities, the
        standardization folded into the weights."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from ..extractor.backbone import OPSET
        from ..extractor.safe_files import OutputFolder

        coef = (self.coef_ / self.scale_[:, None]).astype(np.float32)
        intercept = (self.intercept_ - (self.mean_ / self.scale_) @ self.coef_).astype(np.float32)
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", [ONNX_INPUT, "coef"], ["logits_unbiased"]),
                helper.make_node("Add", ["logits_unbiased", "intercept"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            ],
            "logreg_head",
            [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, [None, dim])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, None])],
            [
                numpy_helper.from_array(coef, "coef"),
                numpy_helper.from_array(intercept, "intercept"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8  # what opset 17 needs; ONNX Runtime may not read the newest
        onnx.checker.check_model(model)
        with OutputFolder(folder, create=False) as target:
            return target.write_bytes("model.onnx", model.SerializeToString())


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    return logits / logits.sum(axis=1, keepdims=True)


class _Adam:
    """Adam's update of `parameters` in place (Kingma and Ba's defaults)."""

    def __init__(self, parameters: list[np.ndarray], learning_rate: float):
        self.parameters, self.learning_rate, self.steps = parameters, learning_rate, 0
        self.first = [np.zeros_like(p) for p in parameters]
        self.second = [np.zeros_like(p) for p in parameters]

    def step(self, gradients: list[np.ndarray]) -> None:
        self.steps += 1
        beta1, beta2 = 0.9, 0.999
        correction = np.sqrt(1 - beta2**self.steps) / (1 - beta1**self.steps)
        for parameter, gradient, first, second in zip(
            self.parameters, gradients, self.first, self.second
        ):
            first += (1 - beta1) * (gradient - first)
            second += (1 - beta2) * (gradient * gradient - second)
            parameter -= self.learning_rate * correction * first / (np.sqrt(second) + 1e-8)


def validation_subsample(data: LabelledFeatures, val: np.ndarray, budget: MemoryBudget, seed: int):
    """(X, y) of a stratified subsample of the validation rows that fits the budget (all of
    them when they fit), for early stopping; None without validation rows."""
    if len(val) == 0:
        return None

    def read():
        chosen = val
        if len(val) > budget.validation_rows():
            chosen = stratified_subsample(val, data.y[val], budget.validation_rows(), 1, seed)
        return data.features(chosen), data.y[chosen]

    return _made_once(data, ("validation", _key(val), seed), read)


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
    for chosen, X in data.store_rows.windows(rows, window_rows, progress="validation"):
        probabilities[order[np.searchsorted(rows[order], chosen)]] = head.predict_proba(X)
    return probabilities
