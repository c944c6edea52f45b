"""A report's page: index.html in the report folder, readable offline (no server, no
script, only files of the report folder), with the metrics, the confusion matrix, the
training curves, what was trained on what, and thumbnails of the misclassified images,
worst first.

It is built from the report folder's own files: metrics.json, page.json (title, images
folder, what was trained on what), misclassified.csv, and the pictures. `headstart report`
builds it again for a report written before, or after its images folder came back."""

from __future__ import annotations

import csv
import fnmatch
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.json_input import parse_json
from ..extractor.safe_files import OutputFolder

log = logging.getLogger("headstart")

PAGE_FILE, PAGE_DATA, MISCLASSIFIED = "index.html", "page.json", "misclassified.csv"
GALLERY_SHOWN = 48  # thumbnails on a page, worst first (misclassified.csv lists them all)
THUMBNAIL = 160  # pixels, the longer side
THUMBNAILS = "gallery-[0-9][0-9][0-9].png"  # their names (fnmatch), beside the report's files


def misclassified_rows(paths, y_true, probabilities, classes) -> list[dict[str, Any]]:
    """The wrongly predicted images, the most confident mistakes first."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(predicted)), predicted]
    return misclassified_of_predictions(paths, y_true, predicted, confidence, classes)


def misclassified_of_predictions(
    paths, y_true, predicted, confidence, classes
) -> list[dict[str, Any]]:
    """misclassified_rows from each image's predicted class and its probability."""
    wrong = np.flatnonzero(predicted != y_true)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    return [
        {
            "path": paths[i],
            "label": classes[y_true[i]],
            "prediction": classes[predicted[i]],
            "probability": round(float(confidence[i]), 6),
        }
        for i in order
    ]


def write_page_data(report: OutputFolder, title: str, images_dir, about, rows) -> None:
    """page.json and misclassified.csv: what the page is built from."""
    data = {"title": title, "images_dir": None if images_dir is None else str(images_dir)}
    report.write_text(PAGE_DATA, json.dumps({**data, "about": about or {}}, indent=2) + "\n")
    if rows is not None:
        with report.writing(MISCLASSIFIED, "w") as handle:
            writer = csv.DictWriter(handle, ["path", "label", "prediction", "probability"])
            writer.writeheader()
            writer.writerows(rows)


def build_page(report: OutputFolder, about_fallback: dict[str, Any] | None = None) -> Path:
    """Write index.html (and its thumbnails) from the report folder's files; returns its
    path. `about_fallback`: what was trained on what, for a report without page.json."""
    page = _read_json(report, PAGE_DATA) or {}
    metrics = _read_json(report, "metrics.json") or {}
    about = page.get("about") or about_fallback or {}
    rows = _read_misclassified(report)
    for name in report.names():  # an earlier page's thumbnails
        if fnmatch.fnmatchcase(name, THUMBNAILS):
            report.remove_file(name)
    gallery = _gallery(report, page.get("images_dir"), rows)
    pictures = [name for name in ("confusion_matrix.png", "curves.png") if report.entry(name)]
    text = _page(page.get("title") or "headstart report", metrics, about, pictures, gallery)
    report.write_text(PAGE_FILE, text)
    return report.path / PAGE_FILE


def _read_json(report: OutputFolder, name: str):
    if not report.check_file_name(name):
        return None
    with report.open_existing(name) as handle:
        try:
            value = parse_json(handle.read(16 << 20))
        except ValueError:
            log.warning("%s is not valid JSON; the page leaves it out", report.path / name)
            return None
    return value if isinstance(value, dict) else None


def _read_misclassified(report: OutputFolder) -> list[dict[str, str]] | None:
    if not report.check_file_name(MISCLASSIFIED):
        return None
    with report.open_existing(MISCLASSIFIED) as handle:
        text = handle.read(64 << 20).decode("utf-8", "replace")
    return [row for row in csv.DictReader(io.StringIO(text)) if row.get("path")]


