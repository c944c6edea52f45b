"""The Keras MLP head: Dense(hidden, relu) -> Dropout -> Dense(classes, softmax), trained
with early stopping on the validation split, saved as ONNX (tf2onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.errors import HeadstartError
from ..extractor.settings import check_counts, check_dropout, check_training
from ..extractor.tensorflow_needed import import_keras, require_tensorflow
from .callbacks import epoch_logger, training_callbacks
from .keras_onnx import save_keras_as_onnx
from .kinds import MLP_KINDS
from .sklearn_heads import ONNX_INPUT

MLP_PURPOSE = "training the MLP head (--head mlp)"


def check_mlp_options(
    *,
    epochs=100,
    patience=5,
    hidden=256,
    dropout=0.5,
    lr=1e-3,
    batch_size=32,
    seed=0,
    tensorboard=False,
) -> None:
    """The MLP head's settings, checked before any work (a SettingError names the first
    one out of its range; train checks --val-split, which may be 0 here)."""
    check_training(
        epochs=epochs, patience=patience, lr=lr, batch_size=batch_size, val_split=None, seed=seed
    )
    check_counts({"--hidden": hidden})
    check_dropout(dropout)
    require_tensorflow(MLP_PURPOSE)


class MLPHead:
    kinds = MLP_KINDS

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.5,
        lr: float = 1e-3,
        epochs: int = 100,
        patience: int = 5,
        batch_size: int = 32,
        seed: int = 0,
        folder: Path | None = None,
        tensorboard: bool = False,
        class_weight: str | None = None,
        log_epochs: bool = True,
    ):
        self.hidden, self.dropout, self.lr = hidden, dropout, lr
        self.epochs, self.patience, self.batch_size, self.seed = epochs, patience, batch_size, seed
        self.folder, self.tensorboard, self.class_weight = folder, tensorboard, class_weight
        self.log_epochs = log_epochs

    def hyperparameters(self) -> dict[str, Any]:
        names = ("hidden", "dropout", "lr", "epochs", "patience", "batch_size", "class_weight")
        return {name: getattr(self, name) for name in (*names, "seed")}

    def fit(self, X: np.ndarray, y: np.ndarray, validation=None) -> MLPHead:
        """Train; with `validation` (X_val, y_val), stop early and keep the best weights
        (`best_epoch_`), else train `epochs` epochs."""
        mean, scale = X.mean(axis=0), X.std(axis=0)
        return self._train(lambda standardize: (standardize(X), y), y, validation, mean, scale)

    def fit_stream(self, data, rows: np.ndarray, validation, window_rows: int) -> MLPHead:
        """As fit, on the training `rows` of a store streamed from disk (heads.store_rows):
        a pass standardizes, then each epoch reads the parts in a new random order, a window
        of about `window_rows` rows at a time, shuffled within the window."""
        from .streamed import standardization

        scaler = standardization(data, rows, window_rows)
        mean, scale = scaler.mean_, scaler.scale_
        y_all = data.y

        def batches(standardize):
            import tensorflow as tf

            epochs = iter(range(1, 1 << 30))

            def blocks():
                seed = self.seed * 1_000_003 + next(epochs)  # another order each epoch
                try:
                    for chosen, X in data.store_rows.windows(rows, window_rows, seed):
                        for start in range(0, len(chosen), 4096):
                            block = slice(start, start + 4096)
                            yield standardize(X[block]), y_all[chosen[block]]
                except HeadstartError as error:  # TensorFlow would wrap it in its own
                    self._stream_error = error
                    raise

            signature = (
                tf.TensorSpec((None, data.dim), tf.float32),
                tf.TensorSpec((None,), tf.int64),
            )
            dataset = tf.data.Dataset.from_generator(blocks, output_signature=signature)
            dataset = dataset.unbatch().batch(self.batch_size)
            # the batches an epoch holds, told: Keras then ends each epoch without a warning
            steps = -(-len(rows) // self.batch_size)
            return (dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2),)

        return self._train(batches, y_all[rows], validation, mean, scale)

    def _train(self, inputs, y: np.ndarray, validation, mean, scale) -> MLPHead:
        """`inputs(standardize)`: fit's (X, y), or a (dataset,) of batches."""
        keras = import_keras(MLP_PURPOSE)
        keras.utils.set_random_seed(self.seed)
        self.n_classes_ = int(y.max()) + 1
        self.mean_, self.scale_ = mean.astype(np.float32), scale.astype(np.float32)
        self.scale_[self.scale_ == 0] = 1.0

        def standardize(features):
            return ((features - self.mean_) / self.scale_).astype(np.float32, copy=False)

        if validation is not None:
            validation = (standardize(validation[0]), validation[1])
        dim = len(self.mean_)
        self.model_ = build_mlp(dim, self.n_classes_, self.hidden, self.dropout)
        self.model_.compile(
            optimizer=keras.optimizers.Adam(self.lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        folder = None if self.folder is None else Path(self.folder)
        callbacks = training_callbacks(
            folder, self.patience, self.tensorboard, validated=validation is not None
        )
        if self.log_epochs:
            callbacks.append(epoch_logger(self.epochs))  # one line per epoch, as train-cnn
        given = inputs(standardize)
        self._stream_error = None
        try:
            history = self.model_.fit(
                *given,
                validation_data=validation,
                epochs=self.epochs,
                # a dataset is batched and shuffled already
                **({"batch_size": self.batch_size} if len(given) == 2 else {"shuffle": False}),
                class_weight=balanced_weights(y) if self.class_weight == "balanced" else None,
                callbacks=callbacks,
                verbose=0,
            )
        except Exception:
            if self._stream_error is not None:  # the store's own error, as the user reads it
                raise self._stream_error from None
            raise
        _fold_standardization(self.model_, self.mean_, self.scale_)
        self.history_ = history.history
        self.epochs_run_ = len(history.history["loss"])
        self.best_epoch_ = None
        if validation is not None:  # the epoch whose weights EarlyStopping restored
            losses = np.nan_to_num(history.history["val_loss"], nan=np.inf)
            self.best_epoch_ = int(np.argmin(losses)) + 1
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("fit the head before predicting")
        # eagerly, a block at a time: Keras' predict traces a new function per model, which
        # cross-validation's models would each pay for (and TensorFlow warn about)
        blocks = [
            np.asarray(self.model_(X[start : start + 4096], training=False))
            for start in range(0, len(X), 4096)
        ]
        return np.concatenate(blocks or [np.zeros((0, self.n_classes_))]).astype(np.float32)

    def save(self, folder: Path, dim: int) -> Path:
        """Write folder/model.onnx (raw features in, probabilities out); returns its path."""
        return save_keras_as_onnx(
            self.model_, (None, dim), ONNX_INPUT, "probabilities", Path(folder) / "model.onnx"
        )


def balanced_weights(y: np.ndarray) -> dict[int, float]:
    """scikit-learn's class_weight="balanced" for Keras: n / (classes * count of the class)."""
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    return {int(c): float(len(y) / (len(present) * counts[c])) for c in present}


def build_mlp(dim: int, classes: int, hidden: int, dropout: float):
    """Dense(hidden, relu) -> Dropout -> Dense(classes, softmax)."""
    import keras

    features = keras.Input((dim,), name=ONNX_INPUT)
    hidden_units = keras.layers.Dense(hidden, activation="relu", name="hidden")(features)
    dropped = keras.layers.Dropout(dropout)(hidden_units)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="probabilities")
    return keras.Model(features, probabilities(dropped), name="mlp_head")


def _fold_standardization(model, mean: np.ndarray, scale: np.ndarray) -> None:
    """Training saw (x - mean) / scale; fold that into the first Dense layer so the saved
    model takes raw features: W' = W / scale, b' = b - (mean / scale) @ W. Standardizing
    makes the head indifferent to the features' scale (random weights give ~1e-4)."""
    layer = model.get_layer("hidden")
    weights, bias = layer.get_weights()
    layer.set_weights([weights / scale[:, None], bias - (mean / scale) @ weights])
