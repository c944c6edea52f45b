"""Start-up: the CLI loads the numerical libraries only in the command that needs them, and
embed's network session, opened on a thread while they load, is used only where it is of
the very file, device and precision the run settled on (extractor/warm_start.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from headstart.extractor import embed
from headstart.extractor.backbone import ensure_backbone, parse_weights
from headstart.extractor.warm_start import session_opened_early, take_early_session
from helpers import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "pyarrow", "onnxruntime", "sklearn", "tensorflow", "keras", "pandas")


def test_the_cli_and_a_commands_help_load_no_numerical_library():
    code = (
        "import sys\n"
        "from headstart import cli\n"
        "try:\n"
        "    cli.main(['embed', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('loaded:', sorted(set({HEAVY!r}) & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert "--precision" in done.stdout  # the help itself was printed
    assert done.stdout.splitlines()[-1] == "loaded: []"


def test_embed_runs_on_the_session_opened_while_the_libraries_load(
    run_embed, sample_images, tmp_path, weights_file, monkeypatch
):
    import headstart.extractor.runtime as runtime

    opened_on = []
    new_session = runtime.new_session

    def counted(*args, **kwargs):
        opened_on.append(threading.current_thread().name)
        return new_session(*args, **kwargs)

    monkeypatch.setattr(runtime, "new_session", counted)
    result = run_embed(sample_images, tmp_path / "early")
    assert result.exit_code == 0, result.output
    assert opened_on == ["headstart-session"]  # once, early, and never again on the way

    monkeypatch.setattr(runtime, "new_session", new_session)
    embed(sample_images, tmp_path / "plain", weights=str(weights_file), image_size=IMAGE_SIZE)
    early, plain = (_features(tmp_path / name) for name in ("early", "plain"))
    assert early.keys() == plain.keys()
    for path in early:
        np.testing.assert_allclose(early[path], plain[path], rtol=1e-5, atol=1e-6)


def _features(store: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(sorted(store.glob("part-*.parquet")))
    return dict(zip(table["path"].to_pylist(), np.asarray(table["features"].to_pylist())))


def _opening(weights_file, **changes):
    settings = dict(
        weights=str(weights_file),
        seed=0,
        backbone="inception_v3",
        precision="fp32",
        device="cpu",
        engine="local",
    )
    return session_opened_early(**(settings | changes))


def test_a_session_opened_early_serves_only_its_own_file_device_and_precision(weights_file):
    model = ensure_backbone(parse_weights(str(weights_file))).onnx_path

    with _opening(weights_file):
        session = take_early_session(model, "cpu", "fp32")
        assert session is not None and session.device == "cpu"
        assert take_early_session(model, "cpu", "fp32") is None  # taken once

    with _opening(weights_file):
        assert take_early_session(model, "cpu", "int8") is None
    with _opening(weights_file):
        assert take_early_session(model, "auto", "fp32") is None
    for not_early in ({"device": "cuda"}, {"engine": "ray"}, {"backbone": "cnn-folder"}):
        with _opening(weights_file, **not_early):
            assert take_early_session(model, not_early.get("device", "cpu"), "fp32") is None
    with _opening(weights_file):
        pass
    assert take_early_session(model, "cpu", "fp32") is None  # dropped with its block


def test_a_session_opened_early_is_not_used_once_its_file_changed(weights_file):
    model = ensure_backbone(parse_weights(str(weights_file))).onnx_path
    before = os.stat(model)
    with _opening(weights_file):
        try:
            os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
            assert take_early_session(model, "cpu", "fp32") is None
        finally:
            os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_cache_without_the_network_opens_nothing_early(tmp_path, weights_file, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "empty-cache"))
    with _opening(weights_file):
        assert take_early_session(tmp_path / "model.onnx", "cpu", "fp32") is None
    assert not (tmp_path / "empty-cache").exists()  # nothing exported or made early


def test_a_first_export_says_what_it_does_and_nothing_of_tensorflow(tmp_path):
    """TensorFlow's C++ start-up lines (absl, CUDA stubs, CPU features, oneDNN) never reach
    the terminal, whatever the shell's TF_CPP_MIN_LOG_LEVEL; headstart's line says what runs."""
    from headstart.extractor.samples import make_sample_images

    images = make_sample_images(tmp_path / "images", classes=2, per_class=2, size_range=(40, 60))
    env = {**os.environ, "HEADSTART_CACHE": str(tmp_path / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tests set it; a user's shell does not
    done = subprocess.run(
        [
            sys.executable, "-m", "headstart", "embed", str(images), "-o", str(tmp_path / "store"),
            "--backbone", "mobilenet_v3_small", "--weights", "random", "--image-size", "32",
        ],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "embedded 4, skipped 0, already present 0"
    lines = done.stderr.splitlines()
    assert lines[0].startswith("exporting MobileNetV3Small (random(seed=0) weights) to ONNX")
    native = re.compile(r"^[IWEF]\d{4} |absl|oneDNN|cuda|TensorFlow binary|rebuild", re.I)
    assert [line for line in lines if native.search(line)] == []
    assert lines[1:] == ["running the backbone on cpu"]


def test_tensorflows_native_start_up_lines_are_dropped_and_others_kept(capfd):
    """What C++ writes to descriptor 2 during TensorFlow's import: absl's lines (before its
    initialisation the time field is seconds since 1970) go; anything else is passed on."""
    from headstart.extractor.native_stderr import native_stderr
    from headstart.extractor.tensorflow_needed import _not_noise

    native = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796054176.057924   20089 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.",
        "E0000 00:00:1796055151.263768   23579 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
        "2024-01-02 03:04:05.678901: I tensorflow/core/util/port.cc:113] oneDNN custom "
        "operations are on.",
    ]
    with native_stderr(keep=_not_noise) as dropped:
        os.write(
            2, ("\n".join([native[0], "a warning of the user's own", *native[1:]]) + "\n").encode()
        )
    assert capfd.readouterr().err == "a warning of the user's own\n"
    assert dropped == native


def test_a_tensorflow_that_fails_to_import_is_one_error_naming_the_reason(monkeypatch):
    import builtins

    import pytest

    from headstart.extractor import tensorflow_needed

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "tf2onnx":
            raise ImportError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tf2onnx", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(tensorflow_needed.TensorFlowMissingError) as refused:
        tensorflow_needed.import_keras("training the MLP head")
    assert str(refused.value) == (
        "training the MLP head needs TensorFlow, Keras and tf2onnx, which are installed but "
        "fail to import (libcudart.so.12: cannot open shared object file): reinstall them "
        f"with {tensorflow_needed.INSTALL}"
    )
    assert "pip install -e '.[tensorflow]'" in tensorflow_needed.INSTALL
