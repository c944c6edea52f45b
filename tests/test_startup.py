"""Start-up: the CLI loads the numerical libraries only in the command that needs them, and
embed's network session, opened on a thread while they load, is used only where it is of
the very file, device and precision the run settled on (extractor/warm_start.py)."""

from __future__ import annotations

import os
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
