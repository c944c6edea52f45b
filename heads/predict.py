"""`headstart predict`: a head + images or features -> one row of predictions per image.

INPUT is either a feature store, whose fingerprint must match the head's, or an images
folder, embedded on the fly with the head's extractor (the cached ONNX backbone, the recorded
image size; nothing is written next to the images). Rows come out in sorted path order.
Where the input has labels, accuracy is measured and a report like train's is written.

OUT.csv                the predictions (see prediction_file)
OUT_errors.csv         path,error of every image that could not be read (images input)
OUT_report/            metrics.json, confusion_matrix.png (labelled input)
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..extractor.errors import OutputError
from ..extractor.errors_csv import is_errors_csv, write_errors_csv
from ..extractor.progress import Progress
from ..extractor.providers import check_device
from ..extractor.safe_files import OutputFolder, as_disk_error
from ..extractor.scan import scan_images
from ..extractor.settings import check_counts, check_workers
from ..extractor.store import FeatureStore, is_feature_store
from ..extractor.stream import FeatureStream
from .artifact import Artifact, Head, load_artifact
from .errors import SettingError
from .memory import DEFAULT_MEMORY_BUDGET, MemoryBudget, parse_memory_budget, shown
from .prediction_file import (
    PredictionWriter,
    check_output_path,
    check_report_is_ours,
    errors_name,
    report_name,
)
from .report import metrics_of_predictions, write_report
from .report_page import misclassified_of_predictions
from .store_rows import StoreRows

FEATURE_CHUNK = 4096  # rows classified, and written, at a time
# What predicting from a store holds per row besides its metadata and probabilities: the
# sort keys, the labels, the scoreboard's entries and the report's mistakes
PREDICTED_ROW_BYTES = 160
PROBABILITIES_SHARE = 0.25  # of --memory-budget: more waits in a file (_ProbabilityFile)


@dataclass
class PredictSummary:
    source: str  # "images" or "features"
    out: Path
    rows: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    errors_path: Path | None = None
    labelled: int = 0
    accuracy: float | None = None
    metrics: dict | None = None  # the report's, with labelled input
    report_dir: Path | None = None
    unknown_labels: list[str] = field(default_factory=list)  # labels the head never saw
    device: str | None = None
    seconds: float = 0.0


class _Scoreboard:
    """The labelled rows' true labels and predictions, for accuracy and the report: each
    row's predicted class and its probability, not all K probabilities (a million rows of
    a thousand classes would be 4 GB)."""

    def __init__(self, classes: list[str], images_dir: str | None = None):
        self.classes, self.images_dir = classes, images_dir  # where the paths are
        self.paths: list[str] = []
        self.labels: list[str] = []
        self.predicted: list[np.ndarray] = []
        self.confidence: list[np.ndarray] = []

    def add(self, paths: list[str], labels: list[str | None], probabilities: np.ndarray) -> None:
        keep = [index for index, label in enumerate(labels) if label is not None]
        self.paths += [paths[index] for index in keep]
        self.labels += [labels[index] for index in keep]
        predicted = probabilities[keep].argmax(axis=1)
        self.predicted.append(predicted)
        self.confidence.append(probabilities[keep][np.arange(len(keep)), predicted])

    def metrics(self) -> tuple[dict, list[str]]:
        """Metrics over every labelled row; labels the head does not know count as wrong
        and get their own (all-zero) columns in the confusion matrix."""
        classes, y, predicted, _, unknown = self._scored
        return metrics_of_predictions(y, predicted, classes), unknown

    def misclassified(self) -> list[dict]:
        classes, y, predicted, confidence, _ = self._scored
        return misclassified_of_predictions(self.paths, y, predicted, confidence, classes)

    @cached_property
    def _scored(self):
        """Every row added, as classes, true and predicted indices, and the predictions'
        probabilities: once all are in."""
        unknown = sorted(set(self.labels) - set(self.classes))
        classes = self.classes + unknown
        index = {name: number for number, name in enumerate(classes)}
        y = np.array([index[label] for label in self.labels], dtype=int)
        predicted = np.concatenate(self.predicted).astype(int)
        return classes, y, predicted, np.concatenate(self.confidence), unknown


def predict(
    head_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    top_k: int = 1,
    weights: str | None = None,
    backbone: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    tta: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> PredictSummary:
    """Classify every image of `input_path` (images or features folder) with the head in
    `head_dir`; write the predictions to `out_path` (.csv or .parquet)."""
    started = time.monotonic()
    out = check_output_path(out_path)
    memory_budget = parse_memory_budget(memory_budget)
    check_counts({"--batch-size": batch_size})
    check_workers(workers)
    check_device(device)
    model = load_artifact(head_dir)
    if not 1 <= top_k <= len(model.classes):
        raise SettingError(
            f"--top-k must be between 1 and the {model.what}'s {len(model.classes)} classes, "
            f"got {top_k}"
        )
    source = Path(input_path)
    if is_feature_store(source):
        if not model.takes_features:
            raise SettingError(
                f"{head_dir} is a CNN from train-cnn: it predicts from images, and {source} is "
                "a feature store; give the images folder"
            )
        summary = _predict_features(model, source, out, top_k, tta, memory_budget)
    else:
        model.check_given_backbone(backbone)
        summary = _predict_images(
            model, source, out, top_k, (weights, backbone), device, batch_size, workers,
            progress, tta,
        )  # fmt: skip
    summary.seconds = time.monotonic() - started
    return summary


def _predict_features(
    head: Head,
    source: Path,
    out: Path,
    top_k: int,
    tta: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> PredictSummary:
    """Classify a store's rows a window of parts at a time (memory: the rows' names and
    probabilities, never all their features), then write them in path order."""
    store = FeatureStore(source)
    fingerprint = store.fingerprint()
    if fingerprint is None or not store.parts():
        raise SettingError(f"{source} holds no features")
    head.check_features(fingerprint, f"{source} was embedded", "features")
    store.warn_if_unfinished()
    rows = StoreRows.read(store, fingerprint)  # one row per (path, view), checked
    if rows.views is None and tta:
        raise SettingError(f"--tta needs views: {source} was embedded without --views")
    views = np.zeros(len(rows), np.int32) if rows.views is None else rows.views
    chosen = np.arange(len(rows)) if tta else np.flatnonzero(views == 0)
    keys = pa.table({"path": [rows.paths[row] for row in chosen], "view": views[chosen]})
    chosen = chosen[
        np.asarray(pc.sort_indices(keys, [("path", "ascending"), ("view", "ascending")]))
    ]
    position = np.empty(len(rows), np.int64)
    position[chosen] = np.arange(len(chosen))
    probabilities = _probabilities(len(chosen), len(head.classes), memory_budget, out.parent)
    held = rows.metadata_bytes() + probabilities.nbytes + len(chosen) * PREDICTED_ROW_BYTES
    window_rows = MemoryBudget(memory_budget, held, rows.dim).window_rows()
    for window, X in rows.windows(chosen, window_rows, progress="predict"):
        for start in range(0, len(window), FEATURE_CHUNK):  # the network's batches
            block = slice(start, start + FEATURE_CHUNK)
            probabilities[position[window[block]]] = head.predict_proba(X[block])
    labels = [rows.labels[row] for row in chosen]
    labelled = any(label is not None for label in labels)
    summary = PredictSummary("features", out)
    scores = _Scoreboard(head.classes, store.images_dir())

    def classified():
        for start in range(0, len(chosen), FEATURE_CHUNK):
            block = slice(start, start + FEATURE_CHUNK)
            paths = [rows.paths[row] for row in chosen[block]]
            yield paths, labels[block], probabilities[block]

    summary.rows = _write_predictions(out, head.classes, top_k, labelled, scores, classified())
    _finish(summary, scores, head)
    return summary


def _predict_images(
    model: Artifact,
    source: Path,
    out: Path,
    top_k: int,
    network: tuple[str | None, str | None],  # --weights, --backbone
    device: str,
    batch_size: int | None,
    workers: int | None,
    progress: bool,
    tta: bool = False,
) -> PredictSummary:
    scan = scan_images(source)
    extractor = model.extractor
    if tta and not extractor.views:
        raise SettingError(
            "--tta needs a head trained on features embedded with --views (its views "
            "recipe is what predict repeats)"
        )
    if not tta:
        extractor = replace(extractor, views=None)
    session, classify = model.image_classifier(device, *network)
    stream = FeatureStream(session, extractor, batch_size, workers)
    labelled = any(image.label is not None for image in scan.images)
    summary = PredictSummary("images", out, device=session.device)
    scores = _Scoreboard(model.classes, os.path.abspath(source))

    def classified():
        with Progress(len(scan.images), "predict", shown=progress) as bar:
            for rows in stream.batches(scan.images, on_image=bar.update):
                yield rows.paths, rows.labels, classify(rows.features)

    summary.rows = _write_predictions(out, model.classes, top_k, labelled, scores, classified())
    summary.errors = sorted([(r.path, r.reason) for r in scan.rejected] + stream.errors)
    with OutputFolder(out.parent) as folder:
        errors_file = errors_name(out)
        folder.remove_leftovers(errors_file)  # what a killed predict left half-written
        if summary.errors:
            summary.errors_path = write_errors_csv(folder, errors_file, summary.errors)
        elif folder.check_file_name(errors_file):
            with folder.open_existing(errors_file) as handle:
                ours = is_errors_csv(handle.read(64))
            if ours:  # a previous run's list, which no longer applies
                folder.remove_file(errors_file)
    _finish(summary, scores, model)
    return summary


def _probabilities(rows: int, classes: int, memory_budget: int, beside: Path):
    """Where the probabilities of every row wait to be written in path order: an array, or,
    when that would take more than PROBABILITIES_SHARE of the budget (a million rows of a
    thousand classes: 4 GB), a file."""
    if rows * classes * 4 <= memory_budget * PROBABILITIES_SHARE:
        return np.zeros((rows, classes), np.float32)
    return _ProbabilityFile(rows, classes, beside)


class _ProbabilityFile:
    """(rows, classes) float32 probabilities in a file without a name beside the output
    (gone with the process, however it ends; on the output's disk, not /tmp's), as an
    array that takes `[positions] = values` and gives `[block]` back: written a window's
    rows at a time, read back a block at a time. Memory: what the caller holds."""

    nbytes = 0  # of memory

    def __init__(self, rows: int, classes: int, beside: Path):
        self.row_bytes, self.classes = classes * 4, classes
        while not beside.is_dir() and beside != beside.parent:
            beside = beside.parent  # the output's folder is made when the output is written
        try:
            self.file = tempfile.TemporaryFile(dir=beside)
            os.posix_fallocate(self.file.fileno(), 0, max(1, rows * self.row_bytes))
        except OSError as error:
            raise OutputError(
                f"cannot write in {beside}: {error.strerror or error} (the probabilities of "
                f"{rows:,} rows of {classes:,} classes wait there to be written in path "
                f"order: {shown(rows * self.row_bytes)})"
            ) from None

    def __setitem__(self, positions: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(positions, kind="stable")
        positions, values = positions[order], np.asarray(values, np.float32)[order]
        runs = np.split(np.arange(len(positions)), np.flatnonzero(np.diff(positions) != 1) + 1)
        for run in runs:  # rows next to each other in the file: one write
            if len(run):
                offset = int(positions[run[0]]) * self.row_bytes
                os.pwrite(self.file.fileno(), values[run].tobytes(), offset)

    def __getitem__(self, block: slice) -> np.ndarray:
        start, stop = block.start, block.stop
        data = os.pread(self.file.fileno(), (stop - start) * self.row_bytes, start * self.row_bytes)
        return np.frombuffer(data, np.float32).reshape(-1, self.classes)


def _write_predictions(
    out: Path, classes: list[str], top_k: int, labelled: bool, scores: _Scoreboard, batches
) -> int:
    """Write the (paths, labels, probabilities) `batches`, one row per image (its views
    averaged), into `out` atomically; returns the number of rows."""
    writer = PredictionWriter(out, classes, top_k, labelled)
    try:
        averaging = _ViewAverager(writer, scores)
        for paths, labels, probabilities in batches:
            averaging.add(paths, labels, probabilities)
        averaging.finish()
        writer.commit()
    except BaseException as error:
        writer.discard()
        disk = as_disk_error(error, out.parent)
        if disk is not None:
            raise disk from None
        raise
    return writer.rows


class _ViewAverager:
    """Rows arrive in path order, an image's views together (possibly across batches);
    each image gets one output row: the mean of its views' probabilities (test-time
    augmentation), or its only row's."""

    def __init__(self, writer: PredictionWriter, scores: _Scoreboard):
        self.writer, self.scores = writer, scores
        self.path: str | None = None
        self.label: str | None = None
        self.rows: list[np.ndarray] = []

    def add(self, paths: list[str], labels: list, probabilities: np.ndarray) -> None:
        done_paths, done_labels, done = [], [], []
        for path, label, row in zip(paths, labels, probabilities):
            if path != self.path and self.rows:
                done_paths.append(self.path)
                done_labels.append(self.label)
                done.append(np.mean(self.rows, axis=0))
                self.rows = []
            self.path, self.label = path, label
            self.rows.append(row)
        self._write(done_paths, done_labels, done)

    def finish(self) -> None:
        if self.rows:
            self._write([self.path], [self.label], [np.mean(self.rows, axis=0)])
            self.rows = []

    def _write(self, paths, labels, rows) -> None:
        if paths:
            probabilities = np.asarray(rows, dtype=np.float32)
            self.writer.write(paths, labels, probabilities)
            self.scores.add(paths, labels, probabilities)


