"""`headstart info PATH`: what a feature store, a head folder or an exported model holds,
as a nested dict the CLI prints (or dumps as JSON)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..extractor.feature_rows import store_schema
from ..extractor.fingerprint import DEFAULTS
from ..extractor.json_input import parse_json
from ..extractor.store import ERRORS_FILE, FeatureStore, is_feature_store
from .artifact import CNN_FILE, HEAD_FILE, load_cnn_model, load_head
from .errors import HeadstartError

FINGERPRINT_SHOWN = (
    "backbone", "weights", "image_size", "dim", "precision", "decode", "views", "store_dtype",
    "preprocessing",
)  # fmt: skip


def describe(path: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """What `path` holds, from its metadata (a store's labels, not its features). With
    `verify`, every row of a store is read and checked, and a model's network run once."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _describe_exported(path)
    if (path / CNN_FILE).is_file():
        return _describe_cnn(path, verify)
    if (path / HEAD_FILE).is_file():
        return _describe_head(path, verify)
    if path.is_dir() and is_feature_store(path):
        return _describe_store(path, verify)
    if not path.exists():
        raise HeadstartError(f"{path} does not exist")
    raise HeadstartError(
        f"{path} is neither a feature store (from embed), a head folder (from train), a model "
        "folder (from train-cnn) nor an exported .onnx model"
    )


def _fingerprint_summary(fingerprint: dict[str, Any]) -> dict[str, Any]:
    shown = {key: fingerprint.get(key, DEFAULTS.get(key)) for key in FINGERPRINT_SHOWN}
    views = shown.get("views")
    if isinstance(views, dict):
        shown["views"] = f"{views['views']} per image ({', '.join(views['augment'])})"
    elif views is None:
        shown["views"] = "none"
    return shown


def _describe_store(path: Path, verify: bool) -> dict[str, Any]:
    store = FeatureStore(path)
    fingerprint = store.fingerprint()
    views = bool(fingerprint.get("views"))
    if verify:  # every row, checked; rows a killed compaction left twice counted once
        table = store.read_table(fingerprint)
    else:  # the label column only: a second or so per million rows
        columns = ["label"] + (["view"] if views else [])
        parts = [
            part.replace_schema_metadata(None) for _, part in store.snapshot(fingerprint, columns)
        ]
        empty = store_schema(fingerprint["dim"], fingerprint, views).empty_table().select(columns)
        table = pa.concat_tables(parts) if parts else empty
    images = table.filter(pc.equal(table["view"], 0)) if views else table
    labels = Counter(
        {
            item["values"].as_py(): item["counts"].as_py()
            for item in pc.value_counts(images["label"])
        }
    )
    unlabelled = labels.pop(None, 0)
    description = {
        "what": "feature store",
        "path": str(path),
        "images": images.num_rows,
        "rows": table.num_rows,
        "parts": len(store.parts()),
        "images per class": dict(sorted(labels.items())),
        "unlabelled images": unlabelled,
        "images folder": store.images_dir() or "not recorded yet (its next embed records it)",
        "extractor": _fingerprint_summary(fingerprint),
    }
    if verify:
        description["verified"] = (
            f"every row read: columns, paths and features ({table.num_rows} rows) as they should be"
        )
    last_run = store.last_run()
    if last_run:
        description["last run"] = last_run
        if "status" in last_run:
            last_run["status"] = store.writer_state()
    errors = path / ERRORS_FILE
    if errors.is_file():
        with open(errors, newline="", encoding="utf-8") as handle:
            description["images that could not be read"] = max(0, len(list(csv.reader(handle))) - 1)
    return description


def _describe_head(path: Path, verify: bool) -> dict[str, Any]:
    head = load_head(path)
    if verify:
        head.classifier  # noqa: B018 -- model.onnx probed and run once: it must fit head.json
    info = head.description
    report = path / "report" / "metrics.json"
    description = {
        "what": f"{head.kind} head",
        "path": str(path),
        "classes": head.classes,
        "features": head.fingerprint.get("dim"),
        "extractor": _fingerprint_summary(head.fingerprint),
        "training": info.get("training", {}),
        "hyperparameters": info.get("hyperparameters", {}),
        "metrics": info.get("metrics", {}),
    }
    if info.get("selection"):  # it chose what was not given, and scored the head
        description["cross-validation"] = _tolerated(info, _selection)
    if info.get("auto"):
        description["--head auto"] = _tolerated(info, _candidates)
    if report.is_file():
        held_out = (info.get("metrics") or {}).get("val_accuracy", 0) is not None
        scored = "validation" if held_out else "cross-validated (out of fold)"
        description[f"{scored} per class"] = _tolerated(report, _per_class)
    return description


def _selection(info: dict) -> str:
    selection = info["selection"]
    scoring = selection["scoring"]
    return f"{selection['method']}: {scoring} {selection[f'cv_{scoring}']:.3f}"


def _candidates(info: dict) -> dict[str, str]:
    """--head auto's table: each kind's scores and time."""

    def score(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    return {
        row["kind"]: f"cv {score(row['cv_score'])}, validation {score(row['val_accuracy'])}, "
        f"{row['seconds']:.1f} s"
        for row in info["auto"]
    }


def _per_class(report: Path) -> dict[str, str]:
    per_class = parse_json(report.read_text()).get("per_class", {})
    return {
        name: f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, n={m['support']}"
        for name, m in per_class.items()
    }


def _tolerated(source: Path, read):
    """`read(source)`, or a line saying it is malformed: a report or table someone edited
    is shown as such, it does not stop info."""
    try:
        return read(source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"malformed ({type(error).__name__}: {error})"


def _describe_cnn(path: Path, verify: bool) -> dict[str, Any]:
    model = load_cnn_model(path)
    if verify:
        model.image_classifier("cpu")  # runs it once on a small batch, checked
    info = model.description
    return {
        "what": f"{model.arch} CNN",
        "path": str(path),
        "classes": model.classes,
        "input": info.get("input", {}),
        "parameters": _tolerated(info, _parameters),
        "layers": _tolerated(info, _layers),
        "training": info.get("training", {}),
        "settings": info.get("settings", {}),
        "metrics": info.get("metrics", {}),
    }


def _parameters(info: dict) -> dict[str, str]:
    params = info.get("params", {})
    return {"total": f"{params.get('total', 0):,}", "trainable": f"{params.get('trainable', 0):,}"}


def _layers(info: dict) -> dict[str, str]:
    return {
        row["name"]: f"{row['type']}, output {_shape(row['output_shape'])}, {row['params']:,} "
        f"parameters{'' if row.get('trainable', True) else ' (frozen)'}"
        for row in info.get("layers", [])
    }


def _shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape or []) + ")"


def _describe_exported(path: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own errors
        raise HeadstartError(f"{path} is not a readable ONNX model ({error})") from None
    metadata = {entry.key: entry.value for entry in model.metadata_props}

    def shape(value) -> list:
        return [d.dim_param or d.dim_value or "?" for d in value.type.tensor_type.shape.dim]

    description = {
        "what": "exported model" if "classes" in metadata else "ONNX model",
        "path": str(path),
        "size": f"{path.stat().st_size / 1e6:.1f} MB",
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": {i.name: shape(i) for i in model.graph.input},
        "outputs": {o.name: shape(o) for o in model.graph.output},
    }
    if "classes" in metadata:
        description["classes"] = _tolerated(path, lambda _: parse_json(metadata["classes"]))
        description["image size"] = _tolerated(path, lambda _: int(metadata["image_size"]))
        description["head"] = metadata.get("head_kind")
        description["weights"] = metadata.get("weights")
    return description
