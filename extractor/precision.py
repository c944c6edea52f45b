"""Reduced-precision copies of a cached backbone, made once and cached beside the fp32 one.

fp16  float16 weights and arithmetic, uint8 in / float32 out (the I/O types are kept), for
      GPUs; on TensorRT the fp32 model is built with TensorRT's own fp16 mode instead.
int8  static QDQ quantization (ONNX Runtime): int8 weights per channel, uint8 activations
      calibrated on crops of the two photos scikit-learn ships, for CPUs with VNNI. On this
      project's 2-core AVX-512 VNNI CPU it runs 2.1x fp32 with feature cosine 0.9999
      (bench/embed.py prints both).
The features of each precision differ a little, so the store's fingerprint records it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .backbone import CachedBackbone, cached_export, sha256_of_file
from .errors import SettingError
from .preprocess import PIXELS_INPUT
from .settings import DEFAULT_PRECISION, PRECISIONS

CALIBRATION_SIZE, CALIBRATION_IMAGES = 299, 64


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SettingError(
            f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )


def copy_folder(fp32_folder: Path, precision: str) -> Path:
    """The cache folder of a network in `precision`: the fp32 one itself, or the copy's
    folder inside it."""
    return fp32_folder if precision == DEFAULT_PRECISION else fp32_folder / precision


def with_precision(backbone: CachedBackbone, precision: str) -> CachedBackbone:
    """`backbone` itself for fp32, else its cached copy in `precision` (made if missing)."""
    check_precision(precision)
    if precision == DEFAULT_PRECISION:
        return backbone
    return cached_export(
        copy_folder(backbone.onnx_path.parent, precision),
        lambda onnx_path: _derive(backbone, precision, onnx_path),
        f"an {precision} copy of {backbone.onnx_path}",
    )


def _derive(backbone: CachedBackbone, precision: str, onnx_path: Path) -> dict[str, Any]:
    if precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(backbone.onnx_path)), keep_io_types=True)
        onnx.save(model, str(onnx_path))
    else:
        _quantize_int8(backbone.onnx_path, onnx_path)
    return {**backbone.manifest, "precision": precision, "onnx_sha256": sha256_of_file(onnx_path)}


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(calibration_batches())

    class Photos(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {PIXELS_INPUT: batch}

    with tempfile.TemporaryDirectory(prefix="headstart-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Photos(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def calibration_batches(batch_size: int = 8) -> list[np.ndarray]:
    """Real photographs without a download: seeded random crops (half of them mirrored) of
    scikit-learn's two sample photos, resized to 299 px, as uint8 batches."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    images = []
    for index in range(CALIBRATION_IMAGES):
        photo = photos[index % len(photos)]
        side = int(rng.integers(200, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if index % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        size = (CALIBRATION_SIZE, CALIBRATION_SIZE)
        images.append(np.asarray(crop.resize(size, Image.Resampling.BILINEAR)))
    stacked = np.stack(images)
    return [stacked[i : i + batch_size] for i in range(0, len(stacked), batch_size)]
