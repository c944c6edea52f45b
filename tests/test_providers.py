"""The execution providers headstart asks ONNX Runtime for, and their options (providers.py),
checked without a GPU: what a session on a GPU node would be given is recorded from a
stand-in for onnxruntime.InferenceSession."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from headstart.extractor import providers, runtime
from headstart.extractor.errors import ProviderUnavailableError, SettingError

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def test_the_cuda_provider_gets_onnx_runtimes_defaults_unless_a_benchmark_asks(monkeypatch):
    monkeypatch.delenv("HEADSTART_CUDA_NHWC", raising=False)
    monkeypatch.delenv("HEADSTART_CUDNN_SEARCH", raising=False)
    assert providers.cuda_options() == {}
    monkeypatch.setenv("HEADSTART_CUDA_NHWC", "1")
    monkeypatch.setenv("HEADSTART_CUDNN_SEARCH", "HEURISTIC")
    assert providers.cuda_options() == {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    monkeypatch.setenv("HEADSTART_CUDNN_SEARCH", "fastest")
    with pytest.raises(SettingError, match="choose one of EXHAUSTIVE, HEURISTIC, DEFAULT"):
        providers.cuda_options()


def test_tensorrt_keeps_its_engines_and_timings_and_one_profile_covers_every_batch(tmp_path):
    options = providers.tensorrt_options(tmp_path, fp16=True)
    assert options == {
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path),
    }
    assert providers.tensorrt_options(None, fp16=False) == {"trt_fp16_enable": "0"}
    assert providers.tensorrt_profile("pixels", (64, 299, 299, 3)) == {
        "trt_profile_min_shapes": "pixels:1x299x299x3",
        "trt_profile_opt_shapes": "pixels:64x299x299x3",
        "trt_profile_max_shapes": "pixels:64x299x299x3",
    }


def test_tensorrt_without_its_libraries_is_refused_at_once_naming_the_package(monkeypatch):
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as build

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(providers, "has_tensorrt", lambda: False)
    with pytest.raises(ProviderUnavailableError) as refused:
        providers.check_device("tensorrt")
    major = (getattr(build, "cuda_version", "") or "13").split(".")[0]
    assert "libnvinfer.so.10" in str(refused.value)
    assert f"pip install tensorrt-cu{major}-libs" in str(refused.value)
    assert "cu12" not in str(refused.value) or major == "12"


class _RecordedSession:
    """Stands in for onnxruntime.InferenceSession: records what it was given and "gets"
    the first provider asked for, as on a GPU node."""

    given: list = []

    def __init__(self, path, options, providers):
        self.given.append((path, options, providers))
        self._providers = [name for name, _ in providers]

    def get_providers(self):
        return self._providers

    def get_inputs(self):
        return [type("Input", (), {"name": "pixels", "type": "tensor(uint8)"})]

    def get_outputs(self):
        return [type("Output", (), {"name": "features"})]


def _tiny_model(path):
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, 8, 8, 3])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 8, 8, 3])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["features"], to=TensorProto.FLOAT)],
        "tiny",
        [pixels],
        [features],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("device", ["tensorrt", "cuda", "cpu"])
def test_a_session_asks_for_the_providers_and_cpu_threads_of_its_device(
    device, tmp_path, monkeypatch
):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", _RecordedSession)
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(providers, "has_tensorrt", lambda: True)
    monkeypatch.setattr(runtime, "load_gpu_libraries", lambda: "")
    monkeypatch.delenv("HEADSTART_CUDA_NHWC", raising=False)
    monkeypatch.delenv("HEADSTART_CUDNN_SEARCH", raising=False)
    _RecordedSession.given = []
    model = _tiny_model(tmp_path / "tiny.onnx")

    session = runtime.BackboneSession(model, device, tmp_path / "trt", True, (32, 8, 8, 3))
    ((_, options, asked),) = _RecordedSession.given
    assert session.device == device
    expected = {
        "tensorrt": [
            (TRT, {**providers.tensorrt_options(tmp_path / "trt", True),
                   **providers.tensorrt_profile("pixels", (32, 8, 8, 3))}),
            (CUDA, {}),
            (CPU, {}),
        ],
        "cuda": [(CUDA, {}), (CPU, {})],
        "cpu": [(CPU, {})],
    }[device]  # fmt: skip
    assert asked == expected
    threads = runtime.usable_cores() if device == "cpu" else runtime.GPU_CPU_THREADS
    assert options.intra_op_num_threads == threads


# --- the first GPU run's network: the graph travels without its weights ---------------------


def test_the_stripped_graph_is_small_and_refilled_it_is_the_cached_backbone(
    weights_file, tmp_path, monkeypatch
):
    """bench/gpu_graph.py: what travels to a GPU machine is a fraction of model.onnx, and
    what it becomes there is taken from the cache as the backbone, finite, no export."""
    from pathlib import Path

    import numpy as np

    from headstart.extractor import backbone
    from headstart.extractor.backbone import ensure_backbone, parse_weights

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_graph

    original = ensure_backbone(parse_weights(str(weights_file)))
    gpu_graph.strip(tmp_path / "graph", str(weights_file))
    skeleton = tmp_path / "graph" / gpu_graph.SKELETON
    assert skeleton.stat().st_size < original.onnx_path.stat().st_size / 100

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "there"))
    monkeypatch.setattr(backbone, "_export", lambda *args: pytest.fail("exported again"))
    refilled = gpu_graph.refill(tmp_path / "graph", str(weights_file))
    cached = ensure_backbone(parse_weights(str(weights_file)))
    assert cached.onnx_path == refilled and cached.onnx_path != original.onnx_path
    assert {k: v for k, v in cached.manifest.items() if k != "onnx_sha256"} == {
        k: v for k, v in original.manifest.items() if k != "onnx_sha256"
    }
    pixels = np.random.default_rng(0).integers(0, 256, (2, 75, 75, 3), dtype=np.uint8)
    features = runtime.BackboneSession(refilled, "cpu").run(pixels)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and features.std() > 0