def head_about(head: Artifact, summary: PredictSummary) -> dict:
    """What the page of a prediction's report says of the head and the input."""
    return {
        head.what: f"{head.folder} ({head.kind})",
        "input": f"{summary.labelled} labelled images, from {summary.source}",
    }


def _finish(summary: PredictSummary, scores: _Scoreboard, head: Artifact) -> None:
    """Accuracy and the report, where the input had labels."""
    summary.labelled = len(scores.labels)
    if not scores.labels:
        with OutputFolder(summary.out.parent) as folder:  # an earlier run's report is stale
            name = report_name(summary.out)
            if folder.entry(name) is not None:
                check_report_is_ours(folder, name)
                folder.remove_tree(name)
        return
    metrics, summary.unknown_labels = scores.metrics()
    summary.accuracy, summary.metrics = metrics["accuracy"], metrics
    title = f"{head.kind} head on {summary.out.name}"
    name = report_name(summary.out)
    with OutputFolder(summary.out.parent) as folder:
        new = folder.entry(name) is None
        try:
            with folder.subfolder(name) as report:
                summary.report_dir = write_report(
                    report, metrics, title, misclassified=scores.misclassified(),
                    images_dir=scores.images_dir, about=head_about(head, summary),
                )  # fmt: skip
        except OutputError as error:
            if new:
                folder.remove_tree(name)  # made by this run: no half report left
            raise OutputError(
                f"{error}; the predictions were written to {summary.out}, their report was not"
            ) from None
        except BaseException:  # Ctrl-C, SIGTERM: no half report left either
            if new:
                folder.remove_tree(name)
            raise
