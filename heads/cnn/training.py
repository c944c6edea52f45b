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
import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...extractor.backbone import MIN_IMAGE_SIZE, cache_root, parse_weights
from ...extractor.errors import OutputError, OutputLockedError, UnsafeOutputError
from ...extractor.errors_csv import write_errors_csv
from ...extractor.json_input import parse_json
from ...extractor.onnx_probe import vouch
from ...extractor.safe_files import OutputFolder, as_disk_error, user_path
from ...extractor.safe_folders import (
    FolderLayout,
    check_outside_artifacts,
    check_replaceable,
    install_folder,
    refuse_links_inside,
)
from ...extractor.scan import RESUME_PREFIX, ScanResult, scan_images
from ...extractor.settings import (
    COLOR_MODES,
    DEFAULT_COLOR_MODE,
    MAX_IMAGE_SIZE,
    channels_of,
    check_counts,
    check_dropout,
    check_range,
    check_training,
    check_workers,
)
from ..callbacks import BEST_WEIGHTS, epoch_logger, training_callbacks
from ..dataset import check_labels, stratified_split
from ..errors import SettingError
from ..keras_onnx import save_keras_as_onnx
from ..report import REPORT_FILES, TENSORBOARD_FILES, classification_metrics, write_report
from .data import DecodedImages, decode_all, make_dataset
from .model import (
    ARCHS,
    INPUT_NAME,
    OUTPUT_NAME,
    SimpleCNN,
    build_inception_classifier,
    build_simple_cnn,
    layer_table,
    unfreeze_top_layers,
)

log = logging.getLogger("headstart")

MODEL_FILE, KERAS_FILE, DESCRIPTION_FILE = "model.onnx", "model.keras", "model.json"
DEFAULT_IMAGE_SIZE = {"simple": 128, "inception": 299}
DEFAULT_DROPOUT = {"simple": 0.5, "inception": 0.2}
RUN_FILE, PIXELS_FILE, PHASE1_WEIGHTS = "run.json", "pixels.u8", "phase1.weights.h5"
RUN_MARK = "train-cnn resume state"  # run.json's "headstart" field: the folder is ours
MODEL_LAYOUT = FolderLayout(  # everything train-cnn writes in MODEL_DIR (run.json: briefly)
    DESCRIPTION_FILE,
    (KERAS_FILE, MODEL_FILE, DESCRIPTION_FILE, RUN_FILE, *(f"report/{n}" for n in REPORT_FILES),
     TENSORBOARD_FILES),
)  # fmt: skip


SIMPLE_OPTIONS = ("blocks", "filters", "convs_per_block", "dense", "batchnorm", "l2")


@dataclass(frozen=True)
class CnnSettings:
    arch: str = "simple"
    image_size: int | None = None  # None: 128 for simple, 299 for inception
    color_mode: str = DEFAULT_COLOR_MODE
    batch_size: int = 32
    # A ConvNet from scratch sits on a plateau for several epochs before it starts to learn:
    # on 320 generated 64 px shape images, patience 5 stopped it at chance (0.275, 7 epochs),
    # patience 10 reached 0.925 (bench/workflows.py).
    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    val_split: float = 0.2
    seed: int = 0
    augment: bool = True
    dropout: float | None = None  # None: 0.5 for simple, 0.2 for inception's head
    simple: SimpleCNN = field(default_factory=SimpleCNN)
    weights: str = "imagenet"  # inception only
    fine_tune_layers: int = 0
    fine_tune_lr: float = 1e-5
    tensorboard: bool = False

    @classmethod
    def from_options(cls, **options) -> CnnSettings:
        """The settings train-cnn's options give, the simple ConvNet's among them (blocks,
        filters, convs_per_block, dense, batchnorm, l2)."""
        simple = {key: options.pop(key) for key in SIMPLE_OPTIONS if key in options}
        return cls(simple=SimpleCNN(**simple), **options)

    def resolved(self) -> CnnSettings:
        """The settings with every default filled in (what model.json records)."""
        dropout = DEFAULT_DROPOUT[self.arch] if self.dropout is None else self.dropout
        return replace(
            self,
            image_size=DEFAULT_IMAGE_SIZE[self.arch]
            if self.image_size is None
            else self.image_size,
            dropout=dropout,
            simple=replace(self.simple, dropout=dropout),
        )


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