def _gallery(report: OutputFolder, images_dir, rows) -> dict[str, Any]:
    """The thumbnails written, and what the page says of the images folder."""
    if rows is None:
        return {"note": "This report was written before the gallery of misclassified images: "
                        "train again, or predict again, to list them.", "items": []}  # fmt: skip
    folder = Path(images_dir) if isinstance(images_dir, str) and images_dir else None
    note = ""
    if folder is None:
        note = "The images folder is not recorded: the mistakes are listed without pictures."
    elif not folder.is_dir():
        note = (f"The images folder {folder} is not there (moved or deleted): the mistakes "
                "are listed without pictures.")  # fmt: skip
        folder = None
    items = []
    for number, row in enumerate(rows[:GALLERY_SHOWN], 1):
        picture, problem = None, ""
        if folder is not None:
            picture, problem = _thumbnail(report, folder, row["path"], number)
        items.append({**row, "picture": picture, "problem": problem})
    return {"note": note, "items": items, "total": len(rows)}


def _thumbnail(report: OutputFolder, folder: Path, relative: str, number: int):
    """(file name, "") of the image's thumbnail in the report, or (None, why not). The path
    comes from a file anyone may have edited: it must stay inside the images folder."""
    from PIL import Image, ImageOps

    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts or "\0" in relative:
        return None, "not a path inside the images folder"
    root = os.path.realpath(folder)
    path = os.path.realpath(folder / relative)
    if os.path.commonpath([root, path]) != root:
        return None, "a link out of the images folder"
    if not os.path.isfile(path):
        return None, "no longer a file in the images folder"
    try:
        with Image.open(path) as image:  # Pillow's decompression-bomb limit stays on
            image.draft("RGB", (2 * THUMBNAIL, 2 * THUMBNAIL))  # a big JPEG: decoded small
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return None, f"could not be read ({type(error).__name__})"
    name = f"gallery-{number:03d}.png"
    with report.writing(name) as handle:  # a full disk is an error, as for any report file
        image.save(handle, format="PNG")
    return name, ""


