"""`embed --backbone FILE.onnx`: a network someone else exported, as the backbone.

The contract is the one headstart's own exports keep: one input of NHWC RGB pixels in
[0, 255] (float32 or uint8; any preprocessing inside the model), one output of features,
(N, D) or (N, D, 1, 1). The input size is the model's where it is static, else
--image-size. A model with several outputs is told which holds the features with
--backbone-output.

The file is untrusted: it is read without its external data, run once in the bounded probe
(onnx_probe) before this process loads it, and then wrapped into the form the pipeline runs
(a uint8 `pixels` input, the one (N, D) output) and cached like any export, under the
file's sha256, which is also its identity in the fingerprint: predict finds it by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .declared import MAX_DIM
from .errors import SettingError
from .model_cache import CachedBackbone, cached_export, sha256_of_file
from .preprocess import PIXELS_INPUT, PIXELS_TEXT
from .settings import MAX_IMAGE_SIZE

ONNX_FILE_BACKBONE = "onnx-file"  # the fingerprint's `backbone` for these
ONNX_FILE_VERSION = 1  # bump when the wrapping changes
INPUT_TYPES = {1: "float32", 2: "uint8"}  # ONNX element types the contract takes
WRAP_HELP = "see the README's 'Bring your own ONNX backbone' for wrapping a model"


@dataclass(frozen=True)
class OnnxFile:
    path: Path  # absolute
    sha256: str
    input_name: str
    input_dtype: str  # "float32" | "uint8"
    output: str  # the output that holds the features
    image_size: int
    static_size: bool  # the model takes `image_size` only


def is_onnx_file_name(value: str | os.PathLike | None) -> bool:
    return value is not None and str(value).lower().endswith(".onnx")


def read_onnx_file(path: Path, output: str | None, image_size: int | None) -> OnnxFile:
    """The ONNX file `path` as a backbone, its contract checked from the graph (nothing run
    yet): a SettingError saying what breaks it, and how to mend it."""
    import onnx

    named = f"--backbone {path}"
    if not path.exists():
        raise SettingError(f"{named}: no such file")
    if not path.is_file():
        raise SettingError(f"{named}: not a regular file")
    try:
        sha = sha256_of_file(path)
        model = onnx.load(str(path), load_external_data=False)
    except OSError as error:
        raise SettingError(f"{named}: cannot be read ({error.strerror})") from None
    except Exception as error:  # protobuf's DecodeError and others: not an ONNX model
        raise SettingError(f"{named} is not an ONNX model ({type(error).__name__})") from None
    graph = model.graph
    if not model.ir_version or not graph.output:
        raise SettingError(f"{named} is not an ONNX model (no version or no outputs)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(graph)):
        # its identity, the file's sha256, would not cover them
        raise SettingError(
            f"{named} keeps some of its tensors in separate files (ONNX external data); give "
            "a self-contained .onnx file (onnx.save without save_as_external_data)"
        )
    model_input = _the_input(graph, named)
    dtype = INPUT_TYPES.get(model_input.type.tensor_type.elem_type)
    if dtype is None:
        raise SettingError(
            f"{named}: its input {model_input.name!r} is not float32 or uint8 pixels; {WRAP_HELP}"
        )
    size, static = _input_size(model_input, image_size, named)
    output = _the_output(graph, output, named)
    _check_declared_output(graph, output, named)
    return OnnxFile(
        path.resolve(),
        sha,
        model_input.name,
        dtype,
        output,
        size,
        static,
    )


def _tensors(graph):
    """Every tensor a graph holds: its initializers and its nodes' tensor attributes, in
    the graphs inside its nodes too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for inner in [attribute.g, *attribute.graphs]:
                yield from _tensors(inner)


