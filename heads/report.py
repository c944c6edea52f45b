"""Reports: metrics.json (accuracy, per-class precision/recall/F1, confusion matrix),
confusion_matrix.png, and for Keras models curves.png from history.csv."""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import warnings
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..extractor.safe_files import OutputFolder
from ..extractor.terminal import shortened
from .report_page import THUMBNAILS, build_page, write_page_data

log = logging.getLogger("headstart")

REPORT_FILES = (
    "metrics.json",
    "confusion_matrix.png",
    "history.csv",
    "curves.png",
    "errors.csv",
    "misclassified.csv",
    "page.json",
    "index.html",
)
TENSORBOARD_FILES = "logs/*events.out.tfevents.*"  # under logs/train/, logs/validation/
IMBALANCED = 1.5  # classes are imbalanced when the largest has this many times the smallest


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    return metrics_of_predictions(y_true, probabilities.argmax(axis=1), classes)


def metrics_of_predictions(
    y_true: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """classification_metrics from the predicted classes alone (all they need)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0
    )
    present = support > 0
    return {
        "accuracy": float((predicted == y_true).mean()),
        # the mean of the recalls of the classes present: chance is 1/classes, however
        # many images each class has
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "imbalanced": bool(present.any() and support.max() >= IMBALANCED * support[present].min()),
        "images": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "classes": classes,  # rows: true class, columns: predicted class
            "matrix": confusion_matrix(y_true, predicted, labels=labels).tolist(),
        },
    }


def recall_line(metrics: dict[str, Any], shown: int = 10) -> str:
    """Balanced accuracy and the lowest per-class recalls, for imbalanced classes."""
    recalls = sorted(
        (m["recall"], name) for name, m in metrics["per_class"].items() if m["support"]
    )
    listed = ", ".join(f"{shortened(name, 30)} {recall:.2f}" for recall, name in recalls[:shown])
    more = f" (the {shown} lowest of {len(recalls)})" if len(recalls) > shown else ""
    return (
        f"balanced accuracy {metrics['balanced_accuracy']:.3f} (classes are imbalanced); "
        f"recall per class{more}: {listed}"
    )


def is_report_file(name: str) -> bool:
    """A name headstart writes in a report folder."""
    return name in REPORT_FILES or fnmatch.fnmatchcase(name, THUMBNAILS)


def write_report(
    report: OutputFolder,
    metrics: dict[str, Any],
    title: str,
    final: Path | None = None,
    *,
    misclassified: list[dict[str, Any]] | None = None,
    images_dir: str | Path | None = None,
    about: dict[str, Any] | None = None,
) -> Path:
    """Write the report into the folder `report` from `metrics`; returns its path. `final`:
    where the report will be once its staging folder is renamed (for messages).
    `misclassified` (misclassified_rows), `images_dir` (where their paths are) and `about`
    (what was trained on what) make the page's gallery and description.
    Each file is written atomically; metrics.json comes first, and a picture that cannot be
    drawn is a warning, not a failure: it never loses the numbers nor a trained model."""
    for name in REPORT_FILES:
        report.remove_leftovers(name)  # what a killed run left half-written
    report.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_page_data(report, title, images_dir, about, misclassified)
    confusion = metrics["confusion_matrix"]
    if metrics.get("imbalanced"):
        title += f"\nbalanced accuracy {metrics['balanced_accuracy']:.3f} (classes imbalanced)"
    shown = final or report.path
    draw = partial(_draw, report, shown)
    draw("confusion_matrix.png", lambda into: _plot_confusion(confusion, into, title))
    if report.check_file_name("history.csv"):
        with report.open_existing("history.csv", "r") as history:
            rows = list(csv.DictReader(history))
        if rows:
            draw("curves.png", lambda into: _plot_curves(rows, into))
    build_page(report)
    return report.path


def _draw(report: OutputFolder, shown: Path, name: str, plot) -> None:
    """Draw `name` with `plot(handle)`; a plotting failure is one warning line (a full
    disk stays an error). `shown`: the report folder as messages name it."""
    import matplotlib

    with warnings.catch_warnings(record=True) as caught:  # matplotlib: one per glyph
        warnings.simplefilter("always")
        try:
            # class names are drawn as they are: "$5_to_$10" is not TeX to render
            with matplotlib.rc_context({"text.parse_math": False}):
                with report.writing(name) as handle:
                    plot(handle)
        except OSError:
            raise
        except Exception as error:  # matplotlib, fonts, a backend: the picture only
            log.warning("could not draw %s (%s: %s); metrics.json has the numbers",
                        shown / name, type(error).__name__, error)  # fmt: skip
            return
    if _glyphs_missing(caught):
        log.warning("some class names use characters the picture's font lacks: they show "
                    "as boxes in %s (metrics.json has them right)", shown / name)  # fmt: skip


def _glyphs_missing(caught: list) -> bool:
    return any("missing from font" in str(warning.message) for warning in caught)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


CLASSES_SHOWN = 30  # above this, the picture shows the most confused classes only


def most_confused(matrix: np.ndarray, classes: list[str], shown: int = CLASSES_SHOWN):
    """The `shown` classes with the most errors (wrong predictions of them plus wrong
    predictions as them), in their original order, and their rows and columns."""
    if len(classes) <= shown:
        return matrix, list(classes)
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    keep = np.sort(np.argsort(-errors, kind="stable")[:shown])
    return matrix[np.ix_(keep, keep)], [classes[i] for i in keep]


def _plot_confusion(confusion: dict[str, Any], path: Path | IO, title: str) -> None:
    """The confusion matrix as a picture of bounded size (at most 17 inches at 100 dpi):
    every class up to CLASSES_SHOWN, else the most confused ones (the whole matrix is in
    metrics.json)."""
    plt = _pyplot()
    full = np.array(confusion["matrix"])
    matrix, classes = most_confused(full, confusion["classes"])
    if len(classes) < len(full):
        title += f"\n{len(classes)} most confused of {len(full)} classes (all in metrics.json)"
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    names = [shortened(name, 40) for name in classes]  # metrics.json has them whole
    axes.set_xticks(range(len(classes)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def _plot_curves(rows: list[dict[str, str]], path: Path | IO) -> None:
    plt = _pyplot()
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, name in (("", "train"), ("val_", "validation")):
            values = _numbers([row.get(prefix + metric) for row in rows])
            if values is not None:  # CSVLogger writes NA without validation (--val-split 0)
                axes.plot(epochs, values, label=name)
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def _numbers(values: list) -> list[float] | None:
    """The values as floats, or None when one is missing or not a number."""
    try:
        return [float(value) for value in values]
    except (TypeError, ValueError):
        return None