def escaped(value: Any) -> str:
    """Text from outside (class names, paths) as HTML text or attribute: nothing in it is
    markup, and `$` stays a dollar for any math renderer a viewer may have."""
    return html.escape(str(value), quote=True).replace("$", "&#36;")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.8em; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) td { background: #f4f4f4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.summary { font-size: 1.2em; } .note { color: #a33; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 170px; font-size: 0.8em; overflow-wrap: anywhere; }
figure img { display: block; max-width: 160px; max-height: 160px; }
.missing { width: 160px; height: 60px; background: #eee; color: #777; padding: 4px; }
img.plot { max-width: 100%; }
"""


def _page(title, metrics, about, pictures, gallery) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escaped(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escaped(title)}</h1>",
        _summary(metrics),
        _about(about),
        _per_class(metrics),
        *(_picture(name) for name in pictures),
        _gallery_html(gallery),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _summary(metrics: dict[str, Any]) -> str:
    if "accuracy" not in metrics:
        return '<p class="note">metrics.json is missing or malformed.</p>'
    line = f"accuracy {metrics['accuracy']:.3f} on {metrics.get('images', '?')} images"
    if metrics.get("imbalanced") and "balanced_accuracy" in metrics:
        line += f" · balanced accuracy {metrics['balanced_accuracy']:.3f} (classes imbalanced)"
    scored = f"<p>{escaped(metrics['scored_on'])}</p>" if metrics.get("scored_on") else ""
    return f'<p class="summary">{escaped(line)}</p>{scored}'


def _about(about: dict[str, Any]) -> str:
    if not about:
        return ""
    rows = "".join(
        f"<tr><th>{escaped(key)}</th><td>{escaped(_plain(value))}</td></tr>"
        for key, value in about.items()
    )
    return f"<h2>What was trained on what</h2><table>{rows}</table>"


def _plain(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)


def _per_class(metrics: dict[str, Any]) -> str:
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict):
        return ""
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
    rows = []
    for name, scores in per_class.items():
        if not isinstance(scores, dict):
            continue
        cells = "".join(
            f'<td class="number">{scores.get(key, 0):.3f}</td>'
            for key in ("precision", "recall", "f1")
        )
        support = f'<td class="number">{scores.get("support", 0)}</td>'
        rows.append(f"<tr><td>{escaped(name)}</td>{cells}{support}</tr>")
    return f"<h2>Per class</h2><table>{head}{''.join(rows)}</table>"


def _picture(name: str) -> str:
    heading = {"confusion_matrix.png": "Confusion matrix", "curves.png": "Training curves"}
    return f'<h2>{heading[name]}</h2><img class="plot" src="{name}" alt="{heading[name]}">'


def _gallery_html(gallery: dict[str, Any]) -> str:
    items = gallery["items"]
    total = gallery.get("total", len(items))
    shown = f"{len(items)} of {total}, " if total > len(items) else ""
    parts = [f"<h2>Misclassified images ({shown}most confident mistakes first)</h2>"]
    if gallery["note"]:
        parts.append(f'<p class="note">{escaped(gallery["note"])}</p>')
    if not items and "total" in gallery:
        parts.append("<p>None: every image was classified right.</p>")
    figures = []
    for item in items:
        if item["picture"]:
            picture = f'<img src="{item["picture"]}" alt="{escaped(item["path"])}">'
        else:
            picture = f'<div class="missing">{escaped(item["problem"] or "no picture")}</div>'
        caption = (
            f"true <b>{escaped(item['label'])}</b><br>predicted <b>{escaped(item['prediction'])}"
            f"</b> ({_probability(item)})<br>{escaped(item['path'])}"
        )
        figures.append(
            f'<figure class="mistake">{picture}<figcaption>{caption}</figcaption></figure>'
        )
    parts.append(f'<div class="gallery">{"".join(figures)}</div>')
    return "\n".join(parts)


def _probability(item: dict[str, str]) -> str:
    try:
        return f"{float(item['probability']):.2f}"
    except (TypeError, ValueError):
        return "?"


def rebuild_report(path: str | os.PathLike) -> Path:
    """Build the page of the report of `path` again: a head or train-cnn model folder, a
    prediction output (OUT.csv|OUT.parquet: its OUT_report folder) or a report folder.
    Returns the page's path."""
    from .errors import HeadError

    path = Path(path)
    folder, artifact = _report_folder(path)
    if not (folder / "metrics.json").is_file():
        raise HeadError(
            f"{path} has no report ({folder / 'metrics.json'} is missing); it is made by "
            "train, train-cnn, and predict on labelled images"
        )
    from .report import is_report_file

    with OutputFolder(folder, create=False) as report:
        foreign = [name for name in report.names() if not is_report_file(name)]
        if foreign:
            raise HeadError(
                f"{folder} holds {foreign[0]}, which headstart does not write in a report; "
                "it is not a report folder of headstart's"
            )
        return build_page(report, _about_from(artifact))


def _report_folder(path: Path) -> tuple[Path, Path | None]:
    """The report folder of `path`, and the head or model description beside it, if any."""
    from .errors import HeadError

    for description in ("head.json", "model.json"):
        if (path / description).is_file():
            return path / "report", path / description
    if path.is_dir() and (path / "metrics.json").is_file():
        return path, None
    if path.suffix in (".csv", ".parquet") and path.is_file():
        return path.with_name(f"{path.stem}_report"), None
    raise HeadError(
        f"{path} is not a head or model folder, a prediction output (OUT.csv or OUT.parquet) "
        "or a report folder"
    )


def _about_from(description: Path | None) -> dict[str, Any]:
    """What was trained on what, from head.json or model.json: for reports written before
    page.json."""
    if description is None:
        return {}
    try:
        info = parse_json(description.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(info, dict):
        return {}
    about = {"kind": info.get("kind") or info.get("arch")}
    for key in ("hyperparameters", "settings", "training"):
        if isinstance(info.get(key), dict):
            about[key] = {k: v for k, v in info[key].items() if k != "estimator"}
    return about
