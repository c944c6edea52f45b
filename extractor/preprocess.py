"""Preprocess stage: uint8 RGB pixels -> the float32 input a backbone was trained on.

The arithmetic is its Keras application's `preprocess_input` (for InceptionV3 x /= 127.5;
x -= 1, in float32, in that order), so the values equal the Keras pipeline's. It runs inside the
ONNX graph, in front of the backbone: the model takes uint8 pixels, so ONNX Runtime's own
threads do the work (off the Python thread that feeds batches), and a GPU receives a quarter
of the bytes float32 would need.
"""

from __future__ import annotations

import numpy as np

PIXELS_INPUT = "pixels"  # uint8 NHWC RGB, any batch, height and width


# How each family of ImageNet networks wants its pixels (keras.applications' preprocess_input
# modes): "inception" x / 127.5 - 1; "caffe" RGB -> BGR, minus the ImageNet mean in BGR;
# "torch" x / 255, minus the mean, over the standard deviation, per RGB channel; "inside"
# nothing, the network preprocesses itself (EfficientNet, EfficientNetV2, ConvNeXt,
# MobileNetV3, and train-cnn's models).
PREPROCESSING = ("inception", "caffe", "torch", "inside")
# What a fingerprint's `preprocessing` field says: the decoding, then the family's arithmetic
# (InceptionV3's text is the one every store had before the other families, so stores and
# heads of any version compare equal)
PIXELS_TEXT = "rgb; bilinear resize as keras load_img; exif orientation; "
FAMILY_TEXT = {
    "inception": "x/127.5-1",  # InceptionV3's words since the first store: unchanged
    "caffe": "caffe: RGB to BGR, minus the ImageNet mean",
    "torch": "torch: x/255, minus the ImageNet mean, over its standard deviation",
    "inside": "inside the network",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def describe_preprocessing(preprocessing: str) -> str:
    """The fingerprint's `preprocessing` text for a network of this family."""
    return PIXELS_TEXT + FAMILY_TEXT[preprocessing]


def prepend_preprocessing(model, backbone_input: str, preprocessing: str = "inception"):
    """Give an ONNX backbone (float32 NHWC input `backbone_input`) a uint8 input named
    PIXELS_INPUT, cast to float32 and preprocessed as its family wants (PREPROCESSING), in
    the order and precision of Keras' preprocess_input. Returns the new model."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    old_input = next(i for i in graph.input if i.name == backbone_input)
    shape = [d.dim_param or d.dim_value or None for d in old_input.type.tensor_type.shape.dim]
    graph.input.remove(old_input)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, shape))
    # InceptionV3's names are those of every export before the other families came, so its
    # graph is byte for byte the same
    steps = _steps(preprocessing)
    inputs = [step[3] for step in steps] + [backbone_input]  # each op's input, then the end
    nodes = [helper.make_node("Cast", [PIXELS_INPUT], [inputs[0]], to=TensorProto.FLOAT)]
    for index, (op, constant, value, source) in enumerate(steps):
        graph.initializer.append(_constant(value, constant, op))
        extra = {"axis": 3} if op == "Gather" else {}
        nodes.append(helper.make_node(op, [source, constant], [inputs[index + 1]], **extra))
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    return model


def _steps(preprocessing: str) -> list[tuple[str, str, object, str]]:
    """The ops after the Cast, as (op, its constant's name, the constant, its input's name:
    the Cast's output for the first); the last op's output is the backbone's input."""
    if preprocessing == "inception":
        return [
            ("Div", "preprocess_scale", 127.5, "preprocess_float"),
            ("Sub", "preprocess_shift", 1.0, "preprocess_scaled"),
        ]
    if preprocessing == "caffe":
        return [
            ("Gather", "preprocess_bgr", [2, 1, 0], "preprocess_float"),
            ("Sub", "preprocess_mean", CAFFE_MEAN_BGR, "preprocess_bgr_pixels"),
        ]
    if preprocessing == "torch":
        return [
            ("Div", "preprocess_scale", 255.0, "preprocess_float"),
            ("Sub", "preprocess_mean", TORCH_MEAN, "preprocess_scaled"),
            ("Div", "preprocess_std", TORCH_STD, "preprocess_centred"),
        ]
    if preprocessing == "inside":
        return []
    raise ValueError(f"unknown preprocessing {preprocessing!r}; one of {PREPROCESSING}")


def _constant(value, name: str, op: str):
    from onnx import numpy_helper

    if op == "Gather":
        return numpy_helper.from_array(np.array(value, np.int64), name)
    array = np.array(value, np.float32)
    return numpy_helper.from_array(array.reshape(1, 1, 1, -1) if array.ndim else array, name)


def float_pixels_input(model, image_size: int, channels: int = 3):
    """Make the uint8 input of a model made by `prepend_preprocessing` float32 NHWC pixels
    in [0, 255] of size `image_size`, the form most serving stacks hand over. Its Cast stays
    (float32 -> float32 is a no-op, -> float16 in an fp16 copy), so does the arithmetic.
    Returns the model."""
    from onnx import TensorProto, helper

    graph = model.graph
    shape = ["N", image_size, image_size, channels]
    graph.input.remove(next(i for i in graph.input if i.name == PIXELS_INPUT))
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.FLOAT, shape))
    return model
