"""Runtime stage: the ONNX Runtime session that turns preprocessed batches into features.

Every execution provider is chosen here and only here. onnxruntime-gpu lists the CUDA and
TensorRT providers even on machines without a GPU, so the decision is taken from what the
session really got (`session.get_providers()`), never from `get_available_providers()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from .backbone import cache_root
from .errors import ProviderUnavailableError, SettingError
from .settings import DEFAULT_PRECISION, DEVICES, usable_cores
from .warm_start import take_early_session

log = logging.getLogger("headstart")

_PROVIDER_OF_DEVICE = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_DEVICE_OF_PROVIDER = {provider: device for device, provider in _PROVIDER_OF_DEVICE.items()}


def check_device(device: str) -> None:
    """Fail at once on an unknown device or one whose provider this onnxruntime lacks."""
    if device not in DEVICES:
        raise SettingError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device in ("auto", "cpu"):  # every onnxruntime has the CPU provider
        return
    import onnxruntime as ort  # 0.05-0.15 s: only where a GPU provider must be looked for

    if _PROVIDER_OF_DEVICE[device] not in ort.get_available_providers():
        raise ProviderUnavailableError(
            f"--device {device}: this onnxruntime has no {_PROVIDER_OF_DEVICE[device]} "
            "(install onnxruntime-gpu, or use --device cpu)"
        )


class BackboneSession:
    """An ONNX Runtime session on the chosen device; `device` says which one it really got."""

    def __init__(
        self,
        onnx_path: Path,
        device: str = "auto",
        cache_dir: Path | None = None,
        fp16: bool = False,
    ):
        import onnxruntime as ort

        check_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Planning memory from the first run only pays off after two; measured on 2 cores,
        # 64 x 299 px: first two calls 1.84 + 1.81 s with it, 1.85 + 1.64 s without.
        options.enable_mem_pattern = False
        # One compute thread per core this process may use (ORT's own guess can see the
        # host's cores inside a container), and no spin-waiting: an idle ORT thread gives
        # its core to the decode threads instead of burning it (see pipeline's priorities).
        options.intra_op_num_threads = usable_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers_for(device, cache_dir, ort.get_available_providers(), fp16)
        said: list[str] = []
        if len(providers) > 1:  # a GPU provider comes first
            load_gpu_libraries()
            with _native_stderr_into(said):
                self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        else:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        got = self._session.get_providers()[0]
        self.device = _DEVICE_OF_PROVIDER.get(got, got)
        if device != "auto" and self.device != device:
            reason = _first_error(said)
            raise ProviderUnavailableError(
                f"--device {device}: ONNX Runtime could not start {_PROVIDER_OF_DEVICE[device]} "
                f"on this machine (no usable GPU, or CUDA/cuDNN libraries missing) and fell back "
                f"to {got}; use --device cpu or --device auto. {gpu_requirements()}"
                + (f" ONNX Runtime said: {reason}" if reason else "")
            )
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._output_name = self._session.get_outputs()[0].name
        # Backbones take uint8 pixels; a train-cnn model.onnx takes them as float32.
        self._input_dtype = np.float32 if model_input.type == "tensor(float)" else np.uint8

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixel batch -> the model's first output (features or probabilities).

        Through IO binding: on a GPU the batch is copied to the device once and the
        features back once, with nothing else crossing; on CPU it is the plain run."""
        binding = self._session.io_binding()
        pixels = np.ascontiguousarray(batch, dtype=self._input_dtype)
        binding.bind_cpu_input(self._input_name, pixels)
        binding.bind_output(self._output_name, "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def open_session(
    onnx_path: Path, device: str, precision: str = DEFAULT_PRECISION
) -> BackboneSession:
    """A session of the network `onnx_path`: the one opened early for it where there is one
    (see warm_start), else a new one."""
    session = take_early_session(onnx_path, device, precision) or new_session(
        onnx_path, device, precision
    )
    log.info("running the backbone on %s", session.device)
    return session


def new_session(
    onnx_path: Path, device: str, precision: str = DEFAULT_PRECISION
) -> BackboneSession:
    return BackboneSession(
        onnx_path, device, cache_dir=cache_root() / "tensorrt", fp16=precision == "fp16"
    )


