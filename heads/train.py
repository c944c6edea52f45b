"""`headstart train`: feature store -> a trained head in HEAD_DIR.

HEAD_DIR/model.onnx   the head (float32 features -> class probabilities)
HEAD_DIR/head.json    kind, classes in order, hyperparameters, fingerprint, metrics
HEAD_DIR/report/      metrics.json, confusion_matrix.png (+ history.csv, curves.png)
"""

from __future__ import annotations

import json
import logging
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
from ..extractor.tensorflow_needed import INSTALL, missing_packages
from .dataset import VIEWS_IN_TRAINING, image_folds, load_labelled_features, split_by_image
from .errors import SettingError, TrainingDataError
from .kinds import CLASS_WEIGHTED_KINDS, HEAD_KINDS
from .memory import DEFAULT_MEMORY_BUDGET, IN_MEMORY_COPIES, parse_memory_budget, shown
from .mlp import MLPHead, check_mlp_options
from .report import (
    REPORT_FILES,
    TENSORBOARD_FILES,
    THUMBNAILS,
    classification_metrics,
    write_report,
)
from .report_page import misclassified_rows
from .selection import CV_MAX_ROWS, GRIDS
from .sklearn_heads import ONNX_INPUT, SklearnHead
from .tuning import Candidate, TrainingRows, best_candidate, train_candidate

log = logging.getLogger("headstart")

HEAD_FILE = "head.json"
# Everything train writes in HEAD_DIR: an old HEAD_DIR holding anything else is not replaced
HEAD_LAYOUT = FolderLayout(
    HEAD_FILE,
    (
        "model.onnx",
        HEAD_FILE,
        *(f"report/{name}" for name in (*REPORT_FILES, THUMBNAILS)),
        TENSORBOARD_FILES,
    ),
)


@dataclass
class TrainResult:
    kind: str
    accuracy: float | None  # on the validation images; None with --val-split 0
    train_images: int
    val_images: int
    head_dir: Path
    report_dir: Path
    epochs_run: int | None = None
    metrics: dict[str, Any] | None = None  # the report's: validation, or out-of-fold
    cv_score: float | None = None
    cv_scoring: str | None = None
    candidates: list[dict[str, Any]] | None = None  # --head auto: every kind's row
    train_rows: int | None = None
    train_rows_used: int | None = None  # fewer: a subsample that fits --memory-budget


AUTO = "auto"
# What --C, --gamma, --k, --max-depth and --min-samples-leaf set, by keyword
HYPERPARAMETER_OPTIONS = {
    "C": "--C",
    "gamma": "--gamma",
    "neighbors": "--k",
    "max_depth": "--max-depth",
    "min_samples_leaf": "--min-samples-leaf",
}
CLASS_WEIGHTS = ("none", "balanced")
# What each may be: beyond these, libsvm can run for hours (C 1e30 with gamma 1e-300) and
# scikit-learn's trees overflow; the grids lie well inside
HYPERPARAMETER_RANGES = {
    "C": (1e-6, 1e6),
    "gamma": (1e-9, 1e3),
    "neighbors": (1, 2**31 - 1),
    "max_depth": (1, 10_000),
    "min_samples_leaf": (1, 2**31 - 1),
}


def make_head(kind: str, seed: int = 0, folder: Path | None = None, **options):
    """A fresh head of `kind`; `options` are the MLP's (epochs, patience, hidden, ...)."""
    if kind in SklearnHead.kinds:
        return SklearnHead(kind, seed=seed)
    check_head_kind(kind)
    return MLPHead(seed=seed, folder=folder, **options)


def check_head_kind(kind: str) -> None:
    if kind not in (*HEAD_KINDS, AUTO):
        raise SettingError(
            f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)} or {AUTO}"
        )


