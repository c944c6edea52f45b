"""The course's Keras callbacks, set up once for every Keras model headstart trains."""

from __future__ import annotations

from pathlib import Path


def training_callbacks(folder: Path, patience: int, tensorboard: bool) -> list:
    """EarlyStopping (restores the best weights), ModelCheckpoint (best), ReduceLROnPlateau,
    CSVLogger (report/history.csv), TerminateOnNaN, and TensorBoard (logs/) when asked."""
    import keras

    report = folder / "report"
    report.mkdir(parents=True, exist_ok=True)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            checkpoints / "best.weights.h5",
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, patience // 2), min_lr=1e-6
        ),
        keras.callbacks.CSVLogger(report / "history.csv"),
        keras.callbacks.TerminateOnNaN(),
    ]
    if tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(folder / "logs"), histogram_freq=1)
        )
    return callbacks
