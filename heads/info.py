"""`headstart info PATH`: what a feature store, a head folder or an exported model holds,
as a nested dict the CLI prints (or dumps as JSON)."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from extractor.store import ERRORS_FILE, FeatureStore, is_feature_store

from .artifact import CNN_FILE, HEAD_FILE, load_cnn_model, load_head
from .errors import HeadstartError

FINGERPRINT_SHOWN = ("backbone", "weights", "image_size", "dim", "preprocessing")


def describe(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return _describe_exported(path)
    if (path / CNN_FILE).is_file():
        return _describe_cnn(path)
    if (path / HEAD_FILE).is_file():
        return _describe_head(path)
    if path.is_dir() and is_feature_store(path):
        return _describe_store(path)
    if not path.exists():
        raise HeadstartError(f"{path} does not exist")
    raise HeadstartError(
        f"{path} is neither a feature store (from embed), a head folder (from train), a model "
        "folder (from train-cnn) nor an exported .onnx model"
    )


def _fingerprint_summary(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {key: fingerprint.get(key) for key in FINGERPRINT_SHOWN}


def _describe_store(path: Path) -> dict[str, Any]:
    store = FeatureStore(path)
    fingerprint = store.fingerprint()
    columns = ["path", "sha256", "label"] + (["view"] if fingerprint.get("views") else [])
    labels = Counter(store.read_table(fingerprint, columns)["label"].to_pylist())
    unlabelled = labels.pop(None, 0)
    description = {
        "what": "feature store",
        "path": str(path),
        "rows": sum(labels.values()) + unlabelled,
        "parts": len(store.parts()),
        "classes": dict(sorted(labels.items())),
        "unlabelled rows": unlabelled,
        "images folder": store.images_dir() or "not recorded yet (its next embed records it)",
        "extractor": _fingerprint_summary(fingerprint),
    }
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


def _describe_head(path: Path) -> dict[str, Any]:
    head = load_head(path)
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
    if report.is_file():
        per_class = json.loads(report.read_text()).get("per_class", {})
        description["validation per class"] = {
            name: f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, n={m['support']}"
            for name, m in per_class.items()
        }
    return description


def _describe_cnn(path: Path) -> dict[str, Any]:
    model = load_cnn_model(path)
    info = model.description
    params = info.get("params", {})
    layers = {
        row["name"]: f"{row['type']}, output {_shape(row['output_shape'])}, {row['params']:,} "
        f"parameters{'' if row.get('trainable', True) else ' (frozen)'}"
        for row in info.get("layers", [])
    }
    return {
        "what": f"{model.arch} CNN",
        "path": str(path),
        "classes": model.classes,
        "input": info.get("input", {}),
        "parameters": {
            "total": f"{params.get('total', 0):,}",
            "trainable": f"{params.get('trainable', 0):,}",
        },
        "layers": layers,
        "training": info.get("training", {}),
        "settings": info.get("settings", {}),
        "metrics": info.get("metrics", {}),
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
        description["classes"] = json.loads(metadata["classes"])
        description["image size"] = int(metadata["image_size"])
        description["head"] = metadata.get("head_kind")
        description["weights"] = metadata.get("weights")
    return description
