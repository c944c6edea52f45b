"""Which ONNX Runtime execution providers a session asks for, and with which options: every
provider is chosen here and only here. onnxruntime-gpu lists the CUDA and TensorRT providers
even on machines without a GPU, so `auto` looks for a GPU through the CUDA driver itself, and
the session (runtime.py) then checks what it really got.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

from .errors import ProviderUnavailableError, SettingError
from .settings import DEVICES

PROVIDER_OF_DEVICE = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEVICE_OF_PROVIDER = {provider: device for device, provider in PROVIDER_OF_DEVICE.items()}
CUDNN_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def check_device(device: str) -> None:
    """Fail at once on an unknown device or one whose provider this onnxruntime lacks."""
    if device not in DEVICES:
        raise SettingError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device in ("auto", "cpu"):  # every onnxruntime has the CPU provider
        return
    import onnxruntime as ort  # 0.05-0.15 s: only where a GPU provider must be looked for

    if PROVIDER_OF_DEVICE[device] not in ort.get_available_providers():
        raise ProviderUnavailableError(
            f"--device {device}: this onnxruntime has no {PROVIDER_OF_DEVICE[device]} "
            "(install onnxruntime-gpu, or use --device cpu)"
        )
    if device == "tensorrt" and not has_tensorrt():
        raise ProviderUnavailableError(
            "--device tensorrt: TensorRT 10's libraries (libnvinfer.so.10) are not on this "
            f"machine; {tensorrt_requirements()}, or use --device cuda"
        )


def gpu_requirements() -> str:
    """What this onnxruntime build needs to run on a GPU, in words."""
    try:
        from onnxruntime.capi import build_and_package_info as build
    except ImportError:
        return ""
    cuda = getattr(build, "cuda_version", "")
    if not cuda:
        return "This onnxruntime has no CUDA support: pip install onnxruntime-gpu."
    major = cuda.split(".")[0]
    return (
        f"This onnxruntime-gpu {build.__version__} is built for CUDA {cuda} with cuDNN 9: it "
        f"needs their libraries (pip install 'headstart[gpu]' brings them) and an NVIDIA "
        f"driver that supports CUDA {major} (nvidia-smi shows which CUDA the driver supports)."
    )


def tensorrt_requirements() -> str:
    """The pip package of TensorRT's libraries for the CUDA this onnxruntime is built for."""
    try:
        from onnxruntime.capi import build_and_package_info as build
    except ImportError:
        return "pip install onnxruntime-gpu first"
    major = (getattr(build, "cuda_version", "") or "13").split(".")[0]
    return f"pip install tensorrt-cu{major}-libs (TensorRT 10 for CUDA {major}, as this build)"


def runs_on_cpu(device: str) -> bool:
    """Whether `device` means the CPU here: asked for, or `auto` on a machine without a GPU."""
    return device == "cpu" or (device == "auto" and cuda_device_count() == 0)


def check_device_for_precision(device: str, precision: str) -> None:
    """fp16 is for GPUs: refuse it at once where the backbone would run on CPU."""
    if precision != "fp16":
        return
    if runs_on_cpu(device):
        raise SettingError(
            "--precision fp16 needs a GPU (--device cuda or tensorrt) and none is usable "
            "here; on CPU use fp32, or int8 for speed"
        )


def cuda_options() -> dict[str, str]:
    """The CUDA provider's options headstart sets: none of its own. ONNX Runtime's defaults
    are already what embedding wants: cudnn_conv_algo_search EXHAUSTIVE (every algorithm
    tried once per input shape: once per run for the full batch, once more for the last
    partial one), cudnn_conv_use_max_workspace 1, do_copy_in_default_stream 1, and TF32
    matrix maths on Ampere and later (use_tf32 1: features differ from the CPU's in the
    4th digit; bench/gpu.py prints the cosine). Two variables let a benchmark (or a user)
    try others: HEADSTART_CUDA_NHWC=1 (prefer_nhwc: the NHWC kernels, no layout
    transposes) and HEADSTART_CUDNN_SEARCH=EXHAUSTIVE|HEURISTIC|DEFAULT."""
    options = {}
    if os.environ.get("HEADSTART_CUDA_NHWC") == "1":
        options["prefer_nhwc"] = "1"
    search = os.environ.get("HEADSTART_CUDNN_SEARCH")
    if search:
        if search not in CUDNN_SEARCHES:
            raise SettingError(
                f"HEADSTART_CUDNN_SEARCH={search!r}; choose one of {', '.join(CUDNN_SEARCHES)}"
            )
        options["cudnn_conv_algo_search"] = search
    return options


def tensorrt_options(cache_dir: Path | None, fp16: bool) -> dict[str, str]:
    """TensorRT builds an engine per input shape, in minutes: the engines and the timing
    cache (what the kernels' timings taught it) are kept in `cache_dir`, so no process
    after the first builds one again for the same shapes."""
    options = {"trt_fp16_enable": "1" if fp16 else "0"}
    if cache_dir is not None:
        options |= {
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(cache_dir),
        }
    return options


def tensorrt_profile(input_name: str, batch_shape: tuple[int, int, int, int]) -> dict[str, str]:
    """One optimisation profile for batches of 1 to N images of one size: the last partial
    batch runs on the same engine instead of building one for its shape."""
    batch, height, width, channels = batch_shape
    largest = f"{input_name}:{batch}x{height}x{width}x{channels}"
    return {
        "trt_profile_min_shapes": f"{input_name}:1x{height}x{width}x{channels}",
        "trt_profile_opt_shapes": largest,
        "trt_profile_max_shapes": largest,
    }


def providers_for(
    device: str, cache_dir: Path | None, available: list[str], fp16: bool = False
) -> list:
    """The provider chain to ask for. `auto` asks for GPU providers only where a GPU (and,
    for TensorRT, its libraries) is present, so a CPU node starts quietly."""
    cpu = "CPUExecutionProvider"
    wants_gpu = device in ("cuda", "tensorrt") or (device == "auto" and cuda_device_count() > 0)
    wants_tensorrt = device == "tensorrt" or (wants_gpu and device == "auto" and has_tensorrt())
    chain = []
    if wants_tensorrt and PROVIDER_OF_DEVICE["tensorrt"] in available:
        chain.append((PROVIDER_OF_DEVICE["tensorrt"], tensorrt_options(cache_dir, fp16)))
    if wants_gpu and PROVIDER_OF_DEVICE["cuda"] in available:
        chain.append((PROVIDER_OF_DEVICE["cuda"], cuda_options()))
    return chain + [(cpu, {})]


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 where there is no driver), without any CUDA toolkit."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except OSError:
        return 0


def has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt_libs") is not None:
        return True
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return False
    return True