def check_cnn_settings(settings: CnnSettings) -> CnnSettings:
    """Fail before any work on settings that cannot work; returns them resolved."""
    if settings.arch not in ARCHS:
        raise SettingError(f"unknown --arch {settings.arch!r}; choose one of {', '.join(ARCHS)}")
    if settings.color_mode not in COLOR_MODES:
        raise SettingError(
            f"unknown --color-mode {settings.color_mode!r}; choose one of {', '.join(COLOR_MODES)}"
        )
    s = settings.resolved()
    check_training(
        epochs=s.epochs,
        patience=s.patience,
        lr=s.lr,
        batch_size=s.batch_size,
        val_split=s.val_split,
        seed=s.seed,
    )
    check_counts(
        {
            "--blocks": s.simple.blocks,
            "--filters": s.simple.filters,
            "--convs-per-block": s.simple.convs_per_block,
        }
    )
    if any(units < 1 for units in s.simple.dense):
        raise SettingError(f"--dense takes positive layer sizes, got {s.simple.dense}")
    check_dropout(s.dropout)
    check_range("--fine-tune-lr", s.fine_tune_lr, 0, 1, low_open=True)
    check_range("--l2", s.simple.l2, 0, 1)
    check_range("--image-size", s.image_size, 1, MAX_IMAGE_SIZE)
    if s.arch == "simple" and s.image_size < 2**s.simple.blocks:
        raise SettingError(
            f"--image-size {s.image_size} is too small for --blocks {s.simple.blocks}: each "
            f"block halves it, so it needs at least {2**s.simple.blocks}"
        )
    if s.arch == "inception":
        if s.image_size < MIN_IMAGE_SIZE:
            raise SettingError(
                f"--image-size {s.image_size} is too small; InceptionV3 needs at least "
                f"{MIN_IMAGE_SIZE}"
            )
        if s.color_mode != DEFAULT_COLOR_MODE:
            raise SettingError(
                "--arch inception takes --color-mode rgb (grayscale images are converted to RGB)"
            )
        parse_weights(s.weights, s.seed)
    check_range("--fine-tune-layers", s.fine_tune_layers, 0)
    if s.fine_tune_layers and s.arch != "inception":
        raise SettingError("--fine-tune-layers applies to --arch inception only")
    return s


def train_cnn(
    images_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: CnnSettings = CnnSettings(),
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
            with _resume_folder(parent, resume_name) as work:
                result = _train_in(work, folder, images_dir, scan, s, workers, progress)
                install_folder(parent, work, folder.name, MODEL_LAYOUT)
                work.remove_file(RUN_FILE)  # the work folder is MODEL_DIR now
        except BaseException as error:
            if created and not isinstance(error, OutputLockedError):
                _remove_unless_resumable(parent, resume_name)
            disk = as_disk_error(error, folder.parent / resume_name, keras=True)
            if disk is not None:
                raise disk from None
            raise
    result.model_dir = folder
    return result


def _remove_unless_resumable(parent: OutputFolder, name: str) -> None:
    """A work folder this run made holds nothing worth resuming until an epoch completed
    (or the run finished): before that, a failed run leaves no trace."""
    if parent.entry(name) is None or _completed_epochs(parent / name):
        return
    try:
        with parent.subfolder(name, create=False) as work:
            with work.open_existing(RUN_FILE) as handle:
                finished = parse_json(handle.read()).get("finished")
    except (OSError, ValueError, AttributeError, OutputError):
        finished = False
    if not finished:
        parent.remove_tree(name)


def _resume_folder(parent: OutputFolder, name: str) -> OutputFolder:
    """The work folder `name`, locked for this run: a killed run's, to resume, or a new
    one. A folder of that name that headstart did not make, or that holds a symbolic link,
    is refused; one that another run holds is refused too."""
    work = parent.subfolder(name)
    try:
        work.lock(
            f"{work.path} is in use by another train-cnn run; wait for it to finish or "
            "choose another -o"
        )
        if not work.names():  # new (or empty: nothing to lose)
            _write_json(work, RUN_FILE, {"headstart": RUN_MARK})
        elif not _is_our_work_folder(work):
            raise UnsafeOutputError(
                f"{work.path} is not a train-cnn work folder headstart made (no {RUN_FILE} "
                "of its own); headstart does not touch it: move it away or choose another -o"
            )
        refuse_links_inside(work)
    except BaseException:
        work.close()
        raise
    return work


def _is_our_work_folder(work: OutputFolder) -> bool:
    try:
        with work.open_existing(RUN_FILE) as handle:
            return parse_json(handle.read()).get("headstart") == RUN_MARK
    except UnsafeOutputError:
        raise
    except (OSError, ValueError, AttributeError, OutputError):
        return False


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
    run = _start_or_resume(work, _run_key(s, decoded))
    if not run.get("finished"):
        _fit_and_save(work, final, run, decoded, classes, skipped, s)
    del decoded  # the memory map of the pixel cache, removed next
    for leftover in ("checkpoints", "backup", PIXELS_FILE, PHASE1_WEIGHTS):
        _remove(work, leftover)
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
    work: OutputFolder, final: Path, run: dict, decoded: DecodedImages, classes, skipped, s
) -> None:
    """Train (phase 1, then fine-tuning if asked) and write the model, its description and
    its report into `work` (MODEL_DIR `final` once renamed); run.json then says the run is
    finished."""
    y = np.searchsorted(classes, decoded.labels)
    train_rows, val_rows = stratified_split(y, s.val_split, s.seed)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(s.seed)
    train_data = make_dataset(decoded.pixels, y, train_rows, s.batch_size, True, s.seed)
    val_data = make_dataset(decoded.pixels, y, val_rows, s.batch_size, False, s.seed)
    model, base = _build(s, len(classes))
    trainer = _Trainer(model, work, s, train_data, val_data)

    run["resumed_after"] = _completed_epochs(work.path)
    if run["resumed_after"]:
        log.info("resuming a killed run of train-cnn after epoch %d", run["resumed_after"])
    if "phase1" not in run:
        trainer.fit("phase1", s.lr, first_epoch=0)
        model.save_weights(work.path / PHASE1_WEIGHTS)
        run["phase1"] = {"epochs": trainer.epochs_done(), "best_val_loss": trainer.best_loss()}
        _write_json(work, RUN_FILE, run)
    else:
        model.load_weights(work.path / PHASE1_WEIGHTS)
    epochs_run = run["phase1"]["epochs"]
    if s.fine_tune_layers:
        _unfreeze(model, base, s)
        trainer.fit("phase2", s.fine_tune_lr, first_epoch=epochs_run)
        epochs_run = trainer.epochs_done()

    probabilities = model.predict(val_data, verbose=0)
    metrics = classification_metrics(y[val_rows], probabilities, classes)
    with work.subfolder("report") as report:
        write_report(report, metrics, f"{s.arch} CNN, validation", final / "report")
        if skipped:
            write_errors_csv(report, "errors.csv", skipped)
    _save(model, work, s, classes, metrics, len(train_rows), len(val_rows), epochs_run)
    _write_json(work, RUN_FILE, {**run, "finished": True})  # from here on, only tidying


