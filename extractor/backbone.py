"""Backbone stage: a Keras ImageNet application (InceptionV3 by default; the others are in
applications.py) without its top, with global average pooling, exported once to ONNX with its
preprocessing in front and cached on disk, so later runs start without importing TensorFlow.

The cache key is made from what determines the network (backbone, weights, opset, extractor
version). The export has dynamic batch, height and width, so one cached file serves every
`--image-size`; the image size is part of the store's fingerprint, not of the model's. The
few applications whose weights need a static input are exported at their own size, and
refuse any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .applications import APPLICATIONS, EXPORT_MACHINE_GB, Application, application
from .errors import HeadstartError, SettingError, WeightsUnavailableError
from .model_cache import (
    CachedBackbone,
    DamagedEntry,
    cached_export,
    entries,
    read_entry,
    sha256_of_file,
)
from .onnx_backbone import ONNX_FILE_BACKBONE, recorded_onnx_file
from .preprocess import PIXELS_INPUT, describe_preprocessing, prepend_preprocessing
from .settings import DEFAULT_BACKBONE, available_memory_gb, check_seed
from .tensorflow_needed import import_keras, require_tensorflow

log = logging.getLogger("headstart")

BACKBONE = DEFAULT_BACKBONE  # --backbone takes any name in APPLICATIONS
POOLING = "avg"
OPSET = 17
EXTRACTOR_VERSION = 1  # bump when a change to export or decoding changes the features
MODEL_INPUT = "uint8 NHWC RGB pixels, preprocessing inside"  # part of the cache key
WEIGHTS_CHOICES = ("imagenet", "random")
# Manifest fields that identify the network: the same values give the same features.
BACKBONE_IDENTITY = ("backbone", "weights_sha256", "pooling", "dim", "extractor_version")


@dataclass(frozen=True)
class WeightsSpec:
    """Which weights: Keras' ImageNet download, seeded random ones, or a Keras weights file."""

    kind: str  # "imagenet" | "random" | "file"
    seed: int = 0
    path: Path | None = None

    @property
    def name(self) -> str:
        if self.kind == "random":
            return f"random(seed={self.seed})"
        if self.kind == "file":
            return self.path.name
        return self.kind

    @classmethod
    def from_name(cls, name: str) -> WeightsSpec | None:
        """The spec a recorded `name` stands for, where it can be had again (not files)."""
        if name == "imagenet":
            return cls("imagenet")
        match = re.fullmatch(r"random\(seed=(-?\d+)\)", name)
        return cls("random", int(match.group(1))) if match else None

    def cache_id(self) -> str:
        """Identity known without TensorFlow: a file's sha256, else the name."""
        if self.kind == "file":
            return "file-" + sha256_of_file(self.path)
        return self.name


def parse_weights(value: str | None, seed: int = 0) -> WeightsSpec:
    """`imagenet` (also for None: --weights not given), `random` or the path of a Keras
    weights file (checked to exist)."""
    value = "imagenet" if value is None else value
    if value in WEIGHTS_CHOICES:
        return WeightsSpec(value, seed)
    path = Path(value).expanduser()
    if not path.is_file():
        raise SettingError(
            f"--weights {value}: no such file; use imagenet, random, or the path of a Keras "
            "weights file"
        )
    return WeightsSpec("file", seed, path.resolve())