def _the_input(graph, named: str):
    weights = {initializer.name for initializer in graph.initializer}
    inputs = [graph_input for graph_input in graph.input if graph_input.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise SettingError(
            f"{named} takes {len(inputs)} inputs ({names}); a backbone takes one: a batch of "
            "NHWC RGB pixels"
        )
    return inputs[0]


def _input_size(model_input, image_size: int | None, named: str) -> tuple[int, bool]:
    """The image size: the model's static one (--image-size, if given, must agree), or
    --image-size for a model of any size."""
    dims = _dims(model_input)
    shown = _shown(dims)
    if len(dims) != 4:
        raise SettingError(
            f"{named}: its input {model_input.name!r} has shape {shown}; a backbone takes "
            f"(N, height, width, 3) NHWC pixels; {WRAP_HELP}"
        )
    if dims[0] is not None:
        raise SettingError(
            f"{named}: its input {model_input.name!r} has shape {shown}, a fixed batch of "
            f"{dims[0]}; headstart sends batches of any size: make the first dimension dynamic"
        )
    if dims[3] != 3:
        layout = " (channels first, NCHW?)" if dims[1] == 3 else ""
        raise SettingError(
            f"{named}: its input {model_input.name!r} has shape {shown}{layout}; headstart "
            f"gives (N, height, width, 3) NHWC RGB pixels; {WRAP_HELP}"
        )
    height, width = dims[1], dims[2]
    if height is None and width is None:
        if image_size is None:
            raise SettingError(f"{named} takes images of any size: say which with --image-size")
        return image_size, False
    if height is None or width is None or height != width:
        raise SettingError(
            f"{named}: its input {model_input.name!r} has shape {shown}; headstart gives square "
            "images, of a fixed size or any"
        )
    if image_size not in (None, height):
        raise SettingError(
            f"{named} takes {height} px images only; leave --image-size out or set it to {height}"
        )
    if not 1 <= height <= MAX_IMAGE_SIZE:
        raise SettingError(
            f"{named} takes {height} px images; headstart gives 1 to {MAX_IMAGE_SIZE} px"
        )
    return height, True


def _dims(value_info) -> list[int | None]:
    """The shape a graph declares for a value: a number, or None where it is left open."""
    tensor_type = value_info.type.tensor_type
    shape = tensor_type.shape.dim if tensor_type.HasField("shape") else []
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape]


def _shown(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in dims) + ")"


def _the_output(graph, output: str | None, named: str) -> str:
    names = [graph_output.name for graph_output in graph.output]
    if output is not None:
        if output not in names:
            raise SettingError(
                f"--backbone-output {output}: {named} has no such output; it has "
                + ", ".join(names)
            )
        return output
    if len(names) != 1:
        raise SettingError(
            f"{named} has {len(names)} outputs ({', '.join(names)}); say which holds the "
            "features with --backbone-output NAME"
        )
    return names[0]


def _check_declared_output(graph, output: str, named: str) -> None:
    """What the graph declares of the features output, checked before anything runs (the
    run checks the rest: a shape the graph leaves open)."""
    from onnx import TensorProto

    declared = next(value for value in graph.output if value.name == output)
    element = declared.type.tensor_type.elem_type
    if element not in (0, TensorProto.FLOAT):  # 0: not declared
        raise SettingError(f"{named}: its output {output!r} is not float32 features")
    if not declared.type.tensor_type.HasField("shape"):
        return
    dims = _dims(declared)
    unpooled = len(dims) == 4 and any(d not in (None, 1) for d in dims[2:])
    if len(dims) not in (2, 4) or unpooled:
        raise SettingError(
            f"{named}: its output {output!r} has shape {_shown(dims)}; a backbone gives (N, D) or "
            "(N, D, 1, 1) (pool the features inside the model)"
        )


