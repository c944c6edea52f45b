"""A head and its backbone fused into one ONNX graph: float32 pixels in, the head's
probabilities out (as `OUTPUT`), the head's names prefixed so that none clash."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..extractor.preprocess import float_pixels_input
from ..extractor.terminal import said_by
from .errors import HeadError

if TYPE_CHECKING:
    from .artifact import Head

OUTPUT = "probabilities"
HEAD_PREFIX = "head/"  # the head's names inside the fused graph, so none clash


def fused_pixels_model(head: Head, backbone_path: Path):
    """The ONNX model from float32 pixels through `backbone_path` and the head."""
    import onnx

    extractor = head.extractor
    network = onnx.load(str(backbone_path))
    network = float_pixels_input(network, extractor.image_size, extractor.channels)
    return _fuse(network, load_onnx(head.model_path), head)


def load_onnx(path: Path):
    """A model.onnx that ONNX Runtime has run once (probed); onnx's own reader may still
    refuse what the runtime tolerates."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and onnx's own errors
        raise HeadError(f"{path} cannot be read as ONNX ({error})") from None


def _fuse(backbone, head_model, head: Head):
    """Backbone output -> head input, one graph with one input and one output."""
    from onnx import compose, helper

    head_model = compose.add_prefix(head_model, HEAD_PREFIX)
    probabilities = HEAD_PREFIX + head.classifier.output_name
    # Both come from converters that pin different opset and IR versions (tf2onnx's
    # ai.onnx.ml 2, skl2onnx's 1): take the newest of each, which both sets of ops run on.
    opsets: dict[str, int] = {}
    for model in (backbone, head_model):
        for entry in model.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    for model in (backbone, head_model):
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
        model.ir_version = max(backbone.ir_version, head_model.ir_version)

    try:
        fused = compose.merge_models(
            backbone,
            head_model,
            io_map=[(backbone.graph.output[0].name, HEAD_PREFIX + head.classifier.input_name)],
            outputs=[probabilities],
        )
    except Exception as error:  # onnx's checker and compose raise their own kinds
        raise HeadError(
            f"the head in {head.folder} and its backbone could not be joined into one ONNX "
            f"model ({said_by(error, keep='start')})"
        ) from None
    _rename(fused.graph, probabilities, OUTPUT)
    return fused


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        for position, name in enumerate(node.output):
            if name == old:
                node.output[position] = new
    for value in graph.output:
        if value.name == old:
            value.name = new
