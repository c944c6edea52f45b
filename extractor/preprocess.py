"""Preprocess stage: uint8 RGB pixels -> the float32 input InceptionV3 was trained on.

The arithmetic is `keras.applications.inception_v3.preprocess_input` (x /= 127.5; x -= 1,
in float32, in that order), so the values equal the Keras pipeline's. It runs inside the
ONNX graph, in front of the backbone: the model takes uint8 pixels, so ONNX Runtime's own
threads do the work (off the Python thread that feeds batches), and a GPU receives a quarter
of the bytes float32 would need.
"""

from __future__ import annotations

import numpy as np

PIXELS_INPUT = "pixels"  # uint8 NHWC RGB, any batch, height and width


def prepend_preprocessing(model, backbone_input: str, arithmetic: bool = True):
    """Give an ONNX backbone (float32 NHWC input `backbone_input`) a uint8 input named
    PIXELS_INPUT with Cast -> Div 127.5 -> Sub 1 in front of it (only the Cast without
    `arithmetic`, for networks that preprocess inside). Returns the new model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    old_input = next(i for i in graph.input if i.name == backbone_input)
    shape = [d.dim_param or d.dim_value or None for d in old_input.type.tensor_type.shape.dim]
    graph.input.remove(old_input)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, shape))
    nodes = [helper.make_node("Cast", [PIXELS_INPUT], [backbone_input], to=TensorProto.FLOAT)]
    if arithmetic:
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(127.5, np.float32), "preprocess_scale"),
                numpy_helper.from_array(np.array(1.0, np.float32), "preprocess_shift"),
            ]
        )
        nodes = [
            helper.make_node("Cast", [PIXELS_INPUT], ["preprocess_float"], to=TensorProto.FLOAT),
            helper.make_node(
                "Div", ["preprocess_float", "preprocess_scale"], ["preprocess_scaled"]
            ),
            helper.make_node("Sub", ["preprocess_scaled", "preprocess_shift"], [backbone_input]),
        ]
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    return model


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
