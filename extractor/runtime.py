"""Runtime stage: the ONNX Runtime session that turns preprocessed batches into features.

Every execution provider is chosen here and only here. onnxruntime-gpu lists the CUDA and
TensorRT providers even on machines without a GPU, so the decision is taken from what the
session really got (`session.get_providers()`), never from `get_available_providers()`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from pathlib import Path

import numpy as np

from .errors import ProviderUnavailableError, SettingError

log = logging.getLogger("headstart")

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_PROVIDER_OF_DEVICE = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_DEVICE_OF_PROVIDER = {provider: device for device, provider in _PROVIDER_OF_DEVICE.items()}


def check_device(device: str) -> None:
    """Fail at once on an unknown device or one whose provider this onnxruntime lacks."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise SettingError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device != "auto" and _PROVIDER_OF_DEVICE[device] not in ort.get_available_providers():
        raise ProviderUnavailableError(
            f"--device {device}: this onnxruntime has no {_PROVIDER_OF_DEVICE[device]} "
            "(install onnxruntime-gpu, or use --device cpu)"
        )


class BackboneSession:
    """An ONNX Runtime session on the chosen device; `device` says which one it really got."""

    def __init__(self, onnx_path: Path, device: str = "auto", cache_dir: Path | None = None):
        import onnxruntime as ort

        check_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Planning memory from the first run only pays off after two; measured on 2 cores,
        # 64 x 299 px: first two calls 1.84 + 1.81 s with it, 1.85 + 1.64 s without.
        options.enable_mem_pattern = False
        providers = _providers_for(device, cache_dir, ort.get_available_providers())
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        got = self._session.get_providers()[0]
        self.device = _DEVICE_OF_PROVIDER.get(got, got)
        if device != "auto" and self.device != device:
            raise ProviderUnavailableError(
                f"--device {device}: ONNX Runtime could not start {_PROVIDER_OF_DEVICE[device]} "
                f"on this machine (no usable GPU, or CUDA/cuDNN libraries missing) and fell back "
                f"to {got}; use --device cpu or --device auto"
            )
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        # Backbones take uint8 pixels; a train-cnn model.onnx takes them as float32.
        self._input_dtype = np.float32 if model_input.type == "tensor(float)" else np.uint8

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixel batch -> the model's first output (features or probabilities)."""
        feed = {self._input_name: batch.astype(self._input_dtype, copy=False)}
        return self._session.run(None, feed)[0]


def _providers_for(device: str, cache_dir: Path | None, available: list[str]) -> list:
    """The provider chain to ask for. `auto` asks for GPU providers only where a GPU (and,
    for TensorRT, its libraries) is present, so a CPU node starts quietly."""
    cpu = "CPUExecutionProvider"
    wants_gpu = device in ("cuda", "tensorrt") or (device == "auto" and _cuda_device_count() > 0)
    wants_tensorrt = device == "tensorrt" or (wants_gpu and device == "auto" and _has_tensorrt())
    chain = []
    if wants_tensorrt and _PROVIDER_OF_DEVICE["tensorrt"] in available:
        options = {}
        if cache_dir is not None:  # building a TensorRT engine takes minutes: keep it
            options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
        chain.append((_PROVIDER_OF_DEVICE["tensorrt"], options))
    if wants_gpu and _PROVIDER_OF_DEVICE["cuda"] in available:
        chain.append(_PROVIDER_OF_DEVICE["cuda"])
    return chain + [cpu]


def _cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 where there is no driver), without any CUDA toolkit."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except OSError:
        return 0


def _has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt_libs") is not None:
        return True
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return False
    return True