def _unfreeze(model, base, s: CnnSettings) -> None:
    unfrozen = unfreeze_top_layers(base, s.fine_tune_layers)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log.info(
        "fine-tuning: %d of InceptionV3's top %d layers unfrozen (BatchNorm stays frozen), "
        "%s parameters trainable, lr %g",
        unfrozen,
        s.fine_tune_layers,
        f"{trainable:,}",
        s.fine_tune_lr,
    )


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
        self._trim_history(_epoch_in(backup) if backup.is_file() else first_epoch)
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
                self.model.load_weights(self.staging / BEST_WEIGHTS)
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
    return build_inception_classifier(
        s.image_size, classes, parse_weights(s.weights, s.seed), s.dropout, s.augment, s.seed
    )


def _run_key(s: CnnSettings, decoded: DecodedImages) -> str:
    """What a resumed run must share with the killed one: settings and exact images."""
    digest = hashlib.sha256(json.dumps(asdict(s), sort_keys=True).encode())
    for path, sha256 in zip(decoded.paths, decoded.sha256s):
        digest.update(f"{path}\0{sha256}\n".encode())
    return digest.hexdigest()


def _start_or_resume(work: OutputFolder, key: str) -> dict[str, Any]:
    """The run's state: the killed run's when it had the same key, else a fresh one (the
    work folder is emptied, the decoded pixels excepted)."""
    with work.open_existing(RUN_FILE) as handle:
        try:
            run = parse_json(handle.read())
        except ValueError:
            run = {}
    if run.get("key") == key:
        return run
    if "key" in run:
        log.info("%s holds a run with other settings or images: starting afresh", work.path)
    for name in work.names():
        if name not in (PIXELS_FILE, RUN_FILE):
            _remove(work, name)
    run = {"headstart": RUN_MARK, "key": key}
    _write_json(work, RUN_FILE, run)
    return run


def _remove(work: OutputFolder, name: str) -> None:
    info = work.entry(name)
    if info is not None and stat.S_ISDIR(info.st_mode):
        work.remove_tree(name)
    else:
        work.remove_file(name)


def _completed_epochs(staging: Path) -> int:
    """Epochs a killed run completed (its BackupAndRestore metadata), 0 if none."""
    return max((_epoch_in(m) for m in staging.glob("backup/*/training_metadata.json")), default=0)


def _epoch_in(metadata: Path) -> int:
    """The epoch count BackupAndRestore recorded (0 if the file is unreadable)."""
    try:
        return int(parse_json(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


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
        "training": {
            "train_images": n_train,
            "val_images": n_val,
            "epochs_run": epochs_run,
        },
        "metrics": {"val_accuracy": metrics["accuracy"]},
        "params": {
            "total": int(model.count_params()),
            "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        },
        "layers": layer_table(model),
    }
    _write_json(work, DESCRIPTION_FILE, description)


def _write_json(folder: OutputFolder, name: str, value: dict) -> None:
    folder.write_text(name, json.dumps(value, indent=2, default=str) + "\n")
