"""The extractor spec: what makes a set of features, as one typed, frozen value.

A spec names the network (InceptionV3 with its weights, or the `features` layer of a
train-cnn model), its precision, and how images reach it (size, colour mode, decode mode,
augmented views). It is built from embed's options (`from_options`, every check made
before any work) or read back from the fingerprint of a store or a head (`of_features`);
it finds its ONNX network (`network`) and writes the fingerprint of what that network makes
(`fingerprint`). Streams, predict and export take a spec, never the loose settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .augment import parse_augment, recipe
from .backbone import (
    BACKBONE,
    MIN_IMAGE_SIZE,
    WeightsSpec,
    ensure_backbone,
    find_backbone,
    parse_weights,
)
from .cnn_backbone import cnn_input, ensure_cnn_backbone, is_cnn_model_dir
from .decode import decode_outcome
from .errors import SettingError
from .fingerprint import make_fingerprint
from .model_cache import CachedBackbone, cached_export, sha256_of_file
from .precision import REDUCED_COPIES
from .settings import (
    DEFAULT_AUGMENT,
    DEFAULT_COLOR_MODE,
    DEFAULT_DECODE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_PRECISION,
    MAX_IMAGE_SIZE,
    MAX_VIEWS,
    PRECISIONS,
    channels_of,
    check_range,
    check_seed,
)


@dataclass(frozen=True)
class ExtractorSpec:
    image_size: int
    color_mode: str = DEFAULT_COLOR_MODE
    precision: str = DEFAULT_PRECISION
    decode: str = DEFAULT_DECODE  # "exact", or "fast" (JPEG draft mode, --fast-decode)
    views: dict | None = None  # the augmented views recipe (augment.recipe), None without
    weights: WeightsSpec | None = None  # InceptionV3 with these weights, or
    model_dir: Path | None = None  # the features layer of this train-cnn model, or
    recorded: dict[str, Any] | None = None  # the network a store's or head's features name

    @classmethod
    def from_options(
        cls,
        *,
        backbone: str | os.PathLike = BACKBONE,
        weights: str = "imagenet",
        seed: int = 0,
        image_size: int | None = None,
        precision: str = DEFAULT_PRECISION,
        fast_decode: bool = False,
        views: int = 0,
        augment: str = DEFAULT_AUGMENT,
    ) -> ExtractorSpec:
        """The spec embed's options ask for; a SettingError names any that cannot work."""
        check_seed(seed)
        if precision not in PRECISIONS:
            raise SettingError(
                f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        check_range("--views", views, 0, MAX_VIEWS)
        augmentations = parse_augment(augment)  # refused even unused: it says a mistake
        views_recipe = recipe(views, augmentations, seed) if views else None
        decode = "fast" if fast_decode else DEFAULT_DECODE
        if str(backbone) == BACKBONE:
            size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
            if size < MIN_IMAGE_SIZE:
                raise SettingError(
                    f"--image-size {size} is too small; InceptionV3 needs at least {MIN_IMAGE_SIZE}"
                )
            check_range("--image-size", size, 1, MAX_IMAGE_SIZE)
            return cls(
                size,
                DEFAULT_COLOR_MODE,
                precision,
                decode,
                views_recipe,
                weights=parse_weights(weights, seed),
            )
        if not is_cnn_model_dir(backbone):
            raise SettingError(
                f"--backbone {backbone}: neither {BACKBONE} nor a model folder from train-cnn "
                "(with model.json and model.keras)"
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
        elif self.weights is not None:
            fp32 = ensure_backbone(self.weights)
        else:
            raise ValueError("a spec of pixels only has no network of its own")
        return in_precision(fp32, self.precision)

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
        if self.weights is not None:
            known["backbone"] = BACKBONE
            if self.weights.kind != "file":  # a file is known by its arrays' hash only
                known["weights"] = self.weights.name
        return known


def copy_folder(fp32_folder: Path, precision: str) -> Path:
    """The cache folder of a network in `precision`: the fp32 one itself, or the copy's
    folder inside it."""
    return fp32_folder if precision == DEFAULT_PRECISION else fp32_folder / precision


def in_precision(fp32: CachedBackbone, precision: str) -> CachedBackbone:
    """`fp32` itself, or its cached copy in `precision` (made once, by precision.py)."""
    if precision == DEFAULT_PRECISION:
        return fp32

    def derive(onnx_path: Path) -> dict[str, Any]:
        REDUCED_COPIES[precision](fp32.onnx_path, onnx_path)
        return {**fp32.manifest, "precision": precision, "onnx_sha256": sha256_of_file(onnx_path)}

    return cached_export(
        copy_folder(fp32.onnx_path.parent, precision),
        derive,
        f"an {precision} copy of {fp32.onnx_path}",
    )
