"""`headstart export`: one ONNX file that goes from pixels to class probabilities.

    pixels  float32 (N, S, S, 3), RGB in [0, 255], S = the head's recorded image size
      -> x / 127.5 - 1 -> InceptionV3 backbone -> features (N, 2048) -> head
    probabilities  float32 (N, K), classes in the order of the metadata's `classes`

Any ONNX runtime can serve it without headstart; its outputs equal `headstart predict`'s.
The model's metadata records the class names, image size, head kind and the extractor
fingerprint (weights included: a demo run on random weights says so).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from extractor import __version__
from extractor.preprocess import PIXELS_INPUT, float_pixels_input

from .artifact import Head, load_head
from .errors import SettingError

OUTPUT = "probabilities"
HEAD_PREFIX = "head/"  # the head's names inside the fused graph, so none clash


@dataclass
class ExportResult:
    path: Path
    classes: list[str]
    image_size: int
    weights: str
    size_bytes: int


def export_model(
    head_dir: str | os.PathLike, out_path: str | os.PathLike, weights: str | None = None
) -> ExportResult:
    """Fuse the head in `head_dir` with its backbone into the ONNX file `out_path`."""
    import onnx

    out = Path(out_path)
    if out.is_dir():
        raise SettingError(f"-o {out}: is a folder; give a file name such as model.onnx")
    head = load_head(head_dir)
    head.classifier  # noqa: B018 -- opens model.onnx and checks it against head.json
    image_size = head.fingerprint["image_size"]
    backbone = head.backbone(weights)

    backbone_model = float_pixels_input(onnx.load(str(backbone.onnx_path)), image_size)
    fused = _fuse(backbone_model, onnx.load(str(head.model_path)), head)
    _describe(fused, head, image_size)
    onnx.checker.check_model(fused)

    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f"_tmp-{out.name}")
    try:
        onnx.save(fused, str(temporary))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportResult(
        out, head.classes, image_size, head.fingerprint.get("weights", "?"), out.stat().st_size
    )


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

    fused = compose.merge_models(
        backbone,
        head_model,
        io_map=[(backbone.graph.output[0].name, HEAD_PREFIX + head.classifier.input_name)],
        outputs=[probabilities],
    )
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


def _describe(model, head: Head, image_size: int) -> None:
    from onnx import helper

    model.producer_name, model.producer_version = "headstart", __version__
    model.doc_string = (
        f"{head.kind} head on InceptionV3 features ({head.fingerprint.get('weights')} weights). "
        f"Input '{PIXELS_INPUT}': float32 (N, {image_size}, {image_size}, 3) RGB pixels in "
        f"[0, 255], resized bilinearly. Output '{OUTPUT}': float32 (N, {len(head.classes)}), "
        "one column per class of metadata 'classes'."
    )
    helper.set_model_props(
        model,
        {
            "classes": json.dumps(head.classes),
            "image_size": str(image_size),
            "input": f"{PIXELS_INPUT}: float32 NHWC RGB in [0, 255]",
            "head_kind": head.kind,
            "weights": str(head.fingerprint.get("weights")),
            "fingerprint": json.dumps(head.fingerprint, sort_keys=True),
        },
    )
