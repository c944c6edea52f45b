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

from ..extractor import __version__
from ..extractor.preprocess import PIXELS_INPUT
from ..extractor.safe_files import OutputFolder, user_path
from ..extractor.spec import ExtractorSpec
from .artifact import check_output_outside_artifacts, load_artifact
from .errors import SettingError
from .fuse import OUTPUT


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
    extractor, about = artifact.extractor, artifact.about()
    model = artifact.pixels_model(weights, backbone)
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
