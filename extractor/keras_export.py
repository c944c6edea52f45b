"""A Keras application -> an ONNX graph, through tf2onnx, with the two things tf2onnx cannot
convert in them made convertible first. Each is the same arithmetic (parity is tested per
family and checked for every application by bench/backbones.py):

- a grouped convolution with one group per channel (ConvNeXt's 7x7 convolutions): Keras'
  TensorFlow backend runs grouped convolutions as an XLA-compiled function, which tf2onnx
  leaves as a node no runtime knows (StatefulPartitionedCall); it becomes the
  DepthwiseConv2D it is, its kernel moved to the depthwise layout;
- Erfc (the exact GELU, ConvNeXt again), which tf2onnx has no conversion for, is written
  as 1 - Erf.

Other models go through untouched, so their graphs are those of every earlier export.

Every conversion here and elsewhere (heads, train-cnn) goes through `converted`, which spares
tf2onnx the two ways it holds copies of the weights it converts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

log = logging.getLogger("headstart")
Converted = TypeVar("Converted")
_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"


def converted(convert: Callable[[], Converted]) -> Converted:
    """`convert()`, a tf2onnx conversion, run without the copies of its weights tf2onnx keeps
    (InceptionV3's export: 2.57 GB instead of 7.54, the same ONNX bytes; bench/footprint.py):

    - tf2onnx deep-copies its graph, weights included, before each of its optimizers on
      every pass, so that it can skip one that fails (tf2onnx 1.17 turns that off when
      TF2ONNX_CATCH_ERRORS is set to any value). Where an optimizer does fail, the
      conversion runs again with the copies and skips it, as every earlier export did;
    - see `_node_protos_renewed` for the other."""
    from ..launch import was_terminated

    before = os.environ.get(_CATCH_ERRORS)
    os.environ[_CATCH_ERRORS] = "FALSE"
    try:
        with _node_protos_renewed():
            return convert()
    except Exception as error:  # an optimizer's failure, or the conversion's own
        if was_terminated():
            raise
        log.debug("tf2onnx without its defensive copies failed (%r); again with them", error)
    finally:
        if before is None:
            os.environ.pop(_CATCH_ERRORS, None)
        else:
            os.environ[_CATCH_ERRORS] = before
    with _node_protos_renewed():
        return convert()


@contextmanager
def _node_protos_renewed() -> Iterator[None]:
    """tf2onnx rewrites each node's attributes into its NodeProto after every optimizer
    (Node.update_proto: delete them all, append copies). With the upb protobuf that Python
    uses, a deleted message's memory stays in its parent's arena until the parent itself is
    freed, so each of the ~24 optimizer passes left one more copy of every constant behind:
    82 MB a pass for InceptionV3, 2 GB in all. Renewing the node's protos after each rewrite
    (one copy of its current contents, the old arena then freed) keeps one; the graph and its
    bytes are the same. Where tf2onnx's Node is not shaped as in 1.16-1.17, nothing changes."""
    from onnx import AttributeProto, NodeProto
    from tf2onnx.graph import Node

    rewrite = getattr(Node, "update_proto", None)
    if rewrite is None:
        yield
        return

    def rewrite_then_renew(node, *args, **kwargs):
        rewrite(node, *args, **kwargs)
        proto, attributes = getattr(node, "_op", None), getattr(node, "_attr", None)
        if not isinstance(proto, NodeProto) or not isinstance(attributes, dict):
            return
        renewed = NodeProto()
        renewed.CopyFrom(proto)
        own_attributes = {}
        for name, attribute in attributes.items():  # they too may live in the old arena
            own_attributes[name] = AttributeProto()
            own_attributes[name].CopyFrom(attribute)
        node._op, node._attr = renewed, own_attributes

    Node.update_proto = rewrite_then_renew
    try:
        yield
    finally:
        Node.update_proto = rewrite


def keras_to_onnx(model, input_name: str, side: int | None, opset: int):
    """The ONNX graph of `model` for float32 NHWC input `input_name` of any batch, height
    and width `side` (None: any). Imports TensorFlow."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, side, side, 3), tf.float32, name=input_name),)
    convertible = depthwise_for_grouped(model)
    proto, _ = converted(
        lambda: tf2onnx.convert.from_keras(
            convertible,
            input_signature=signature,
            opset=opset,
            custom_op_handlers=CUSTOM_OP_HANDLERS,
        )
    )
    return proto


def model_to_onnx(model, input_shape: tuple, input_name: str, output_name: str, opset: int):
    """The ONNX graph of a Keras model headstart built or trained (a head, a CNN, a CNN cut
    at a layer) in inference mode (dropout and augmentation off), with one float32 input of
    `input_shape` (None for any size) and one output. Works for every backbone a CNN can
    be built on: ConvNeXt's grouped convolutions and GELU, the Normalization layers of
    EfficientNet and ConvNeXt. Imports TensorFlow."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec(input_shape, tf.float32, name=input_name),)
    convertible = depthwise_for_grouped(model)

    # Through a tf.function in inference mode: tf2onnx 1.17's from_keras loses the output
    # of a Keras 3 model with Dropout (KeyError on a keras_tensor name).
    @tf.function(input_signature=signature)
    def inference(inputs):
        return {output_name: convertible(inputs, training=False)}

    with normalization_constants_inlined(convertible):
        proto, _ = converted(
            lambda: tf2onnx.convert.from_function(
                inference,
                input_signature=signature,
                opset=opset,
                custom_op_handlers=CUSTOM_OP_HANDLERS,
            )
        )
    return proto


def _is_depthwise_grouped(layer) -> bool:
    """A Conv2D with one group per input and per output channel: a depthwise convolution."""
    import keras

    groups = getattr(layer, "groups", 1)
    return (
        isinstance(layer, keras.layers.Conv2D)
        and groups > 1
        and groups == layer.filters
        and layer.kernel.shape[2] == 1
    )


def _has_depthwise_grouped(layer) -> bool:
    """Whether `layer`, or a layer of it where it is a model, is a depthwise grouped Conv2D."""
    import keras

    if isinstance(layer, keras.Model):
        return any(_has_depthwise_grouped(inner) for inner in layer.layers)
    return _is_depthwise_grouped(layer)


def depthwise_for_grouped(model):
    """`model`, or where it has grouped convolutions of one group per channel (ConvNeXt's;
    tf2onnx cannot convert them), a copy with DepthwiseConv2D layers in their place and the
    same weights. Models nested in it (train-cnn's backbone) are copied the same way."""
    import keras

    if not _has_depthwise_grouped(model):
        return model

    def clone(layer):
        if isinstance(layer, keras.Model):  # a nested model: copied (with weights) itself
            return depthwise_for_grouped(layer)
        if not _is_depthwise_grouped(layer):
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        return keras.layers.DepthwiseConv2D(
            kernel_size=config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            dilation_rate=config["dilation_rate"],
            use_bias=config["use_bias"],
            activation=config["activation"],
            data_format=config["data_format"],
            name=config["name"],
        )

    copy = keras.models.clone_model(model, clone_function=clone)
    for original, cloned in zip(model.layers, copy.layers, strict=True):
        if isinstance(original, keras.Model):
            continue  # its copy has its weights already
        weights = original.get_weights()
        if _is_depthwise_grouped(original):  # (h, w, 1, channels) -> (h, w, channels, 1)
            weights[0] = np.transpose(weights[0], (0, 1, 3, 2))
        cloned.set_weights(weights)
    return copy


def _erfc_as_one_minus_erf(ctx, node, name, args) -> None:
    """tf2onnx handler: the Erfc node becomes Erf, followed by 1 - its output."""
    from tf2onnx import utils

    node.type = "Erf"
    one = ctx.make_const(utils.make_name("one"), np.array(1, np.float32))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])


@contextmanager
def normalization_constants_inlined(model) -> Iterator[None]:
    """While converting `model` through a tf.function: its Normalization layers with a fixed
    mean and variance (EfficientNet's, ConvNeXt's) hold them as NumPy arrays, which tracing
    makes constants of the graph. Held as eager tensors, as Keras holds them, they are
    captured by the function, and tf2onnx's from_function turns captured tensors into extra
    graph inputs. Restored afterwards."""
    import keras

    held = [
        (layer, layer.mean, layer.variance)
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None
    ]
    try:
        for layer, mean, variance in held:
            layer.mean, layer.variance = np.asarray(mean), np.asarray(variance)
        yield
    finally:
        for layer, mean, variance in held:
            layer.mean, layer.variance = mean, variance


# tf2onnx's handlers for TensorFlow ops it lacks (Keras' exact GELU uses Erfc: ConvNeXt)
CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, [])}