@functools.cache
def load_gpu_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed beside onnxruntime-gpu (the
    `headstart[gpu]` extra), and pip's TensorRT (tensorrt_libs) where installed: Linux's
    loader does not look in site-packages, so without this ONNX Runtime finds them only
    where the system has them. Where neither has them, the provider fails to start and
    BackboneSession says what is needed. ONNX Runtime prints what it could not load: that
    goes to the debug log, not to our stdout."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            if preload is not None:
                preload()
            if importlib.util.find_spec("tensorrt_libs") is not None:
                importlib.import_module("tensorrt_libs")  # pip's TensorRT loads on import
    except Exception as error:  # a missing library must not stop a run that can use the CPU
        log.debug("preloading GPU libraries failed: %s", error)
    if printed.getvalue().strip():
        log.debug("preloading GPU libraries: %s", printed.getvalue().strip())


@contextlib.contextmanager
def _native_stderr_into(lines: list[str]):
    """ONNX Runtime's C++ logger writes a GPU provider's failure to start straight to file
    descriptor 2, in colour, over several lines. While a GPU session starts, that output
    is caught here instead: the caller says its gist in one line, and the debug log holds it all."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = _ANSI.sub("", sink.read().decode("utf-8", "replace"))
                lines.extend(line for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)
        for line in lines:
            log.debug("onnxruntime: %s", line)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_error(lines: list[str]) -> str:
    """The gist of ONNX Runtime's first error line: what failed, libraries by file name
    ("Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9:
    cannot open shared object file ...")."""
    for line in lines:
        if "[E:" in line or "error" in line.lower():
            gist = line.split("FAIL : ", 1)[-1] if "FAIL : " in line else line.split("] ", 1)[-1]
            return re.sub(r"/\S*/", "", gist).strip()[:400]
    return ""


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


def runs_on_cpu(device: str) -> bool:
    """Whether `device` means the CPU here: asked for, or `auto` on a machine without a GPU."""
    return device == "cpu" or (device == "auto" and _cuda_device_count() == 0)


def check_device_for_precision(device: str, precision: str) -> None:
    """fp16 is for GPUs: refuse it at once where the backbone would run on CPU."""
    if precision != "fp16":
        return
    if runs_on_cpu(device):
        raise SettingError(
            "--precision fp16 needs a GPU (--device cuda or tensorrt) and none is usable "
            "here; on CPU use fp32, or int8 for speed"
        )


def _cuda_options() -> dict[str, str]:
    """cuDNN tuned for throughput: try every convolution algorithm once per shape (the
    batch shape is fixed, so once per run) with as much workspace as it wants.
    HEADSTART_CUDA_NHWC=1 asks the CUDA provider for its NHWC kernels (bench/gpu.sh
    measures both layouts)."""
    options = {
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }
    if os.environ.get("HEADSTART_CUDA_NHWC") == "1":
        options["prefer_nhwc"] = "1"
    return options


def _providers_for(
    device: str, cache_dir: Path | None, available: list[str], fp16: bool = False
) -> list:
    """The provider chain to ask for. `auto` asks for GPU providers only where a GPU (and,
    for TensorRT, its libraries) is present, so a CPU node starts quietly."""
    cpu = "CPUExecutionProvider"
    wants_gpu = device in ("cuda", "tensorrt") or (device == "auto" and _cuda_device_count() > 0)
    wants_tensorrt = device == "tensorrt" or (wants_gpu and device == "auto" and _has_tensorrt())
    chain = []
    if wants_tensorrt and _PROVIDER_OF_DEVICE["tensorrt"] in available:
        options = {"trt_fp16_enable": fp16}
        if cache_dir is not None:  # building a TensorRT engine takes minutes: keep it
            options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
        chain.append((_PROVIDER_OF_DEVICE["tensorrt"], options))
    if wants_gpu and _PROVIDER_OF_DEVICE["cuda"] in available:
        chain.append((_PROVIDER_OF_DEVICE["cuda"], _cuda_options()))
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
