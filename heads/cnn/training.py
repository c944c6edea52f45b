"""`headstart train-cnn`: an images folder -> a full CNN in MODEL_DIR.

MODEL_DIR/model.keras   the Keras model (loads with safe_mode=True: built-in layers only)
MODEL_DIR/model.onnx    the whole CNN: float32 pixels (N, S, S, C) in [0, 255] -> probabilities
MODEL_DIR/model.json    kind, arch, classes, input, settings, training, metrics, layer table
MODEL_DIR/report/       metrics.json, confusion_matrix.png, history.csv, curves.png, errors.csv
MODEL_DIR/logs/         TensorBoard, with --tensorboard

The run works in `_headstart-resume-NAME` next to MODEL_DIR and renames it when done. A run
that is killed leaves that folder behind; the same command again resumes it after the last
completed epoch (Keras' BackupAndRestore), as long as the settings and the images are the
same. That folder is used only when its run.json says headstart made it and it holds no
symbolic link; MODEL_DIR is replaced only when it holds nothing but what train-cnn writes.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...extractor.applications import application
from ...extractor.backbone import cache_root, parse_weights
from ...extractor.errors import OutputLockedError
from ...extractor.errors_csv import write_errors_csv
from ...extractor.json_input import parse_json
from ...extractor.onnx_probe import vouch
from ...extractor.safe_files import OutputFolder, as_disk_error, user_path
from ...extractor.safe_folders import (
    FolderLayout,
    check_outside_artifacts,
    check_replaceable,
    install_folder,
)
from ...extractor.scan import RESUME_PREFIX, ScanResult, scan_images
from ...extractor.settings import (
    channels_of,
    check_workers,
)
from ...extractor.tensorflow_needed import import_keras
from ..callbacks import BEST_WEIGHTS, epoch_logger, training_callbacks
from ..dataset import check_labels, stratified_split
from ..keras_onnx import save_keras_as_onnx
from ..report import (
    REPORT_FILES,
    TENSORBOARD_FILES,
    THUMBNAILS,
    classification_metrics,
    write_report,
)
from ..report_page import misclassified_rows
from .data import DecodedImages, decode_all, make_dataset
from .model import (
    CNN_PURPOSE,
    INPUT_NAME,
    OUTPUT_NAME,
    build_backbone_classifier,
    build_simple_cnn,
    layer_table,
    unfreeze_top_layers,
)
from .settings import CnnSettings, check_cnn_settings
from .work_folder import (
    PHASE1_WEIGHTS,
    PIXELS_FILE,
    RUN_FILE,
    completed_epochs,
    epoch_in,
    remove,
    remove_unless_resumable,
    resume_folder,
    run_key,
    start_or_resume,
    write_json,
)

log = logging.getLogger("headstart")

MODEL_FILE, KERAS_FILE, DESCRIPTION_FILE = "model.onnx", "model.keras", "model.json"
# the settings the report page shows (model.json has them all)
ABOUT_SETTINGS = ("image_size", "color_mode", "weights", "augment", "fine_tune_layers", "lr")
MODEL_LAYOUT = FolderLayout(  # everything train-cnn writes in MODEL_DIR (run.json: briefly)
    DESCRIPTION_FILE,
    (KERAS_FILE, MODEL_FILE, DESCRIPTION_FILE, RUN_FILE,
     *(f"report/{n}" for n in (*REPORT_FILES, THUMBNAILS)), TENSORBOARD_FILES),
)  # fmt: skip


@dataclass
class CnnResult:
    model_dir: Path
    accuracy: float
    train_images: int
    val_images: int
    epochs_run: int
    skipped: list[tuple[str, str]]
    resumed_after: int  # completed epochs found from a killed run (0: a fresh start)
    params: int


def train_cnn(
    images_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: CnnSettings = CnnSettings(),  # noqa: B008  (frozen: one shared default is safe)
    workers: int | None = None,
    progress: bool = False,
) -> CnnResult:
    """Train a CNN on the class folders of `images_dir` and write MODEL_DIR."""
    s = check_cnn_settings(settings)
    check_workers(workers)
    folder = user_path(model_dir)  # a link given as -o: the folder it points to is replaced
    check_outside_artifacts(folder)
    resume_name = RESUME_PREFIX + folder.name
    with OutputFolder(folder.parent) as parent:
        check_replaceable(parent, folder.name, MODEL_LAYOUT)
        scan = scan_images(images_dir, exclude=[folder, folder.with_name(resume_name)])
        check_labels(
            images_dir, [i.path for i in scan.images], [i.label for i in scan.images], "images"
        )
        created = parent.entry(resume_name) is None
        try:
            with resume_folder(parent, resume_name) as work:
                result = _train_in(work, folder, images_dir, scan, s, workers, progress)
                install_folder(parent, work, folder.name, MODEL_LAYOUT)
                work.remove_file(RUN_FILE)  # the work folder is MODEL_DIR now
        except BaseException as error:
            if created and not isinstance(error, OutputLockedError):
                remove_unless_resumable(parent, resume_name)
            kept = parent.entry(resume_name) is not None  # else: the folder took nothing
            where = folder.parent / resume_name if kept else folder.parent
            disk = as_disk_error(error, where, keras=True)
            if disk is not None:
                raise disk from None
            raise
    result.model_dir = folder
    return result


def _train_in(
    work: OutputFolder, final: Path, images_dir, scan: ScanResult, s: CnnSettings, workers, progress
) -> CnnResult:
    """Decode, train (resuming a killed run's epochs) and write MODEL_DIR's files in `work`;
    a run killed once they were all written just tidies up."""
    decoded = decode_all(
        scan.images, s.image_size, s.color_mode, (work, PIXELS_FILE), workers, progress
    )
    skipped = sorted([(r.path, r.reason) for r in scan.rejected] + decoded.errors)
    classes = check_labels(images_dir, decoded.paths, decoded.labels, "readable images")
    for option, choice in s.chosen.items():
        log.info("--%s %s, chosen from the images: %s", option, choice["value"], choice["because"])
    run = start_or_resume(work, run_key(s, decoded))
    if not run.get("finished"):
        _fit_and_save(work, final, run, decoded, classes, skipped, s, images_dir)
    del decoded  # the memory map of the pixel cache, removed next
    for leftover in ("checkpoints", "backup", PIXELS_FILE, PHASE1_WEIGHTS):
        remove(work, leftover)
    with work.open_existing(DESCRIPTION_FILE) as handle:
        description = parse_json(handle.read())
    training = description["training"]
    return CnnResult(
        work.path,
        description["metrics"]["val_accuracy"],
        training["train_images"],
        training["val_images"],
        training["epochs_run"],
        skipped,
        run["resumed_after"],
        description["params"]["total"],
    )


def _fit_and_save(
    work: OutputFolder, final: Path, run: dict, decoded: DecodedImages, classes, skipped, s,
    images_dir,
) -> None:  # fmt: skip
    """Train (phase 1, then fine-tuning if asked) and write the model, its description and
    its report into `work` (MODEL_DIR `final` once renamed); run.json then says the run is
    finished."""
    y = np.searchsorted(classes, decoded.labels)
    train_rows, val_rows = stratified_split(y, s.val_split, s.seed)
    keras = import_keras(CNN_PURPOSE)
    keras.utils.set_random_seed(s.seed)
    train_data = make_dataset(decoded.pixels, y, train_rows, s.batch_size, True, s.seed)
    val_data = make_dataset(decoded.pixels, y, val_rows, s.batch_size, False, s.seed)
    model, base = _build(s, len(classes))
    trainer = _Trainer(model, work, s, train_data, val_data)

    run["resumed_after"] = completed_epochs(work.path)
    if run["resumed_after"]:
        log.info("resuming a killed run of train-cnn after epoch %d", run["resumed_after"])
    if "phase1" not in run:
        trainer.fit("phase1", s.lr, first_epoch=0)
        model.save_weights(work.path / PHASE1_WEIGHTS)
        run["phase1"] = {"epochs": trainer.epochs_done(), "best_val_loss": trainer.best_loss()}
        write_json(work, RUN_FILE, run)
    else:
        _load_weights(model, work.path / PHASE1_WEIGHTS)
    epochs_run = run["phase1"]["epochs"]
    if s.fine_tune_layers:
        _unfreeze(model, base, s)
        trainer.fit("phase2", s.fine_tune_lr, first_epoch=epochs_run)
        epochs_run = trainer.epochs_done()

    probabilities = model.predict(val_data, verbose=0)
    metrics = classification_metrics(y[val_rows], probabilities, classes)
    paths = [decoded.paths[row] for row in val_rows]
    mistakes = misclassified_rows(paths, y[val_rows], probabilities, classes)
    about = {
        "network": s.arch,
        "settings": {k: v for k, v in asdict(s).items() if k in ABOUT_SETTINGS},
        "images": f"{len(train_rows)} training, {len(val_rows)} validation",
    }
    with work.subfolder("report") as report:
        write_report(report, metrics, f"{s.arch} CNN, validation", final / "report",
                     misclassified=mistakes, images_dir=os.path.abspath(images_dir),
                     about=about)  # fmt: skip
        if skipped:
            write_errors_csv(report, "errors.csv", skipped)
    _save(model, work, s, classes, metrics, len(train_rows), len(val_rows), epochs_run)
    write_json(work, RUN_FILE, {**run, "finished": True})  # from here on, only tidying


def _load_weights(model, path: Path) -> None:
    """The model's weights from `path`. A checkpoint of phase 1 read in phase 2 holds the
    optimizer state of the head alone; Keras then warns that it skips the optimizer's
    variables, which are not needed (the weights are what is restored), so that warning is
    not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def _unfreeze(model, base, s: CnnSettings) -> None:
    frozen = _trainable_parameters(model)
    unfrozen = unfreeze_top_layers(base, s.fine_tune_layers)
    trainable = _trainable_parameters(model)
    named = ", ".join(unfrozen[:3]) + (f" … {unfrozen[-1]}" if len(unfrozen) > 3 else "")
    log.info(
        "fine-tuning: %s's top %d layers with weights unfrozen (%s; BatchNorm stays "
        "frozen): %s parameters trainable, %s more than the head's, lr %g",
        application(s.arch).constructor,
        len(unfrozen),
        named or "none",
        f"{trainable:,}",
        f"{trainable - frozen:,}",
        s.fine_tune_lr,
    )


def _trainable_parameters(model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


class _Trainer:
    """Fits the model one phase at a time with the course's callbacks plus BackupAndRestore,
    and keeps the best weights across phases and restarts."""

    def __init__(self, model, work: OutputFolder, settings: CnnSettings, train_data, val_data):
        self.model, self.work, self.staging, self.s = model, work, work.path, settings
        self.train_data, self.val_data = train_data, val_data

    def fit(self, phase: str, lr: float, first_epoch: int) -> None:
        import keras

        self.model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        callbacks = training_callbacks(
            self.staging,
            self.s.patience,
            self.s.tensorboard,
            backup_dir=self.staging / "backup" / phase,
            best_val_loss=self.best_loss(),
        )
        last_epoch = first_epoch + self.s.epochs
        callbacks.append(epoch_logger(last_epoch))
        backup = self.staging / "backup" / phase / "training_metadata.json"
        self._trim_history(epoch_in(backup) if backup.is_file() else first_epoch)
        self.model._initial_epoch = None  # Keras keeps a restored epoch from the last fit()
        self.model.fit(
            self.train_data,
            validation_data=self.val_data,
            epochs=last_epoch,
            initial_epoch=first_epoch,
            callbacks=callbacks,
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=0,
        )
        if (self.staging / BEST_WEIGHTS).is_file():  # the best epoch, across restarts
            try:
                _load_weights(self.model, self.staging / BEST_WEIGHTS)
            except Exception as error:  # a run killed while Keras wrote it
                log.warning("best checkpoint unreadable (%s); keeping the last weights", error)

    def _trim_history(self, completed: int) -> None:
        """Keep history.csv to the epochs before `completed`: a run killed after logging an
        epoch but before backing it up runs that epoch again."""
        rows = self._history()
        kept = [row for row in rows if int(row["epoch"]) < completed]
        if len(kept) == len(rows):
            return
        with self.work.subfolder("report") as report, report.writing("history.csv", "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)

    def _history(self) -> list[dict[str, str]]:
        path = self.staging / "report" / "history.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def epochs_done(self) -> int:
        return len(self._history())

    def best_loss(self) -> float | None:
        losses = [float(row["val_loss"]) for row in self._history() if row.get("val_loss")]
        return min(losses) if losses else None


def _build(s: CnnSettings, classes: int):
    if s.arch == "simple":
        shape = (s.image_size, s.image_size, channels_of(s.color_mode))
        return build_simple_cnn(shape, classes, s.simple, s.augment, s.seed), None
    weights = parse_weights(s.weights, s.seed)
    return build_backbone_classifier(
        s.arch, s.image_size, classes, weights, s.dropout, s.augment, s.seed
    )


def _save(model, work: OutputFolder, s: CnnSettings, classes, metrics, n_train, n_val, epochs_run):
    channels = channels_of(s.color_mode)
    staging = work.path  # checked for links when opened; Keras and tf2onnx write by path
    model.save(staging / KERAS_FILE)
    save_keras_as_onnx(
        model,
        (None, s.image_size, s.image_size, channels),
        INPUT_NAME,
        OUTPUT_NAME,
        staging / MODEL_FILE,
    )
    vouch(staging / MODEL_FILE, (s.image_size, s.image_size, channels), "float32", cache_root())
    settings = asdict(s)
    del settings["chosen"]  # recorded on its own
    settings["simple"] = asdict(s.simple) if s.arch == "simple" else None
    description = {
        "kind": "cnn",
        "arch": s.arch,
        "classes": classes,
        "input": {
            "name": INPUT_NAME,
            "image_size": s.image_size,
            "color_mode": s.color_mode,
            "channels": channels,
            "dtype": "float32",
            "range": [0, 255],
        },
        "output": OUTPUT_NAME,
        "settings": settings,
        "defaults_chosen": s.chosen,  # the defaults that depend on the data, and why
        "training": {
            "train_images": n_train,
            "val_images": n_val,
            "epochs_run": epochs_run,
        },
        "metrics": {"val_accuracy": metrics["accuracy"]},
        "params": {
            "total": int(model.count_params()),
            "trainable": _trainable_parameters(model),
        },
        "layers": layer_table(model),
    }
    write_json(work, DESCRIPTION_FILE, description)
