"""`--backbone MODEL_DIR|FILE.onnx` in predict and export: the network that made a head's
features, given again where the cache does not hold it (another machine, a cleared cache).

A train-cnn MODEL_DIR is cut at its features layer as `embed --backbone` does; an ONNX file
(models/*/model.onnx in the cache where the features were made) is checked by sha256 against
the fingerprint, probed once, and copied into this machine's cache, so it is given once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .errors import SettingError, WeightsUnavailableError
from .model_cache import CachedBackbone, cached_export, sha256_of_file
from .onnx_backbone import ONNX_FILE_BACKBONE, recorded_onnx_file
from .settings import DEFAULT_COLOR_MODE, DEFAULT_PRECISION, channels_of

# What a fingerprint adds to its backbone's manifest: the rest describes the network
RUN_FIELDS = ("image_size", "decode", "headstart_version", "views", "precision")


def given_backbone(fingerprint: dict[str, Any], value: str) -> CachedBackbone:
    """The backbone `--backbone value` names, checked against `fingerprint`."""
    from .cnn_backbone import is_cnn_model_dir

    path = Path(value).expanduser()
    if not path.exists():
        raise SettingError(f"--backbone {value}: no such file or folder")
    if is_cnn_model_dir(path):
        return _cnn_backbone(fingerprint, path, f"--backbone {value}")
    if path.is_file() and path.suffix.lower() == ".onnx":
        made_from_file = fingerprint.get("backbone") == ONNX_FILE_BACKBONE
        if made_from_file and not _is_file_with_sha(path, fingerprint.get("onnx_sha256")):
            return recorded_onnx_file(fingerprint, value)  # the file embed was given
        return _onnx_backbone(fingerprint, path, value)
    raise SettingError(
        f"--backbone {value}: not a train-cnn model folder (model.json and model.keras) nor "
        "an .onnx file"
    )


def _is_file_with_sha(path: Path, sha256: str | None) -> bool:
    try:
        return sha256_of_file(path) == sha256
    except OSError:
        return False


def recorded_cnn_backbone(fingerprint: dict[str, Any]) -> CachedBackbone:
    """A train-cnn backbone missing from the cache, made again from the model folder the
    fingerprint records where that folder still is."""
    from .cnn_backbone import is_cnn_model_dir

    recorded = str(fingerprint.get("weights"))
    if is_cnn_model_dir(recorded):
        return _cnn_backbone(fingerprint, Path(recorded), f"the recorded model folder {recorded}")
    raise WeightsUnavailableError(
        f"the train-cnn network these features were made with ({recorded}) is neither in the "
        "cache nor at that path; give its model folder with --backbone MODEL_DIR, or its ONNX "
        "file (models/cnn-*/model.onnx in the cache where it was made) with --backbone FILE.onnx"
    )


def _cnn_backbone(fingerprint: dict[str, Any], folder: Path, named: str) -> CachedBackbone:
    from .cnn_backbone import ensure_cnn_backbone

    cached = ensure_cnn_backbone(folder)
    if cached.manifest.get("weights_sha256") != fingerprint.get("weights_sha256"):
        raise WeightsUnavailableError(
            f"{named}: its features layer is not the network these features were made with "
            f"({fingerprint.get('weights')}, weights sha256 "
            f"{str(fingerprint.get('weights_sha256'))[:12]}…)"
        )
    return cached


def _onnx_backbone(fingerprint: dict[str, Any], path: Path, value: str) -> CachedBackbone:
    from .backbone import cache_root
    from .onnx_probe import probe

    precision = fingerprint.get("precision", DEFAULT_PRECISION)
    if precision != DEFAULT_PRECISION:
        raise SettingError(
            f"--backbone {value}: an ONNX file stands in for fp32 features only; these are "
            f"{precision} (give --weights PATH or the train-cnn MODEL_DIR)"
        )
    try:
        sha = sha256_of_file(path)
    except OSError as error:
        raise SettingError(f"--backbone {value}: cannot be read ({error.strerror})") from None
    if sha != fingerprint.get("onnx_sha256"):
        raise WeightsUnavailableError(
            f"--backbone {value}: sha256 {sha[:12]}… is not the backbone these features were "
            f"made with ({fingerprint.get('weights')}, "
            f"{str(fingerprint.get('onnx_sha256'))[:12]}…)"
        )
    channels = channels_of(fingerprint.get("color_mode", DEFAULT_COLOR_MODE))
    size = fingerprint["image_size"]
    probe(path, (size, size, channels), "uint8", cache_root())
    manifest = {key: value for key, value in fingerprint.items() if key not in RUN_FIELDS}

    def copy(onnx_path: Path) -> dict[str, Any]:
        shutil.copyfile(path, onnx_path)
        return manifest

    return cached_export(cache_root() / "models" / f"given-{sha[:16]}", copy, f"copying {path}")