def train_head(
    features_dir: str | os.PathLike,
    head_dir: str | os.PathLike,
    kind: str = "logreg",
    val_split: float = 0.2,
    seed: int = 0,
    views_in_training: str = "all",
    given: dict[str, Any] | None = None,
    class_weight: str = "none",
    cv_folds: int = 5,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    **mlp_options,
) -> TrainResult:
    """Train a head of `kind` (or `auto`: each kind, keeping the best cross-validated one)
    on a feature store and write HEAD_DIR. `given`: hyperparameters fixed instead of
    chosen by cross-validation (keys of HYPERPARAMETER_OPTIONS; None values are not given).
    `mlp_options` (epochs, patience, hidden, dropout, lr, batch_size, tensorboard) are the
    MLP's: other kinds leave them out, and head.json records none of them.
    `memory_budget` (bytes): a store whose features do not fit it is streamed from disk."""
    given = {name: value for name, value in (given or {}).items() if value is not None}
    memory_budget = parse_memory_budget(memory_budget)
    kinds = check_train_settings(
        kind, val_split, seed, views_in_training, given, class_weight, cv_folds, mlp_options
    )
    if "mlp" not in kinds:
        mlp_options = {}
    folder = user_path(head_dir)  # a link given as -o: the folder it points to is replaced
    check_outside_artifacts(folder)
    busy = f"-o {folder}: another train is writing it; wait for it to finish or choose another"
    with OutputFolder(folder.parent) as parent, output_lock(parent, folder.name, busy):
        check_replaceable(parent, folder.name, HEAD_LAYOUT)
        parent.remove_leftovers(folder.name)  # a killed train's staging folder
        data = load_labelled_features(features_dir, memory_budget)
        if data.streamed:
            _say_streamed(data)
        train, val = split_by_image(data, val_split, seed, views_in_training)
        cv_rows = data.budget.cv_rows(CV_MAX_ROWS) if data.streamed else CV_MAX_ROWS
        folds, fold_images = image_folds(
            data, train, cv_folds, seed, views_in_training, max_rows=cv_rows
        )
        rows = TrainingRows(data, train, val, folds, fold_images)
        weight = None if class_weight == "none" else class_weight
        # HEAD_DIR appears complete or not at all
        with staged_folder(parent, folder.name, HEAD_LAYOUT) as staging:
            candidates = _train_candidates(kinds, rows, given, weight, seed, staging, mlp_options)
            chosen = best_candidate(candidates)
            metrics = _save_head(staging, folder, chosen, rows)
            training = {
                "val_split": val_split,
                "seed": seed,
                "train_images": rows.train_images,
                "val_images": len(val),
                "train_rows": len(train),
                "train_rows_used": chosen.rows_used,
                "memory_budget": memory_budget,
                "streamed": data.streamed,
                "views_in_training": views_in_training,
                "class_weight": class_weight,
                "epochs_run": getattr(chosen.head, "epochs_run_", None),
            }
            auto = [candidate.row() for candidate in candidates] if kind == AUTO else None
            _write_head_json(staging, chosen, data, metrics, training, auto)
    return _result(chosen, rows, folder, metrics, auto)


def _train_candidates(kinds, rows, given, class_weight, seed, staging, mlp_options):
    """Each kind trained; with several (--head auto), one that cannot train on these
    images is left out with a line why, unless none can."""
    auto = len(kinds) > 1
    candidates = []
    for kind in kinds:
        try:
            candidates.append(
                train_candidate(
                    kind, rows, given, class_weight, seed, staging.path, mlp_options, auto
                )
            )
        except TrainingDataError as error:
            if not auto or (kind == kinds[-1] and not candidates):
                raise
            log.info("--head auto: leaving out %s: %s", kind, error)
    return candidates


def _say_streamed(data) -> None:
    features = len(data.paths) * data.dim * 4
    log.info("%s rows: their features (%s) take about %d times that to train on in memory, "
             "more than --memory-budget %s; streaming them from the store, about %s rows at a "
             "time", f"{len(data.paths):,}", shown(features), IN_MEMORY_COPIES,
             shown(data.budget.total), f"{data.budget.window_rows():,}")  # fmt: skip


def _result(chosen: Candidate, rows: TrainingRows, folder: Path, metrics, auto) -> TrainResult:
    selection = chosen.selection
    return TrainResult(
        kind=chosen.kind,
        accuracy=None if chosen.metrics is None else chosen.metrics["accuracy"],
        train_images=rows.train_images,
        val_images=len(rows.val),
        head_dir=folder,
        report_dir=folder / "report",
        epochs_run=getattr(chosen.head, "epochs_run_", None),
        metrics=metrics,
        cv_score=None if selection is None else selection.score,
        cv_scoring=None if selection is None else selection.scoring,
        candidates=auto,
        train_rows=len(rows.train),
        train_rows_used=chosen.rows_used,
    )


def check_train_settings(
    kind, val_split, seed, views_in_training, given, class_weight, cv_folds, mlp_options
) -> tuple[str, ...]:
    """Every setting, before any work (a SettingError names the first that cannot work);
    returns the kinds to train."""
    check_head_kind(kind)
    check_range("--val-split", val_split, 0, 1, high_open=True)
    check_seed(seed)
    check_range("--cv-folds", cv_folds, 2)
    if views_in_training not in VIEWS_IN_TRAINING:
        raise SettingError(
            f"--views-in-training must be one of {', '.join(VIEWS_IN_TRAINING)}, "
            f"got {views_in_training!r}"
        )
    if class_weight not in CLASS_WEIGHTS:
        raise SettingError(
            f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}, got {class_weight!r}"
        )
    for name, value in given.items():
        option = HYPERPARAMETER_OPTIONS[name]
        takers = [k for k in HEAD_KINDS if name in GRIDS[k]]
        if kind not in (*takers, AUTO):
            raise SettingError(f"{option} is for --head {' or '.join(takers)} (or auto), "
                               f"not {kind}")  # fmt: skip
        low, high = HYPERPARAMETER_RANGES[name]
        check_range(option, value, low, high)
    kinds = _kinds_to_train(kind, class_weight)
    if "mlp" in kinds:
        check_mlp_options(seed=seed, **mlp_options)
    return kinds


