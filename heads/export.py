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
from extractor.safe_files import OutputFolder, user_path
from extractor.spec import ExtractorSpec

from .artifact import CnnModel, Head, check_output_outside_artifacts, load_artifact
from .errors import HeadError, SettingError

OUTPUT = "probabilities"
HEAD_PREFIX = "head/"  # the head's names inside the fused graph, so none clash


@dataclass
class ExportResult:
    path: Path
    classes: list[str]
    image_size: int
    channels: int
    weights: str
    size_bytes: int


def export_model(
    head_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    weights: str | None = None,
    backbone: str | None = None,
) -> ExportResult:
    """Write the ONNX file `out_path` for the head in `head_dir` (fused with its backbone)
    or for the train-cnn model there (its model.onnx, described)."""
    import onnx

    out = Path(out_path)
    if out.is_dir():
        raise SettingError(f"-o {out}: is a folder; give a file name such as model.onnx")
    if out.suffix.lower() != ".onnx":
        raise SettingError(f"-o {out}: the exported model's name must end in .onnx")
    target = user_path(out)
    if target.exists() and not target.is_file():
        raise SettingError(f"-o {out}: {target} exists and is not a file; give a file name")
    check_output_outside_artifacts(target)
    artifact = load_artifact(head_dir)
    extractor = artifact.extractor
    if isinstance(artifact, CnnModel):
        if backbone:
            raise SettingError(
                f"--backbone is for heads; {head_dir} is a CNN from train-cnn, its own network"
            )
        artifact.probe()
        model = _load_onnx(artifact.model_path)
        settings = artifact.description.get("settings") or {}
        used = settings.get("weights") if artifact.arch == "inception" else "trained from scratch"
        about = {"kind": f"{artifact.arch} CNN", "weights": str(used), "fingerprint": None}
    else:
        head = artifact
        head.classifier  # noqa: B018 -- opens model.onnx and checks it against head.json
        network = onnx.load(str(head.backbone(weights, backbone).onnx_path))
        network = float_pixels_input(network, extractor.image_size, extractor.channels)
        model = _fuse(network, _load_onnx(head.model_path), head)
        about = {
            "kind": f"{head.kind} head",
            "weights": str(head.fingerprint.get("weights")),
            "fingerprint": head.fingerprint,
        }
    _describe(model, artifact.classes, extractor, about)
    onnx.checker.check_model(model)

    out = user_path(out)  # a link given as -o: the file it points to is replaced
    with OutputFolder(out.parent) as folder:
        folder.remove_leftovers(out.name)  # what a killed export left
        folder.write_bytes(out.name, model.SerializeToString())
    return ExportResult(
        out,
        artifact.classes,
        extractor.image_size,
        extractor.channels,
        about["weights"],
        out.stat().st_size,
    )


def _load_onnx(path: Path):
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


def _describe(model, classes: list[str], extractor: ExtractorSpec, about: dict) -> None:
    from onnx import helper

    image_size, color_mode = extractor.image_size, extractor.color_mode
    channels = extractor.channels
    model.producer_name, model.producer_version = "headstart", __version__
    model.doc_string = (
        f"{about['kind']} ({about['weights']} weights). Input '{PIXELS_INPUT}': float32 "
        f"(N, {image_size}, {image_size}, {channels}) {color_mode} pixels in [0, 255], resized "
        f"bilinearly. Output '{OUTPUT}': float32 (N, {len(classes)}), one column per class of "
        "metadata 'classes'."
    )
    properties = {
        "classes": json.dumps(classes),
        "image_size": str(image_size),
        "color_mode": color_mode,
        "input": f"{PIXELS_INPUT}: float32 NHWC {color_mode} in [0, 255]",
        "head_kind": about["kind"],
        "weights": about["weights"],
    }
    if about["fingerprint"]:
        properties["fingerprint"] = json.dumps(about["fingerprint"], sort_keys=True)
    helper.set_model_props(model, properties)
