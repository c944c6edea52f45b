"""The course's Keras callbacks, set up once for every Keras model headstart trains."""

from __future__ import annotations

from pathlib import Path

BEST_WEIGHTS = "checkpoints/best.weights.h5"


def training_callbacks(
    folder: Path | None,
    patience: int,
    tensorboard: bool,
    backup_dir: Path | None = None,
    best_val_loss: float | None = None,
    validated: bool = True,
) -> list:
    """EarlyStopping (restores the best weights), ModelCheckpoint (best), ReduceLROnPlateau,
    CSVLogger (report/history.csv), TerminateOnNaN, and TensorBoard (logs/) when asked.

    With `backup_dir`, BackupAndRestore too: a killed training run again resumes after its
    last completed epoch, appending to history.csv; `best_val_loss` (the best of the epochs
    before) keeps the checkpoint from being replaced by a worse epoch after the restart.
    Without a `folder` (a cross-validation fold), only those that steer training and write
    nothing; not `validated` (no validation data), none of those that watch val_loss."""
    import keras

    callbacks = [keras.callbacks.TerminateOnNaN()]
    if validated:
        callbacks += [
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience, restore_best_weights=True
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(1, patience // 2), min_lr=1e-6
            ),
        ]
    if folder is None:
        return callbacks
    report = folder / "report"
    report.mkdir(parents=True, exist_ok=True)
    if validated:
        checkpoints = folder / "checkpoints"
        checkpoints.mkdir(exist_ok=True)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                folder / BEST_WEIGHTS,
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_val_loss,
            )
        )
    callbacks.append(
        keras.callbacks.CSVLogger(report / "history.csv", append=backup_dir is not None)
    )
    if backup_dir is not None:  # after CSVLogger: a kill between the two repeats an epoch
        # (its history row is trimmed on resume) rather than losing one
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True))
    if tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(folder / "logs"), histogram_freq=1)
        )
    return callbacks


def epoch_logger(total_epochs: int):
    """A callback that logs one line per epoch on the `headstart` logger, so long trainings
    show progress in the CLI and in batch-job logs alike; within an epoch, its batches are
    a bar on a terminal, a line every 30 s in a log (extractor.progress)."""
    import logging
    import time

    import keras

    from ..extractor.progress import Progress

    log = logging.getLogger("headstart")

    class EpochLog(keras.callbacks.Callback):
        progress: Progress | None = None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()
            steps = (self.params or {}).get("steps") or 0
            name = f"epoch {epoch + 1}/{total_epochs}"
            self.progress = Progress(steps, name, unit="batches", leave=False)

        def on_train_batch_end(self, batch, logs=None):
            if self.progress is not None:
                self.progress.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self.progress is not None:
                self.progress.close()
            shown = ", ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items() if k != "lr")
            seconds = time.monotonic() - self.started
            log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, total_epochs, shown, seconds)

        def on_train_end(self, logs=None):
            if self.progress is not None:  # stopped within an epoch: the bar goes
                self.progress.close()

    return EpochLog()
