"""The lean install (no `tensorflow` extra: no TensorFlow, Keras, tf2onnx or TensorBoard)
embeds from a cached backbone, trains a scikit-learn head, predicts and exports; what needs
TensorFlow says what to install before any work. Run in a real environment without them
(lean_env.py), in fresh processes."""

from __future__ import annotations

import csv
import os
import subprocess

import pytest

from headstart.extractor.samples import make_sample_images
from headstart.extractor.tensorflow_needed import EXTRA_REQUIREMENTS, INSTALL
from helpers import IMAGE_SIZE
from lean_env import make_lean_env, requirements

TENSORFLOW_MODULES = ("tensorflow", "keras", "tf2onnx", "tensorboard")


@pytest.fixture(scope="module")
def lean_python(tmp_path_factory):
    return make_lean_env(tmp_path_factory.mktemp("lean") / "venv")


def run_lean(python, *args, cache):
    """`headstart ARGS` in the lean environment; then whether it imported TensorFlow."""
    check = (
        "import runpy, sys\n"
        "sys.argv = ['headstart', *sys.argv[1:]]\n"
        "try:\n"
        "    from headstart import cli\n"
        "    cli.main(sys.argv[1:])\n"
        "except SystemExit as end:\n"
        "    code = end.code\n"
        "else:\n"
        "    code = 0\n"
        f"loaded = sorted(set({TENSORFLOW_MODULES!r}) & set(sys.modules))\n"
        "print('tensorflow modules loaded:', loaded)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [str(python), "-c", check, *map(str, args)],
        capture_output=True, text=True, env={**os.environ, "HEADSTART_CACHE": str(cache)},
        timeout=600,
    )  # fmt: skip


def test_what_the_refusals_say_to_install_is_the_tensorflow_extra():
    extra = requirements("tensorflow")[len(requirements()) :]
    assert [str(requirement) for requirement in extra] == list(EXTRA_REQUIREMENTS)


def test_the_lean_environment_has_no_tensorflow(lean_python):
    for module in TENSORFLOW_MODULES:
        done = subprocess.run([str(lean_python), "-c", f"import {module}"], capture_output=True)
        assert done.returncode != 0, module
        assert f"No module named '{module}'" in done.stderr.decode()


def test_embed_train_predict_export_run_without_tensorflow(
    lean_python, tmp_path, weights_file, model_cache
):
    images = make_sample_images(tmp_path / "images", classes=2, per_class=5, size_range=(60, 90))
    features, head = tmp_path / "features", tmp_path / "head"

    def lean(*args):
        done = run_lean(lean_python, *args, cache=model_cache)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert done.stdout.strip().endswith("tensorflow modules loaded: []"), done.stdout
        return done

    embed_args = ["--weights", weights_file, "--image-size", IMAGE_SIZE]
    lean("embed", images, "-o", features, *embed_args)
    lean("train", features, "-o", head, "--head", "logreg")
    lean("predict", head, images, "-o", tmp_path / "predictions.csv")
    with open(tmp_path / "predictions.csv", newline="") as table:
        assert len(list(csv.DictReader(table))) == 10
    lean("export", head, "-o", tmp_path / "fused.onnx")
    assert (tmp_path / "fused.onnx").stat().st_size > 1_000_000  # the backbone is in it
    info = lean("info", head)
    assert "logreg" in info.stdout
    store = lean("info", features)
    assert "rows: 10" in store.stdout.splitlines(), store.stdout


@pytest.mark.parametrize(
    "command, needs",
    [
        (["train", "{features}", "-o", "{out}", "--head", "mlp"], "--head mlp"),
        (["train-cnn", "{images}", "-o", "{out}", "--epochs", "1"], "train-cnn"),
        (["embed", "{images}", "-o", "{out}", "--weights", "random"], "exporting InceptionV3"),
        (["demo", "{out}", "--weights", "random"], "the demo's first run"),
    ],
)
def test_work_that_needs_tensorflow_says_what_to_install_before_any(
    lean_python, tmp_path, command, needs
):
    images = make_sample_images(tmp_path / "images", classes=2, per_class=3, size_range=(60, 90))
    features = tmp_path / "features"
    features.mkdir()  # an empty store: the setting is refused before the store is read
    out = tmp_path / "out"
    args = [part.format(images=images, features=features, out=out) for part in command]
    done = run_lean(lean_python, *args, cache=tmp_path / "empty-cache")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert needs in done.stderr and INSTALL in done.stderr, done.stderr
    assert not out.exists()  # nothing was made
