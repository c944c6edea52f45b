"""`headstart train`: feature store -> a trained head in HEAD_DIR.

HEAD_DIR/model.onnx   the head (float32 features -> class probabilities)
HEAD_DIR/head.json    kind, classes in order, hyperparameters, fingerprint, metrics
HEAD_DIR/report/      metrics.json, confusion_matrix.png (+ history.csv, curves.png)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..extractor.backbone import cache_root
from ..extractor.onnx_probe import vouch
from ..extractor.safe_files import OutputFolder, user_path
from ..extractor.safe_folders import (
    FolderLayout,
    check_outside_artifacts,
    check_replaceable,
    output_lock,
    staged_folder,
)
from ..extractor.settings import check_range, check_seed
from .dataset import VIEWS_IN_TRAINING, load_labelled_features, split_by_image
from .errors import SettingError
from .kinds import HEAD_KINDS
from .mlp import MLPHead, check_mlp_options
from .report import REPORT_FILES, TENSORBOARD_FILES, classification_metrics, write_report
from .sklearn_heads import ONNX_INPUT, SklearnHead

HEAD_FILE = "head.json"
# Everything train writes in HEAD_DIR: an old HEAD_DIR holding anything else is not replaced
HEAD_LAYOUT = FolderLayout(
    HEAD_FILE,
    ("model.onnx", HEAD_FILE, *(f"report/{name}" for name in REPORT_FILES), TENSORBOARD_FILES),
)


@dataclass
class TrainResult:
    kind: str
    accuracy: float
    train_images: int
    val_images: int
    head_dir: Path
    report_dir: Path
    epochs_run: int | None = None


def make_head(kind: str, seed: int = 0, folder: Path | None = None, **options):
    """A fresh head of `kind`; `options` are the MLP's (epochs, patience, hidden, ...)."""
    if kind in SklearnHead.kinds:
        return SklearnHead(kind, seed=seed)
    check_head_kind(kind)
    return MLPHead(seed=seed, folder=folder, **options)


def check_head_kind(kind: str) -> None:
    if kind not in HEAD_KINDS:
        raise SettingError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def train_head(
    features_dir: str | os.PathLike,
    head_dir: str | os.PathLike,
    kind: str = "logreg",
    val_split: float = 0.2,
    seed: int = 0,
    views_in_training: str = "all",
    **mlp_options,
) -> TrainResult:
    """Train a head of `kind` on a feature store and write HEAD_DIR. `mlp_options` (epochs,
    patience, hidden, dropout, lr, batch_size, tensorboard) are the MLP's: other kinds
    leave them out, and head.json records none of them."""
    check_head_kind(kind)
    check_range("--val-split", val_split, 0, 1, low_open=True, high_open=True)
    check_seed(seed)
    if kind in MLPHead.kinds:
        check_mlp_options(val_split=val_split, seed=seed, **mlp_options)
    else:
        mlp_options = {}
    if views_in_training not in VIEWS_IN_TRAINING:
        raise SettingError(
            f"--views-in-training must be one of {', '.join(VIEWS_IN_TRAINING)}, "
            f"got {views_in_training!r}"
        )
    folder = user_path(head_dir)  # a link given as -o: the folder it points to is replaced
    check_outside_artifacts(folder)
    busy = f"-o {folder}: another train is writing it; wait for it to finish or choose another"
    with OutputFolder(folder.parent) as parent, output_lock(parent, folder.name, busy):
        check_replaceable(parent, folder.name, HEAD_LAYOUT)
        parent.remove_leftovers(folder.name)  # a killed train's staging folder
        data = load_labelled_features(features_dir)
        train, val = split_by_image(data, val_split, seed, views_in_training)
        # HEAD_DIR appears complete or not at all
        with staged_folder(parent, folder.name, HEAD_LAYOUT) as staging:
            head, metrics = _fit_head(staging, folder, kind, seed, data, train, val, mlp_options)
            n_train = len({data.paths[i] for i in train})  # images; views make more rows
            training = {
                "val_split": val_split,
                "seed": seed,
                "train_images": n_train,
                "val_images": len(val),
                "train_rows": len(train),
                "views_in_training": views_in_training,
                "epochs_run": getattr(head, "epochs_run_", None),
            }
            _write_head_json(staging, kind, head, data, metrics, training)
    epochs_run = getattr(head, "epochs_run_", None)
    return TrainResult(
        kind, metrics["accuracy"], n_train, len(val), folder, folder / "report", epochs_run
    )


def _fit_head(staging: OutputFolder, final: Path, kind: str, seed: int, data, train, val, options):
    """Fit the head on the `train` rows, save it and its validation report into `staging`
    (HEAD_DIR `final` once renamed); returns the head and its validation metrics."""
    head = make_head(kind, seed, folder=staging.path, **options)
    head.fit(data.X[train], data.y[train], validation=(data.X[val], data.y[val]))
    head.save(staging.path, data.X.shape[1])
    vouch(staging.path / "model.onnx", (data.X.shape[1],), "float32", cache_root())  # ours
    staging.remove_tree("checkpoints")  # the best weights are in model.onnx
    probabilities = head.predict_proba(data.X[val])
    metrics = classification_metrics(data.y[val], probabilities, data.classes)
    with staging.subfolder("report") as report:
        write_report(report, metrics, f"{kind} head, validation", final / "report")
    return head, metrics


def _write_head_json(
    folder: OutputFolder,
    kind: str,
    head,
    data,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> None:
    description = {
        "kind": kind,
        "classes": data.classes,
        "input": {"name": ONNX_INPUT, "dim": int(data.X.shape[1]), "dtype": "float32"},
        "output": "probabilities",
        "hyperparameters": head.hyperparameters(),
        "training": training,
        "fingerprint": data.fingerprint,
        "metrics": {"val_accuracy": metrics["accuracy"]},
    }
    folder.write_text(HEAD_FILE, json.dumps(description, indent=2, default=str) + "\n")
