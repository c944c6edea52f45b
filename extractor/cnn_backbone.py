"""A CNN trained by `headstart train-cnn` as the backbone of `embed --backbone MODEL_DIR`:
its penultimate layer (named `features`) exported to ONNX once, cached like InceptionV3's.

The model is read from MODEL_DIR/model.keras with Keras' safe_mode (no code runs from the
file), cut at `features`, and given embed's uint8 pixel input (the model rescales inside).
Its image size and colour mode are the ones it was trained with; the fingerprint records
them, with the model's weights hash, so heads trained on these features predict from images
with the same network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .backbone import (
    EXTRACTOR_VERSION,
    OPSET,
    CachedBackbone,
    cache_root,
    cached_export,
    sha256_of_arrays,
    sha256_of_file,
)
from .declared import check_cnn_input
from .errors import SettingError
from .json_input import parse_json
from .keras_export import model_to_onnx
from .preprocess import PIXELS_INPUT, prepend_preprocessing
from .tensorflow_needed import import_keras, require_tensorflow

log = logging.getLogger("headstart")

KERAS_FILE, DESCRIPTION_FILE = "model.keras", "model.json"
FEATURES_LAYER = "features"
CNN_PREPROCESSING = "{color_mode}; bilinear resize as keras load_img; exif orientation; " + (
    "rescaling inside the model"
)


def is_cnn_model_dir(value: str | os.PathLike) -> bool:
    folder = Path(value)
    return (folder / DESCRIPTION_FILE).is_file() and (folder / KERAS_FILE).is_file()


def cnn_input(model_dir: Path) -> dict[str, Any]:
    """The `input` section of MODEL_DIR/model.json: image_size, color_mode, channels."""
    path = Path(model_dir) / DESCRIPTION_FILE
    try:
        description = parse_json(path.read_text())
        if not isinstance(description, dict) or "input" not in description:
            raise ValueError("no input section")
        return check_cnn_input(description["input"], f"{path}: input")
    except (OSError, ValueError) as error:
        raise SettingError(f"{path} is not a train-cnn model description ({error})") from None


def ensure_cnn_backbone(model_dir: str | os.PathLike) -> CachedBackbone:
    """The cached ONNX export of MODEL_DIR's penultimate layer, exported first if needed."""
    folder = Path(model_dir).resolve()
    keras_file = folder / KERAS_FILE
    model_input = cnn_input(folder)
    try:
        model_sha = sha256_of_file(keras_file)
    except OSError as error:
        raise SettingError(f"{keras_file} cannot be read ({error.strerror})") from None
    # model.json's input is part of the key: the export is cut to that image size
    key_source = json.dumps(
        {"model": model_sha, "input": model_input, "opset": OPSET, "version": EXTRACTOR_VERSION},
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    cached = cached_export(
        cache_root() / "models" / f"cnn-{key}",
        lambda onnx_path: _export(keras_file, model_input, onnx_path),
        f"exporting the {FEATURES_LAYER!r} layer of {folder} to ONNX",
        can_export=lambda: require_tensorflow(_purpose(folder)),
    )
    # The same network may have been exported from a copy elsewhere: features record the
    # folder they were made from now, where predict can find it again.
    return CachedBackbone(cached.onnx_path, {**cached.manifest, "weights": str(folder)})


def _purpose(folder: Path) -> str:
    return f"using {folder} as a backbone (its ONNX export, once; then cached)"


def _export(keras_file: Path, model_input: dict[str, Any], onnx_path: Path) -> dict[str, Any]:
    keras = import_keras(_purpose(keras_file.parent))
    import onnx

    try:
        model = keras.saving.load_model(keras_file, safe_mode=True, compile=False)
        features = model.get_layer(FEATURES_LAYER)
    except Exception as error:  # Keras raises plain ValueErrors and others
        raise SettingError(f"cannot use {keras_file} as a backbone ({error})") from None
    cut = keras.Model(model.inputs, features.output)
    size, channels = int(model_input["image_size"]), int(model_input.get("channels", 3))
    try:
        proto = model_to_onnx(cut, (None, size, size, channels), "scaled", "features", OPSET)
    except Exception as error:  # a model.keras that does not take model.json's input
        said = [line.strip() for line in str(error).strip().splitlines()]
        raise SettingError(
            f"{keras_file} does not take the {size}x{size}x{channels} images that "
            f"{DESCRIPTION_FILE} declares ({said[-1][:300] if said else type(error).__name__}); "
            "the model folder is damaged or was edited"
        ) from None
    onnx.save(prepend_preprocessing(proto, "scaled", "inside"), str(onnx_path))
    color_mode = model_input["color_mode"]
    return {
        "backbone": f"train-cnn {model.name}",
        "weights": str(keras_file.parent),
        "weights_sha256": sha256_of_arrays(cut.get_weights()),
        "onnx_sha256": sha256_of_file(onnx_path),
        "pooling": f"layer {FEATURES_LAYER!r}",
        "dim": int(features.output.shape[-1]),
        "opset": OPSET,
        "extractor_version": EXTRACTOR_VERSION,
        "input": f"uint8 NHWC pixels ({PIXELS_INPUT}), {size}x{size}x{channels}",
        "fixed_image_size": size,
        "color_mode": color_mode,
        "preprocessing": CNN_PREPROCESSING.format(color_mode=color_mode),
    }
