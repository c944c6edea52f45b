"""The speed options of embed, checked for what they promise besides speed: int8 and fp16
copies stay close to fp32, fast decoding stays close to exact decoding, and decode threads
give way to the model. (Speed itself is measured by bench/embed.py, never asserted here.)"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pandas as pd
from PIL import Image

import corpus
from headstart.extractor.backbone import ensure_backbone, parse_weights
from headstart.extractor.decode import load_image
from headstart.extractor.decode_pool import DECODE_NICENESS, decoded_in_order
from headstart.extractor.precision import calibration_batches
from headstart.extractor.runtime import BackboneSession
from headstart.extractor.scan import ImageFile
from headstart.extractor.spec import in_precision


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_features_stay_close_to_fp32_and_are_kept_apart(run_embed, sample_images, tmp_path):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert run_embed(sample_images, fp32).exit_code == 0
    result = run_embed(sample_images, int8, "--precision", "int8")
    assert result.exit_code == 0, result.output

    a, b = pd.read_parquet(fp32), pd.read_parquet(int8)
    assert a["path"].tolist() == b["path"].tolist()
    assert cosines(np.stack(a["features"]), np.stack(b["features"])).min() >= 0.99
    fingerprint = json.loads((int8 / "_headstart.json").read_text())["fingerprint"]
    assert fingerprint["precision"] == "int8"

    mixed = run_embed(sample_images, fp32, "--precision", "int8")
    assert mixed.exit_code == 1
    assert "precision: fp32 (store) vs int8 (this run)" in mixed.stderr


def test_reduced_precision_copies_are_cached_beside_fp32(weights_file):
    fp32 = ensure_backbone(parse_weights(str(weights_file)))
    pixels = calibration_batches(299)[0]
    reference = BackboneSession(fp32.onnx_path, "cpu").run(pixels)
    for precision, floor in (("fp16", 0.999), ("int8", 0.99)):
        copy = in_precision(fp32, precision)
        assert copy.onnx_path == fp32.onnx_path.parent / precision / "model.onnx"
        assert copy.manifest["precision"] == precision
        assert in_precision(fp32, precision).manifest == copy.manifest  # cached, not remade
        features = BackboneSession(copy.onnx_path, "cpu").run(pixels)
        assert features.dtype == np.float32
        assert cosines(reference, features).min() >= floor, precision
    int8 = in_precision(fp32, "int8").manifest
    assert 0.99 <= int8["int8_cosine"] <= 1  # measured when the copy was made, on other crops


def test_fp16_on_cpu_is_refused_before_any_work(run_embed, sample_images, tmp_path):
    result = run_embed(sample_images, tmp_path / "f", "--precision", "fp16", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: --precision fp16 needs a GPU (--device cuda or tensorrt) and none is usable "
        "here; on CPU use fp32, or int8 for speed\n"
    )
    assert not (tmp_path / "f").exists()


def test_fast_decode_draws_large_jpegs_from_a_reduced_scale(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(corpus.gradient(1200, 900)).save(big, quality=92)
    exact, fast = load_image(big, 139), load_image(big, 139, fast=True)
    assert (fast.width, fast.height) == (exact.width, exact.height) == (1200, 900)
    difference = np.abs(fast.pixels.astype(int) - exact.pixels.astype(int))
    assert 0 < difference.mean() < 3  # really another decoding, and a close one

    small = tmp_path / "small.jpg"  # under twice the size: decoded exactly either way
    Image.fromarray(corpus.gradient(250, 200)).save(small)
    np.testing.assert_array_equal(
        load_image(small, 139, fast=True).pixels, load_image(small, 139).pixels
    )
    png = tmp_path / "big.png"  # not a JPEG: no draft mode
    Image.fromarray(corpus.gradient(1200, 900)).save(png)
    np.testing.assert_array_equal(
        load_image(png, 139, fast=True).pixels, load_image(png, 139).pixels
    )


def test_fast_decode_keeps_the_displayed_size_of_rotated_photos(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.fromarray(corpus.gradient(1200, 800))
    exif = image.getexif()
    exif[corpus.ORIENTATION_TAG] = 6  # rotated 90 degrees: displayed 800 wide, 1200 high
    image.save(path, exif=exif)
    for fast in (False, True):
        decoded = load_image(path, 139, fast=fast)
        assert (decoded.width, decoded.height) == (800, 1200)


def test_decode_threads_run_at_the_lowest_priority(tmp_path):
    priorities = []

    def load(image):
        priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    images = [ImageFile(f"{i}.jpg", None, tmp_path / f"{i}.jpg") for i in range(8)]
    list(decoded_in_order(images, load, workers=2, batch_size=4))
    assert priorities == [DECODE_NICENESS] * 8
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != DECODE_NICENESS


# --- GPU libraries: CPU-only here, so what is checked is when they are loaded and what a
# failed GPU start says --------------------------------------------------------------------


def test_gpu_libraries_are_preloaded_only_for_a_gpu_and_quietly(
    weights_file, monkeypatch, capfd, tmp_path
):
    import onnxruntime as ort
    import pytest
    from onnxruntime.capi import build_and_package_info as build

    from headstart.extractor import providers, runtime
    from headstart.extractor.errors import ProviderUnavailableError

    if providers.cuda_device_count() > 0 or not getattr(build, "cuda_version", ""):
        pytest.skip("needs onnxruntime-gpu on a machine without a usable GPU")
    calls = []

    def fake_preload(**_options):
        calls.append("preload")
        print("Failed to load libcublas.so.13: not found")  # what ONNX Runtime prints

    monkeypatch.setattr(ort, "preload_dlls", fake_preload)
    # pip's TensorRT: a package whose import loads its libraries (here it records the import)
    fake_tensorrt = tmp_path / "tensorrt_libs"
    fake_tensorrt.mkdir()
    (fake_tensorrt / "__init__.py").write_text("import sys\nsys.tensorrt_loaded = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt_libs", raising=False)
    runtime.load_gpu_libraries.cache_clear()
    onnx_path = ensure_backbone(parse_weights(str(weights_file))).onnx_path

    BackboneSession(onnx_path, "cpu")
    assert calls == [] and not hasattr(sys, "tensorrt_loaded")  # CPU runs touch no GPU library
    with pytest.raises(ProviderUnavailableError) as refused:
        BackboneSession(onnx_path, "cuda")
    BackboneSession(onnx_path, "cpu")
    with pytest.raises(ProviderUnavailableError):
        BackboneSession(onnx_path, "cuda")
    assert calls == ["preload"]  # once per process
    assert sys.tensorrt_loaded
    monkeypatch.delattr(sys, "tensorrt_loaded")
    printed = capfd.readouterr()  # ONNX Runtime's C++ logger writes to the file descriptors
    assert printed.out == "" and "onnxruntime" not in printed.err  # the debug log has it
    message = str(refused.value)
    assert "ONNX Runtime said: Failed to load library" in message  # its gist, in one line
    assert message.startswith("--device cuda: ONNX Runtime could not start CUDAExecutionProvider")
    assert f"is built for CUDA {build.cuda_version} with cuDNN 9" in message
    assert "pip install 'headstart[gpu]'" in message
    assert "Preloading the GPU libraries said: Failed to load libcublas.so.13: not found" in message
    runtime.load_gpu_libraries.cache_clear()
