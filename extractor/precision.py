"""Reduced-precision copies of a cached backbone, made once and cached beside the fp32 one.

fp16  float16 weights and arithmetic, uint8 in / float32 out (the I/O types are kept), for
      GPUs; on TensorRT the fp32 model is built with TensorRT's own fp16 mode instead.
int8  static QDQ quantization (ONNX Runtime): int8 weights per channel, uint8 activations
      calibrated on crops of the two photos scikit-learn ships, for CPUs with VNNI. On this
      project's 2-core AVX-512 VNNI CPU it runs InceptionV3 at 2.1x fp32 with feature cosine
      0.9999 (bench/embed.py prints both); other networks lose more (bench/backbones.py), so
      each copy's mean feature cosine to fp32 on other crops is measured when it is made,
      kept in its manifest (`int8_cosine`), and a run warned below INT8_COSINE_FLOOR.
The features of each precision differ a little, so the store's fingerprint records it.
These functions only convert one ONNX file into another; which copy a run needs, and where
it is cached, is the extractor spec's business (spec.in_precision).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .preprocess import PIXELS_INPUT
from .settings import images_per_batch

CALIBRATION_IMAGES, CHECK_IMAGES = 64, 16
# Batches of 8 images at 299 px and of as many pixels at larger sizes (3 at 528, 2 at 600):
# a batch of 8 at 528 px took EfficientNet-B0's calibration to 8.3 GB, and EfficientNet-B6's
# past 24 GB.
CALIBRATION_BATCH = 8
INT8_COSINE_FLOOR = 0.99  # below it, int8 features are not the network's any more


def to_fp16(source: Path, target: Path, size: int, channels: int = 3) -> dict:
    """`source` with float16 weights and arithmetic, its uint8 input and float32 output kept.
    (The image size and channels the copy is for do not matter here.)"""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return {}


def to_int8(source: Path, target: Path, size: int, channels: int = 3) -> dict:
    """`source` quantized (static QDQ), calibrated on crops of two real photos at `size`
    with `channels` (3, or 1: grayscale); returns the copy's `int8_cosine`: its mean
    feature cosine to `source` on other crops of the same photos."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    per_batch = images_per_batch(CALIBRATION_BATCH, size)
    batches = iter(calibration_batches(size, per_batch, CALIBRATION_IMAGES, channels=channels))

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
    return {"int8_cosine": round(mean_cosine(source, target, size, channels), 5)}


def mean_cosine(reference: Path, copy: Path, size: int, channels: int = 3) -> float:
    """The mean cosine between the features of two networks on CHECK_IMAGES other crops
    (another seed) of the photos calibration used."""
    import onnxruntime as ort

    batches = calibration_batches(
        size, images_per_batch(CALIBRATION_BATCH, size), CHECK_IMAGES, seed=1, channels=channels
    )
    features = []
    for path in (reference, copy):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {PIXELS_INPUT: batch})[0] for batch in batches]
        features.append(np.concatenate(outputs).reshape(CHECK_IMAGES, -1))
    want, got = features
    norms = np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    return float(np.mean((want * got).sum(axis=1) / np.maximum(norms, 1e-30)))


def calibration_batches(
    size: int,
    batch_size: int = 8,
    count: int = CALIBRATION_IMAGES,
    seed: int = 0,
    channels: int = 3,
) -> list[np.ndarray]:
    """Real photographs without a download: seeded random crops (half of them mirrored) of
    scikit-learn's two sample photos, resized to `size` px, as uint8 batches (N, size,
    size, channels): RGB, or grayscale for 1."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(200, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if index % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(crop) if channels == 3 else np.asarray(crop.convert("L"))[..., None]
        images.append(pixels)
    stacked = np.stack(images)
    return [stacked[i : i + batch_size] for i in range(0, len(stacked), batch_size)]


REDUCED_COPIES = {"fp16": to_fp16, "int8": to_int8}  # every precision but fp32
