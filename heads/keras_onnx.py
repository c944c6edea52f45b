"""Keras model -> ONNX file, for every Keras model headstart saves (MLP head, CNNs)."""

from __future__ import annotations

from pathlib import Path

from ..extractor.backbone import OPSET
from ..extractor.keras_export import model_to_onnx


def save_keras_as_onnx(
    model, input_shape: tuple, input_name: str, output_name: str, path: Path
) -> Path:
    """Export `model` in inference mode (dropout and augmentation off) with one float32
    input of `input_shape` (None for any size) and one output, to `path`."""
    import onnx

    onnx.save(model_to_onnx(model, input_shape, input_name, output_name, OPSET), str(path))
    return Path(path)
