"""Keras model -> ONNX file, for every Keras model headstart saves (MLP head, CNNs)."""

from __future__ import annotations

from pathlib import Path

from ..extractor.backbone import OPSET
from ..extractor.keras_export import converted


def save_keras_as_onnx(
    model, input_shape: tuple, input_name: str, output_name: str, path: Path
) -> Path:
    """Export `model` in inference mode (dropout and augmentation off) with one float32
    input of `input_shape` (None for any size) and one output, to `path`."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec(input_shape, tf.float32, name=input_name),)

    # Through a tf.function in inference mode: tf2onnx 1.17's from_keras loses the output
    # of a Keras 3 model with Dropout (KeyError on a keras_tensor name).
    @tf.function(input_signature=signature)
    def inference(inputs):
        return {output_name: model(inputs, training=False)}

    converted(
        lambda: tf2onnx.convert.from_function(
            inference, input_signature=signature, opset=OPSET, output_path=str(path)
        )
    )
    return Path(path)
