"""The extractor spec: what makes a set of features, as one typed, frozen value.

A spec names the network (a Keras application with its weights, InceptionV3 by default; an
ONNX file; or the `features` layer of a train-cnn model), its precision, and how images
reach it (size, colour mode, decode mode, augmented views). It is built from embed's
options (`from_options`, every check made before any work) or read back from the
fingerprint of a store or a head (`of_features`); it finds its ONNX network (`network`)
and writes the fingerprint of what that network makes (`fingerprint`). Streams, predict
and export take a spec, never the loose settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .applications import APPLICATIONS, application
from .augment import parse_augment, recipe
from .backbone import BACKBONE, WeightsSpec, ensure_backbone, find_backbone, parse_weights
from .cnn_backbone import cnn_input, ensure_cnn_backbone, is_cnn_model_dir
from .decode import decode_outcome
from .errors import SettingError
from .fingerprint import make_fingerprint
from .model_cache import CachedBackbone, cached_export, sha256_of_file
from .onnx_backbone import (
    ONNX_FILE_BACKBONE,
    OnnxFile,
    ensure_onnx_file_backbone,
    is_onnx_file_name,
    read_onnx_file,
)
from .precision import INT8_COSINE_FLOOR, REDUCED_COPIES
from .settings import (
    DEFAULT_AUGMENT,
    DEFAULT_COLOR_MODE,
    DEFAULT_DECODE,
    DEFAULT_PRECISION,
    MAX_IMAGE_SIZE,
    MAX_VIEWS,
    PRECISIONS,
    channels_of,
    check_range,
    check_seed,
)
from .terminal import said_by

log = logging.getLogger("headstart")

# The size a copy of a network that takes any size is calibrated at where it has no default
CALIBRATION_SIZE = 224


@dataclass(frozen=True)
class ExtractorSpec:
    image_size: int
    color_mode: str = DEFAULT_COLOR_MODE
    precision: str = DEFAULT_PRECISION
    decode: str = DEFAULT_DECODE  # "exact", or "fast" (JPEG draft mode, --fast-decode)
    views: dict | None = None  # the augmented views recipe (augment.recipe), None without
    weights: WeightsSpec | None = None  # the Keras application `backbone` with these weights,
    backbone: str = BACKBONE
    onnx_file: OnnxFile | None = None  # or this ONNX file, or
    model_dir: Path | None = None  # the features layer of this train-cnn model, or
    recorded: dict[str, Any] | None = None  # the network a store's or head's features name

    @classmethod
    def from_options(
        cls,
        *,
        backbone: str | os.PathLike = BACKBONE,
        weights: str | None = None,
        seed: int = 0,
        image_size: int | None = None,
        backbone_output: str | None = None,
        precision: str = DEFAULT_PRECISION,
        fast_decode: bool = False,
        views: int = 0,
        augment: str = DEFAULT_AUGMENT,
    ) -> ExtractorSpec:
        """The spec embed's options ask for; a SettingError names any that cannot work.
        `weights` (default imagenet) are for a backbone named, which is built from them."""
        check_seed(seed)
        if precision not in PRECISIONS:
            raise SettingError(
                f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        check_range("--views", views, 0, MAX_VIEWS)
        augmentations = parse_augment(augment)  # refused even unused: it says a mistake
        views_recipe = recipe(views, augmentations, seed) if views else None
        decode = "fast" if fast_decode else DEFAULT_DECODE
        if not str(backbone).strip():
            raise SettingError(
                "--backbone is empty; give a backbone name (`headstart backbones` lists them), "
                "an .onnx file or a train-cnn model folder"
            )
        if backbone_output is not None and not is_onnx_file_name(backbone):
            raise SettingError("--backbone-output applies to --backbone FILE.onnx only")
        if str(backbone) in APPLICATIONS:
            size = _application_size(application(str(backbone)), image_size)
            return cls(
                size,
                DEFAULT_COLOR_MODE,
                precision,
                decode,
                views_recipe,
                weights=parse_weights(weights, seed),
                backbone=str(backbone),
            )
        if not is_onnx_file_name(backbone) and not is_cnn_model_dir(backbone):
            if Path(backbone).is_dir():
                raise SettingError(
                    f"--backbone {backbone}: a folder, but not a model folder from train-cnn "
                    "(with model.json and model.keras)"
                )
            application(str(backbone))  # names the choices
        if weights is not None:
            raise SettingError(
                f"--weights applies to backbones given by name; --backbone {backbone} brings "
                "its own"
            )
        if is_onnx_file_name(backbone):
            onnx_file = read_onnx_file(Path(backbone), backbone_output, image_size)
            check_range("--image-size", onnx_file.image_size, 1, MAX_IMAGE_SIZE)
            return cls(
                onnx_file.image_size,
                DEFAULT_COLOR_MODE,
                precision,
                decode,
                views_recipe,
                onnx_file=onnx_file,
            )
        model_input = cnn_input(Path(backbone))
        trained_size = int(model_input["image_size"])
        if image_size not in (None, trained_size):
            raise SettingError(
                f"--backbone {backbone} was trained on {trained_size} px images; leave "
                f"--image-size out or set it to {trained_size}"
            )
        check_range("--image-size", trained_size, 1, MAX_IMAGE_SIZE)
        return cls(
            trained_size,
            model_input["color_mode"],
            precision,
            decode,
            views_recipe,
            model_dir=Path(backbone),
        )

    @classmethod
    def of_features(cls, fingerprint: dict[str, Any]) -> ExtractorSpec:
        """The spec that made features with this (checked) fingerprint."""
        return cls(
            int(fingerprint["image_size"]),
            fingerprint.get("color_mode", DEFAULT_COLOR_MODE),
            fingerprint.get("precision", DEFAULT_PRECISION),
            fingerprint.get("decode", DEFAULT_DECODE),
            fingerprint.get("views"),
            recorded=fingerprint,
        )

    @classmethod
    def of_pixels(cls, image_size: int, color_mode: str) -> ExtractorSpec:
        """How images reach a network that takes pixels and has no spec of its own (a
        train-cnn model run whole by predict)."""
        return cls(image_size, color_mode)

    @property
    def fast_decode(self) -> bool:
        return self.decode == "fast"

    @property
    def channels(self) -> int:
        return channels_of(self.color_mode)

    def decoder(self) -> Callable[..., Any]:
        """decode.decode_outcome at this spec's size, colour mode and decode mode: called
        as decoder(location, known_sha256), it gives the pixels this spec's network takes
        (or the DecodeError saying why not)."""
        return partial(
            decode_outcome, size=self.image_size, color_mode=self.color_mode, fast=self.fast_decode
        )

    def network(self, weights: str | None = None, given: str | None = None) -> CachedBackbone:
        """The ONNX network in this spec's precision, from the cache: exported there first
        where needed (InceptionV3, a train-cnn model), or, for recorded features, found by
        its identity (see backbone.find_backbone; `weights` and `given` are predict's and
        export's --weights and --backbone)."""
        if self.recorded is not None:
            fp32 = find_backbone(self.recorded, weights, given)
        elif self.model_dir is not None:
            fp32 = ensure_cnn_backbone(self.model_dir)
        elif self.onnx_file is not None:
            fp32 = ensure_onnx_file_backbone(self.onnx_file)
        elif self.weights is not None:
            fp32 = ensure_backbone(self.weights, self.backbone)
        else:
            raise ValueError("a spec of pixels only has no network of its own")
        return in_precision(fp32, self.precision, self.image_size)

    def fingerprint(self, network: CachedBackbone) -> dict[str, Any]:
        """The fingerprint of the features `network` (this spec's) makes."""
        made = make_fingerprint(network.manifest, self.image_size, self.decode)
        if self.views:
            made["views"] = self.views
        return made

    def known_fields(self) -> dict[str, Any]:
        """The fingerprint's fields known before the network is exported (`weights` by
        name where a name identifies them): a store of another extractor is refused on
        these in a moment, not after a 20 s export."""
        known = {
            "image_size": self.image_size,
            "precision": self.precision,
            "decode": self.decode,
            "views": self.views,
        }
        if self.onnx_file is not None:  # known by its file's hash and the output it gives
            known["backbone"] = ONNX_FILE_BACKBONE
            known["weights_sha256"] = self.onnx_file.sha256
            known["pooling"] = f"output {self.onnx_file.output!r}"
        if self.weights is not None:
            known["backbone"] = self.backbone
            if self.weights.kind != "file":  # a file is known by its arrays' hash only
                known["weights"] = self.weights.name
        return known


def _application_size(app, image_size: int | None) -> int:
    """--image-size for the Keras application `app`: its own by default, at least its
    smallest, and only its own where it is exported at a fixed size."""
    size = app.size if image_size is None else image_size
    if app.fixed_size and size != app.size:
        raise SettingError(
            f"--image-size {size}: {app.name} takes {app.size} px images only (its ImageNet "
            f"weights need a fixed input size); leave --image-size out or set it to {app.size}"
        )
    if size < app.min_size:
        raise SettingError(
            f"--image-size {size} is too small; {app.constructor} needs at least {app.min_size}"
        )
    check_range("--image-size", size, 1, MAX_IMAGE_SIZE)
    return size


def copy_folder(fp32_folder: Path, precision: str) -> Path:
    """The cache folder of a network in `precision`: the fp32 one itself, or the copy's
    folder inside it."""
    return fp32_folder if precision == DEFAULT_PRECISION else fp32_folder / precision


def in_precision(
    fp32: CachedBackbone, precision: str, image_size: int | None = None
) -> CachedBackbone:
    """`fp32` itself, or its cached copy in `precision` (made once, by precision.py, at the
    network's own size: its fixed one, its application's default, else `image_size`)."""
    if precision == DEFAULT_PRECISION:
        return fp32
    manifest = fp32.manifest
    named = manifest.get("backbone")
    if named == ONNX_FILE_BACKBONE or str(named).startswith("train-cnn"):
        named = manifest.get("weights")  # the file or folder it was made from
    app = APPLICATIONS.get(manifest.get("backbone"))
    size = manifest.get("fixed_image_size") or (app.size if app else None)
    size = size or image_size or CALIBRATION_SIZE
    channels = channels_of(manifest.get("color_mode", DEFAULT_COLOR_MODE))

    def derive(onnx_path: Path) -> dict[str, Any]:
        try:
            measured = REDUCED_COPIES[precision](fp32.onnx_path, onnx_path, size, channels)
        except OSError:
            raise  # a full disk, say: cached_export names it
        except Exception as error:  # the converters' own kinds, on a graph from elsewhere
            raise SettingError(
                f"cannot make an {precision} copy of {named} ({said_by(error)}); "
                "use --precision fp32"
            ) from None
        made = {"precision": precision, "onnx_sha256": sha256_of_file(onnx_path)}
        return {**manifest, **measured, **made}

    copy = cached_export(
        copy_folder(fp32.onnx_path.parent, precision),
        derive,
        f"making an {precision} copy of {fp32.onnx_path}",
    )
    # where this network was made from now (the copy keeps the path of its first run)
    copy = CachedBackbone(copy.onnx_path, {**copy.manifest, "weights": manifest.get("weights")})
    cosine = copy.manifest.get("int8_cosine", 1.0)
    if cosine < INT8_COSINE_FLOOR:
        log.warning(
            "warning: the int8 copy of %s gives features with cosine %.3f to its fp32 ones "
            "(below %s): heads will see a different network; --precision fp32 keeps it",
            named, cosine, INT8_COSINE_FLOOR,
        )  # fmt: skip
    return copy