def ensure_onnx_file_backbone(given: OnnxFile) -> CachedBackbone:
    """The cached, wrapped form of `given`: probed, its output checked, then made once."""
    from .backbone import cache_root
    from .model_cache import DamagedEntry, read_entry
    from .onnx_probe import probe

    item = (given.image_size, given.image_size, 3)
    probe(given.path, item, given.input_dtype, cache_root(), sha256=given.sha256)
    # A file of any size is wrapped per size: its D may depend on it (a Flatten at the end)
    size = None if given.static_size else given.image_size
    key_source = json.dumps(
        {"sha256": given.sha256, "output": given.output, "size": size,
         "version": ONNX_FILE_VERSION},
        sort_keys=True,
    )  # fmt: skip
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    folder = cache_root() / "models" / f"onnx-{key}"
    try:
        cached = read_entry(folder)
    except DamagedEntry:
        cached = None  # made again below
    if cached is None:
        shape = _output_shape(given)  # checked before the cache is touched
        cached = cached_export(
            folder,
            lambda onnx_path: _wrap(given, shape, onnx_path),
            f"wrapping {given.path} for headstart (uint8 pixels in, its features out)",
        )
    # The same file may have been given from another path before: features record this one
    return CachedBackbone(cached.onnx_path, {**cached.manifest, "weights": str(given.path)})


def _wrap(given: OnnxFile, shape: list[int], onnx_path: Path) -> dict[str, Any]:
    """Write the model the pipeline runs: uint8 `pixels` in, cast to the file's input type;
    the features output alone, flattened to (N, D). Returns its manifest."""
    import onnx
    from onnx import TensorProto, helper

    from .backbone import EXTRACTOR_VERSION

    content = given.path.read_bytes()  # read once: what is hashed is what is wrapped
    if hashlib.sha256(content).hexdigest() != given.sha256:
        raise SettingError(f"--backbone {given.path} changed while headstart read it; run again")
    model = onnx.load_from_string(content)
    graph = model.graph
    taken = _names(graph)
    fresh = _fresh_names(taken)
    output = given.output
    if PIXELS_INPUT in taken:  # a value of its own has the input's name: renamed
        renamed = next(fresh)
        _rename(graph, PIXELS_INPUT, renamed)
        output = renamed if output == PIXELS_INPUT else output
    model_input = _the_input(graph, str(given.path))
    side = given.image_size if given.static_size else None
    dims = ["N", side or "height", side or "width", 3]
    graph.input.remove(model_input)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, dims))
    to = TensorProto.FLOAT if given.input_dtype == "float32" else TensorProto.UINT8
    graph.node.insert(0, helper.make_node("Cast", [PIXELS_INPUT], [model_input.name], to=to))
    if len(shape) == 4:  # (N, D, 1, 1): Flatten, the same in every opset
        flattened = next(fresh)
        graph.node.append(helper.make_node("Flatten", [output], [flattened], axis=1))
        output = flattened
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", shape[1]]))
    onnx.save(model, str(onnx_path))
    _check_wrapped(given, onnx_path, int(shape[1]))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    sizes = f"{side}x{side}" if side else "any height and width"
    manifest = {
        "backbone": ONNX_FILE_BACKBONE,
        "weights": str(given.path),
        "weights_sha256": given.sha256,  # the file's: its identity
        "onnx_sha256": sha256_of_file(onnx_path),
        "pooling": f"output {given.output!r}",
        "onnx_output": given.output,
        "dim": int(shape[1]),
        "opset": opset,
        "extractor_version": EXTRACTOR_VERSION,  # decoding changes change its features too
        "input": f"uint8 NHWC RGB pixels ({PIXELS_INPUT}), {sizes}",
        "preprocessing": PIXELS_TEXT + "inside the ONNX file",
    }
    return {**manifest, "fixed_image_size": side} if side else manifest


