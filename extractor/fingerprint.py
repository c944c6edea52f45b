"""The extractor fingerprint: what made a set of features, so features from two different
extractors are never mixed in one store, and a head knows which extractor it needs.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .preprocess import describe_preprocessing
from .settings import DEFAULT_BACKBONE, DEFAULT_DECODE, DEFAULT_PRECISION

# InceptionV3's, which a backbone manifest written before the other backbones came leaves out
PREPROCESSING = describe_preprocessing("inception")

# Fields that change the features. The ONNX file's sha256 and headstart's version are
# recorded but not compared: re-exporting the same weights with another tf2onnx gives
# another file with the same features (to ~1e-7).
COMPARED_FIELDS = (
    "backbone",
    "weights_sha256",
    "image_size",
    "preprocessing",
    "pooling",
    "dim",
    "extractor_version",
    "precision",
    "decode",
    "views",
    "store_dtype",  # how a store keeps them: a store never mixes float32 and float16 parts
)
# What a fingerprint written before a field existed meant by leaving it out.
DEFAULTS = {
    "backbone": DEFAULT_BACKBONE,
    "precision": DEFAULT_PRECISION,
    "decode": DEFAULT_DECODE,
    "store_dtype": "float32",
}


def make_fingerprint(
    model_manifest: dict[str, Any], image_size: int, decode: str = DEFAULT_DECODE
) -> dict[str, Any]:
    """Combine the cached backbone's manifest with this run's input settings. A backbone
    made from a train-cnn model brings its own preprocessing and colour mode; a reduced-
    precision copy its precision. `decode`: "exact", or "fast" (JPEG draft mode)."""
    return {
        "preprocessing": PREPROCESSING,
        "precision": DEFAULT_PRECISION,
        **model_manifest,
        "image_size": image_size,
        "decode": decode,
        "headstart_version": __version__,
    }


def fingerprint_differences(
    stored: dict[str, Any],
    wanted: dict[str, Any],
    names: tuple[str, str] = ("store", "this run"),
) -> list[str]:
    """Readable differences ("image_size: 299 (store) vs 139 (this run)"), empty if compatible.
    `names` say whose each fingerprint is."""
    differences = []
    for field in COMPARED_FIELDS:
        default = DEFAULTS.get(field)
        if stored.get(field, default) != wanted.get(field, default):
            before, after = _describe(stored, field), _describe(wanted, field)
            differences.append(f"{field}: {before} ({names[0]}) vs {after} ({names[1]})")
    return differences


def _describe(fingerprint: dict[str, Any], field: str) -> str:
    value = fingerprint.get(field, DEFAULTS.get(field))
    if field == "weights_sha256":  # a hash alone tells a user nothing: name the weights too
        return f"{fingerprint.get('weights')} ({str(value)[:12]}…)"
    return str(value)


def known_differences(stored: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    """The differences fingerprint_differences will find, told from what a run knows before
    exporting its network (`planned`: some fields, and `weights` by name): a mismatch then
    fails in a moment, not after the export."""
    differences = []
    for field, value in planned.items():
        before = stored.get(field, DEFAULTS.get(field))
        if before != value:
            if field in ("weights", "weights_sha256"):  # named as the full check names them
                before = _describe(stored, "weights_sha256")
                value = value if field == "weights" else f"{str(value)[:12]}…"
                field = "weights_sha256"
            differences.append(f"{field}: {before} (store) vs {value} (this run)")
    return differences
