"""Runtime stage: the ONNX Runtime session that turns preprocessed batches into features.

The providers it asks for come from providers.py; what it got is read back from the session
(`session.get_providers()`), never assumed: a GPU provider that cannot start is an Error
that quotes ONNX Runtime, not a silent fall-back to the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import logging
import re
from pathlib import Path

import numpy as np

from .backbone import cache_root
from .errors import NetworkRunError, ProviderUnavailableError
from .native_stderr import native_stderr
from .providers import (
    DEVICE_OF_PROVIDER,
    PROVIDER_OF_DEVICE,
    check_device,
    gpu_requirements,
    providers_for,
    tensorrt_profile,
)
from .settings import DEFAULT_PRECISION, usable_cores
from .terminal import said_by
from .warm_start import take_early_session

log = logging.getLogger("headstart")

GPU_CPU_THREADS = 2  # ORT's CPU threads beside a GPU provider (see BackboneSession)


class BackboneSession:
    """An ONNX Runtime session on the chosen device; `device` says which one it really got."""

    def __init__(
        self,
        onnx_path: Path,
        device: str = "auto",
        cache_dir: Path | None = None,
        fp16: bool = False,
        batch_shape: tuple[int, int, int, int] | None = None,
    ):
        import onnxruntime as ort

        check_device(device)
        providers = providers_for(device, cache_dir, ort.get_available_providers(), fp16)
        if batch_shape is not None and providers[0][0] == PROVIDER_OF_DEVICE["tensorrt"]:
            providers[0][1].update(tensorrt_profile(_input_name(onnx_path), batch_shape))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Planning memory from the first run only pays off after two; measured on 2 cores,
        # 64 x 299 px: first two calls 1.84 + 1.81 s with it, 1.85 + 1.64 s without.
        options.enable_mem_pattern = False
        # On CPU, one compute thread per core this process may use (ORT's own guess can see
        # the host's cores inside a container); on a GPU the CPU threads only run the rare
        # node the GPU provider lacks, and the cores are the decode threads'. No
        # spin-waiting: an idle ORT thread gives its core to the decode threads.
        options.intra_op_num_threads = usable_cores() if len(providers) == 1 else GPU_CPU_THREADS
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        said: list[str] = []
        preloading = ""
        if len(providers) > 1:  # a GPU provider comes first
            preloading = load_gpu_libraries()
            with _native_stderr_into(said):
                self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        else:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        got = self._session.get_providers()[0]
        self.device = DEVICE_OF_PROVIDER.get(got, got)
        if device != "auto" and self.device != device:
            reason = _first_error(said)
            raise ProviderUnavailableError(
                f"--device {device}: ONNX Runtime could not start {PROVIDER_OF_DEVICE[device]} "
                f"on this machine (no usable GPU, or CUDA/cuDNN libraries missing) and fell back "
                f"to {got}; use --device cpu or --device auto. {gpu_requirements()}"
                + (f" ONNX Runtime said: {reason}" if reason else "")
                + (f" Preloading the GPU libraries said: {preloading[:400]}" if preloading else "")
            )
        self.onnx_path = onnx_path
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
        try:
            self._session.run_with_iobinding(binding)
        except Exception as error:  # onnxruntime's own untyped errors
            raise NetworkRunError(
                f"the network {self.onnx_path} failed on a batch of {len(batch)} ({said_by(error)})"
            ) from None
        return binding.copy_outputs_to_cpu()[0]


def open_session(
    onnx_path: Path,
    device: str,
    precision: str = DEFAULT_PRECISION,
    batch_shape: tuple[int, int, int, int] | None = None,
) -> BackboneSession:
    """A session of the network `onnx_path`: the one opened early for it where there is one
    (see warm_start), else a new one. `batch_shape`, the largest batch (N, H, W, C), gives
    TensorRT its optimisation profile."""
    session = take_early_session(onnx_path, device, precision) or new_session(
        onnx_path, device, precision, batch_shape
    )
    log.info("running the backbone on %s", session.device)
    return session


def new_session(
    onnx_path: Path,
    device: str,
    precision: str = DEFAULT_PRECISION,
    batch_shape: tuple[int, int, int, int] | None = None,
) -> BackboneSession:
    return BackboneSession(
        onnx_path, device, cache_root() / "tensorrt", precision == "fp16", batch_shape
    )


@functools.cache
def load_gpu_libraries() -> str:
    """Load the CUDA and cuDNN libraries that pip installed beside onnxruntime-gpu (the
    `headstart[gpu]` extra), and pip's TensorRT (tensorrt_libs) where installed: Linux's
    loader does not look in site-packages, so without this ONNX Runtime finds them only
    where the system has them. Returns what ONNX Runtime printed meanwhile (what it could
    not load), in one line, "" when it said nothing: a provider that then fails to start
    quotes it in its Error, and the debug log has it too."""
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
        print(f"{type(error).__name__}: {error}", file=printed)
    said = "; ".join(line.strip() for line in printed.getvalue().splitlines() if line.strip())
    if said:
        log.debug("preloading GPU libraries: %s", said)
    return said


@contextlib.contextmanager
def _native_stderr_into(lines: list[str]):
    """ONNX Runtime's C++ logger writes a GPU provider's failure to start straight to file
    descriptor 2, in colour, over several lines. While a GPU session starts, that output
    is caught here instead: the caller says its gist in one line, and the debug log holds it all."""
    try:
        with native_stderr() as said:
            yield lines
    finally:
        lines.extend(_ANSI.sub("", line) for line in said if line.strip())
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


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