def _names(graph) -> set[str]:
    """Every name a graph (and the graphs inside its nodes) gives a value."""
    names = {value.name for value in [*graph.input, *graph.output, *graph.initializer]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attribute in node.attribute:
            for inner in [attribute.g, *attribute.graphs]:
                names |= _names(inner)
    return names


def _fresh_names(taken: set[str]):
    """headstart_1, headstart_2, ...: names the graph does not use yet."""
    count = 0
    while True:
        count += 1
        if f"headstart_{count}" not in taken:
            yield f"headstart_{count}"


def _rename(graph, old: str, new: str) -> None:
    """Call the value `old` `new` wherever the graph (or a graph inside it) uses it."""
    for value in [*graph.input, *graph.output]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            for inner in [attribute.g, *attribute.graphs]:
                _rename(inner, old, new)


def _on_two_blank_images(model, input_name: str, dtype: str, size: int, output=None):
    """The output `output` (else the first) of `model` (a path or its bytes) for a batch of
    two zero images, run by ONNX Runtime on the CPU; its errors are ONNX Runtime's."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the caller says what failed, in one line
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    zeros = np.zeros((2, size, size, 3), dtype)
    return np.asarray(session.run([output] if output else None, {input_name: zeros})[0])


def _check_wrapped(given: OnnxFile, onnx_path: Path, dim: int) -> None:
    """Run the wrapped model once: the cache holds only what the pipeline can run."""
    try:
        # from bytes: an error then names no temporary path of the cache
        wrapped = onnx_path.read_bytes()
        shape = _on_two_blank_images(wrapped, PIXELS_INPUT, "uint8", given.image_size).shape
    except Exception as error:  # onnxruntime's own untyped errors
        said = str(error).strip().splitlines()
        raise SettingError(
            f"--backbone {given.path} could not be wrapped for headstart "
            f"({said[-1][:300] if said else type(error).__name__})"
        ) from None
    if shape != (2, dim):
        raise SettingError(
            f"--backbone {given.path}: wrapped, it gives {shape} for 2 images, not (2, {dim})"
        )


def _output_shape(given: OnnxFile) -> list[int]:
    """The shape `given.output` has for a batch of two zero images, checked to be features:
    (2, D) or (2, D, 1, 1), float32, D at least 1. Run here, after the probe found that the
    file runs within bounds."""
    import numpy as np

    features = _on_two_blank_images(
        str(given.path), given.input_name, given.input_dtype, given.image_size, given.output
    )
    shape = list(features.shape)
    pooled = len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1])
    if shape[:1] != [2] or not pooled or not 1 <= shape[1] <= MAX_DIM:
        raise SettingError(
            f"--backbone {given.path}: its output {given.output!r} gives features of shape "
            f"{tuple(shape)} for a batch of 2; a backbone gives (N, D) or (N, D, 1, 1), D from "
            f"1 to {MAX_DIM} (pool the features inside the model)"
        )
    if features.dtype != np.float32:
        raise SettingError(
            f"--backbone {given.path}: its output {given.output!r} is {features.dtype}, not "
            "float32 features"
        )
    return shape


def recorded_onnx_file(fingerprint: dict[str, Any], given: str | None = None) -> CachedBackbone:
    """The ONNX-file backbone features with `fingerprint` were made with, missing from the
    cache: made again from `given` (predict's and export's --backbone FILE.onnx) or from
    the path the fingerprint records, where the file there is the same (by sha256)."""
    from .errors import WeightsUnavailableError

    path = Path(given or str(fingerprint.get("weights"))).expanduser()
    sha = str(fingerprint.get("weights_sha256"))
    try:
        same = path.is_file() and sha256_of_file(path) == sha
    except OSError:
        same = False
    if not same:
        where = f"--backbone {given} is not" if given else f"{path} is no longer"
        raise WeightsUnavailableError(
            f"{where} the ONNX file these features were made with (sha256 {sha[:12]}…), and "
            "its wrapped form is not in the cache; give that file with --backbone FILE.onnx"
        )
    size = int(fingerprint["image_size"])
    return ensure_onnx_file_backbone(read_onnx_file(path, fingerprint.get("onnx_output"), size))