def _kinds_to_train(kind: str, class_weight: str) -> tuple[str, ...]:
    """`kind`, or for auto every kind that can train here (a line says which cannot)."""
    unweighted = [k for k in HEAD_KINDS if k not in CLASS_WEIGHTED_KINDS]
    if kind != AUTO:
        if class_weight != "none" and kind in unweighted:
            weighted = ", ".join(CLASS_WEIGHTED_KINDS)
            raise SettingError(
                f"--class-weight {class_weight}: the {kind} head has no class weights; choose "
                f"--head {weighted} or auto, or leave it out"
            )
        return (kind,)
    kinds = list(HEAD_KINDS)
    if class_weight != "none":
        log.info("--head auto: leaving out %s (no class weights)", ", ".join(unweighted))
        kinds = [k for k in kinds if k not in unweighted]
    if missing_packages():
        log.info("--head auto: leaving out mlp (it needs tensorflow: %s)", INSTALL)
        kinds.remove("mlp")
    return tuple(kinds)


def _save_head(staging: OutputFolder, final: Path, chosen: Candidate, rows: TrainingRows):
    """Save the chosen head and its report into `staging` (HEAD_DIR `final` once renamed);
    returns the report's metrics: on the validation images, or without any, on the
    cross-validation's out-of-fold predictions."""
    data, head = rows.data, chosen.head
    head.save(staging.path, data.dim)
    vouch(staging.path / "model.onnx", (data.dim,), "float32", cache_root())  # ours
    staging.remove_tree("checkpoints")  # the best weights are in model.onnx
    if chosen.kind != "mlp":  # --head auto: the MLP it tried and did not keep
        with staging.subfolder("report") as report:
            report.remove_file("history.csv")
        staging.remove_tree("logs")
    if chosen.metrics is not None:
        metrics, title = chosen.metrics, f"{chosen.kind} head, validation"
        evaluated, probabilities = rows.val, chosen.probabilities
    else:
        selection = chosen.selection
        evaluated, probabilities = selection.held_out, selection.probabilities
        metrics = classification_metrics(selection.y_true, probabilities, data.classes)
        metrics["scored_on"] = (
            f"out-of-fold predictions of the {selection.folds}-fold cross-validation that also "
            "chose the hyperparameters (no held-out images: --val-split 0); a little optimistic"
        )
        title = f"{chosen.kind} head, cross-validated (no held-out images)"
    paths = [data.paths[row] for row in evaluated]
    mistakes = misclassified_rows(paths, data.y[evaluated], probabilities, data.classes)
    with staging.subfolder("report") as report:
        write_report(report, metrics, title, final / "report", misclassified=mistakes,
                     images_dir=data.images_dir, about=_about(chosen, rows))  # fmt: skip
    return metrics


def _about(chosen: Candidate, rows: TrainingRows) -> dict[str, Any]:
    """What the report page says was trained on what."""
    settings = {k: v for k, v in chosen.head.hyperparameters().items() if k != "estimator"}
    fingerprint = rows.data.fingerprint
    about = {
        "head": chosen.kind,
        "hyperparameters": settings,
        "features": f"{fingerprint.get('backbone')} ({fingerprint.get('weights')}), "
        f"{fingerprint.get('image_size')} px, {fingerprint.get('dim')} dimensions",
        "images": f"{rows.train_images} training, {len(rows.val)} validation",
    }
    if chosen.selection is not None:
        about["chosen by"] = f"{chosen.selection.record()['method']}: " + (
            f"{chosen.selection.scoring.replace('_', ' ')} {chosen.selection.score:.3f}"
        )
    return about


def _write_head_json(
    folder: OutputFolder,
    chosen: Candidate,
    data,
    metrics: dict[str, Any],
    training: dict[str, Any],
    auto: list[dict[str, Any]] | None,
) -> None:
    selection = chosen.selection
    scores = {
        "val_accuracy": None if chosen.metrics is None else metrics["accuracy"],
        "val_balanced_accuracy": None if chosen.metrics is None else metrics["balanced_accuracy"],
    }
    if selection is not None:
        scores[f"cv_{selection.scoring}"] = selection.score
    description = {
        "kind": chosen.kind,
        "classes": data.classes,
        "input": {"name": ONNX_INPUT, "dim": data.dim, "dtype": "float32"},
        "output": "probabilities",
        "hyperparameters": chosen.head.hyperparameters(),
        "selection": None if selection is None else selection.record(),
        **({"auto": auto} if auto else {}),
        "training": training,
        "fingerprint": data.fingerprint,
        "metrics": scores,
    }
    folder.write_text(HEAD_FILE, json.dumps(description, indent=2, default=str) + "\n")