def cache_root() -> Path:
    """$HEADSTART_CACHE, else $XDG_CACHE_HOME/headstart, else ~/.cache/headstart."""
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def model_cache_dir(weights: WeightsSpec, backbone: str = BACKBONE) -> Path:
    key_source = json.dumps(
        {
            "backbone": backbone,
            "weights": weights.cache_id(),
            "opset": OPSET,
            "extractor_version": EXTRACTOR_VERSION,
            "input": MODEL_INPUT,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{backbone}-{key}"


def ensure_backbone(weights: WeightsSpec, backbone: str = BACKBONE) -> CachedBackbone:
    """The cached ONNX export of the application `backbone` with these weights, exported
    first if needed (InceptionV3: ~22 s and 2.6 GB on 2 cores)."""
    app = application(backbone)
    folder = model_cache_dir(weights, backbone)
    return cached_export(
        folder,
        lambda onnx_path: _export(app, weights, onnx_path),
        f"exporting {app.constructor} ({weights.name} weights) to ONNX ({_cost(app)})",
        can_export=lambda: require_tensorflow(
            f"exporting {app.constructor} to ONNX (once; then cached)",
            otherwise=(
                f"or export it where they are ({_export_command(weights, app.name)}) and copy "
                f"the folder it makes to {folder}"
            ),
        ),
    )


def export_is_cached(weights: WeightsSpec, backbone: str = BACKBONE) -> bool:
    """Whether the export of `backbone` with these weights is in the cache, usable."""
    try:
        return read_entry(model_cache_dir(weights, backbone)) is not None
    except DamagedEntry:
        return False


def _export_command(weights: WeightsSpec, backbone: str) -> str:
    """The command that exports `backbone` with these weights into the cache."""
    given = str(weights.path) if weights.kind == "file" else weights.kind
    seed = f" {weights.seed}" if weights.kind == "random" and weights.seed else ""
    return f"python -m headstart.extractor.backbone {shlex.quote(given)} {backbone}{seed}"


def _cost(app: Application) -> str:
    """What its export took when measured: time and memory."""
    if app.export_seconds is None:
        return _memory_taken(app)
    return (
        f"it took {app.export_seconds} s and {app.export_peak_gb:g} GB of memory on 2 cores "
        "when measured"
    )


def _memory_taken(app: Application) -> str:
    needed = app.export_peak_gb
    if needed is None:
        return f"it needed more than the {EXPORT_MACHINE_GB} GB of memory it was measured with"
    return f"it took {needed:g} GB of memory when measured"


def _warn_if_short_of_memory(app: Application, weights: WeightsSpec) -> None:
    """The out-of-memory killer would end an export with no word: say so before it starts."""
    available = available_memory_gb()
    if available is not None and available < (app.export_peak_gb or EXPORT_MACHINE_GB):
        log.warning(
            "this machine has %.1f GB of memory free, and exporting %s may need more (%s). If "
            "it is killed, export it once where there is more memory (%s) and copy the cache "
            "folder here, or choose a smaller backbone",
            available,
            app.constructor,
            _memory_taken(app),
            _export_command(weights, app.name),
        )


def find_backbone(
    fingerprint: dict[str, Any], weights: str | None = None, backbone: str | None = None
) -> CachedBackbone:
    """The backbone that made features with `fingerprint` (from a store or a head): the one
    `backbone` names (a train-cnn MODEL_DIR or an ONNX file, checked by sha256), else found
    in the cache by its identity, else exported again from `weights` (a Keras weights file),
    from the recorded weights where they can be had (imagenet, random(seed=N)) or from the
    recorded train-cnn folder where it still is."""
    if backbone:
        from .given_backbone import given_backbone

        return given_backbone(fingerprint, backbone)
    for folder in entries(cache_root() / "models"):
        try:
            cached = read_entry(folder)
        except DamagedEntry as damage:
            log.warning("%s; not used", damage)
            continue  # ensure_backbone below makes it again where it can
        manifest = cached.manifest if cached else {}
        if cached and all(manifest.get(key) == fingerprint.get(key) for key in BACKBONE_IDENTITY):
            return cached

    recorded = fingerprint.get("weights", "?")
    made_by = str(fingerprint.get("backbone", BACKBONE))
    if weights and made_by not in APPLICATIONS:
        raise SettingError(
            f"--weights applies to features of a Keras application; these were made with "
            f"{made_by} ({recorded}): give its file or folder with --backbone instead"
        )
    if made_by == ONNX_FILE_BACKBONE:
        return recorded_onnx_file(fingerprint)
    if made_by.startswith("train-cnn"):
        from .given_backbone import recorded_cnn_backbone

        return recorded_cnn_backbone(fingerprint)
    spec = parse_weights(weights) if weights else WeightsSpec.from_name(recorded)
    if spec is None:
        raise WeightsUnavailableError(
            f"the backbone these features were made with ({recorded} weights) is not in the "
            f"cache {cache_root() / 'models'}; give its weights file with --weights PATH, or "
            "its ONNX file (models/*/model.onnx in the cache where it was made) with "
            "--backbone FILE.onnx"
        )
    backbone = ensure_backbone(spec, made_by)
    if backbone.manifest["weights_sha256"] != fingerprint.get("weights_sha256"):
        raise WeightsUnavailableError(
            f"{spec.name} weights are not the ones the features were made with ({recorded}, "
            f"sha256 {str(fingerprint.get('weights_sha256'))[:12]}…, vs "
            f"{backbone.manifest['weights_sha256'][:12]}…)"
        )
    return backbone


def build_keras_backbone(
    weights: WeightsSpec,
    pooling: str | None = POOLING,
    input_shape=None,
    backbone: str = BACKBONE,
):
    """The Keras application `backbone` without its top: with global average pooling it is
    the model the ONNX file is exported from; train-cnn builds on InceptionV3 without
    (imports TensorFlow). `input_shape` defaults to any size, or the application's own
    where its weights need a static one."""
    app = application(backbone)
    keras = import_keras(f"building Keras' {app.constructor}")
    if input_shape is None:
        input_shape = (app.size, app.size, 3) if app.fixed_size else (None, None, 3)
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed)
    source = {"imagenet": "imagenet", "random": None}.get(weights.kind, str(weights.path))
    try:
        return getattr(keras.applications, app.constructor)(
            include_top=False, weights=source, pooling=pooling, input_shape=input_shape
        )
    except Exception as error:  # Keras raises bare Exception for a failed download
        raise _weights_error(app, weights, error) from None


def _export(app: Application, weights: WeightsSpec, onnx_path: Path) -> dict[str, Any]:
    _warn_if_short_of_memory(app, weights)
    model = build_keras_backbone(weights, backbone=app.name)
    import onnx

    from .keras_export import keras_to_onnx

    backbone_input = "preprocessed"
    side = app.size if app.fixed_size else None
    proto = keras_to_onnx(model, backbone_input, side, OPSET)
    onnx.save(prepend_preprocessing(proto, backbone_input, app.preprocessing), str(onnx_path))
    sizes = f"{side}x{side}" if side else f"any height and width >= {app.min_size}"
    manifest = {
        "backbone": app.name,
        "weights": weights.name,
        "weights_sha256": sha256_of_arrays(model.get_weights()),
        "onnx_sha256": sha256_of_file(onnx_path),
        "pooling": POOLING,
        "dim": int(model.output.shape[-1]),
        "opset": OPSET,
        "extractor_version": EXTRACTOR_VERSION,
        "input": MODEL_INPUT + f" ({PIXELS_INPUT}), {sizes}",
        "preprocessing": describe_preprocessing(app.preprocessing),
    }
    return {**manifest, "fixed_image_size": side} if side else manifest


def _weights_error(
    app: Application, weights: WeightsSpec, error: Exception
) -> WeightsUnavailableError:
    if weights.kind == "imagenet":
        return WeightsUnavailableError(
            f"could not get Keras' ImageNet weights for {app.constructor} ({error}). Without "
            "network, use --weights random (seeded random weights, for smoke runs and tests) or "
            f"--weights PATH (a Keras {app.constructor} weights file without the top, fetched "
            "elsewhere)"
        )
    return WeightsUnavailableError(
        f"cannot load weights from {weights.path}: {error}. It must be a Keras weights file "
        f"for {app.constructor} with include_top=False"
    )


def sha256_of_arrays(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    """python -m headstart.extractor.backbone [imagenet|random|PATH [BACKBONE [SEED]]]: the
    export into the cache, by itself (the Dockerfile's build stage; a machine with more
    memory, whose cache folder is then copied). SEED: of random weights."""
    usage = "usage: python -m headstart.extractor.backbone [imagenet|random|PATH [BACKBONE [SEED]]]"
    if len(argv) > 3 or any(arg in ("-h", "--help") for arg in argv):
        print(usage, file=sys.stderr)
        return 2
    try:
        seed = int(argv[2]) if len(argv) > 2 else 0
    except ValueError:
        print(f"{usage}\nError: SEED must be a whole number, got {argv[2]!r}", file=sys.stderr)
        return 2
    try:
        check_seed(seed)
        weights = parse_weights(argv[0] if argv else None, seed)
        cached = ensure_backbone(weights, argv[1] if len(argv) > 1 else BACKBONE)
    except HeadstartError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(
        f"{cached.manifest['weights']} {cached.manifest['backbone']} cached at {cached.onnx_path}"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(sys.argv[1:]))
