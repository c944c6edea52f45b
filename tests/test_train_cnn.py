"""`headstart train-cnn`: the course's ConvNet and InceptionV3 fine-tuning from image folders,
their artifacts, resuming a killed run, and MODEL_DIR in predict, export, info and embed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from corpus import colour_images
from headstart.cli import main
from headstart.extractor.decode import load_image
from headstart.heads.cnn.model import SimpleCNN, build_simple_cnn, family_preprocessing

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def load_keras(model_dir: Path):
    import keras

    return keras.saving.load_model(model_dir / "model.keras", safe_mode=True)


def pixels_of(folder: Path, paths: list[str], size: int, color_mode: str = "rgb") -> np.ndarray:
    return np.stack([load_image(folder / p, size, (), color_mode).pixels for p in paths])


def onnx_probabilities(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels.astype(np.float32)})[0]


@dataclass
class Trained:
    images: Path
    model: Path
    result: object
    readable: list[str]


@pytest.fixture(scope="module")
def colour_cnn(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("cnn")
    images = colour_images(root / "images", per_class=30)
    (images / "red" / "bad.png").write_text("not an image")
    readable = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    readable.remove("red/bad.png")
    result = run("train-cnn", images, "-o", root / "cnn", "--image-size", 32, "--epochs", 15)
    assert result.exit_code == 0, result.output
    return Trained(images, root / "cnn", result, readable)


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory) -> Trained:
    """The course's table: 28x28 grayscale, 10 classes, one conv block, Dense 128."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    images = root / "images"
    for digit in range(10):
        (images / str(digit)).mkdir(parents=True)
        for index in range(3):
            pixels = np.clip(digit * 25 + rng.normal(0, 10, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(images / str(digit) / f"{index}.png")
    args = ["--blocks", 1, "--filters", 32, "--dense", 128, "--color-mode", "grayscale"]
    args += ["--no-batchnorm"]  # the course's plain conv + relu
    args += ["--tensorboard"]
    result = run("train-cnn", images, "-o", root / "cnn", "--image-size", 28, "--epochs", 1, *args)
    assert result.exit_code == 0, result.output
    readable = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    return Trained(images, root / "cnn", result, readable)


def test_parameter_counts_match_the_course(digits_cnn):
    description = json.loads((digits_cnn.model / "model.json").read_text())
    assert description["params"]["total"] == 804_554
    assert list((digits_cnn.model / "logs").rglob("events.out.tfevents.*"))  # --tensorboard
    assert "804,554 parameters" in digits_cnn.result.output

    info = run("info", digits_cnn.model)
    assert info.exit_code == 0, info.output
    assert "block1_conv1: Conv2D, output (None, 28, 28, 32), 320 parameters" in info.output
    assert "block1_pool: MaxPooling2D, output (None, 14, 14, 32), 0 parameters" in info.output
    assert "flatten: Flatten, output (None, 6272), 0 parameters" in info.output
    assert "features: Dense, output (None, 128), 802,944 parameters" in info.output
    assert "probabilities: Dense, output (None, 10), 1,290 parameters" in info.output

    course = SimpleCNN(blocks=1, filters=32, dense=(128,), batchnorm=False)
    colour = build_simple_cnn((28, 28, 3), 10, course)
    assert colour.get_layer("block1_conv1").count_params() == 896  # 32 x (3x3x3) + 32
    default = build_simple_cnn((28, 28, 3), 10, SimpleCNN(blocks=1, filters=32, dense=(128,)))
    assert default.get_layer("block1_conv1").count_params() == 864  # no bias: BN shifts
    assert default.get_layer("block1_conv1_bn").momentum == 0.9


def test_defaults_chosen_from_the_images_are_logged_and_recorded(digits_cnn, colour_cnn):
    for trained, because in (
        (digits_cnn, "grayscale images: flips and rotations can change their class"),
        (colour_cnn, "32 px colour images, at most 96"),
    ):
        description = json.loads((trained.model / "model.json").read_text())
        assert description["settings"]["augment"] == "light"
        assert description["defaults_chosen"] == {"augment": {"value": "light", "because": because}}
        assert f"--augment light, chosen from the images: {because}\n" in trained.result.stderr
        augmentation = load_keras(trained.model).get_layer("augmentation")
        assert [type(layer).__name__ for layer in augmentation.layers] == [
            "RandomZoom",
            "RandomTranslation",
        ]

    from headstart.heads.cnn.settings import CnnSettings

    assert CnnSettings(image_size=96).resolved().augment == "light"
    photos = CnnSettings(image_size=97).resolved()  # larger colour images: the full set
    assert photos.augment == "full"
    assert photos.chosen == {
        "augment": {"value": "full", "because": "97 px colour images, larger than 96"}
    }
    scans = CnnSettings(image_size=512, color_mode="grayscale").resolved()
    assert scans.augment == "light"
    assert CnnSettings(arch="resnet50").resolved().augment == "full"  # 224 px
    given = CnnSettings(image_size=28, augment="full").resolved()
    assert (given.augment, given.chosen) == ("full", {})


def test_simple_cnn_learns_separable_classes_and_its_onnx_equals_keras(colour_cnn):
    description = json.loads((colour_cnn.model / "model.json").read_text())
    assert description["metrics"]["val_accuracy"] >= 0.9
    assert description["kind"] == "cnn" and description["classes"] == ["blue", "green", "red"]
    names = sorted(p.relative_to(colour_cnn.model).as_posix() for p in colour_cnn.model.rglob("*"))
    for expected in ("model.keras", "model.onnx", "model.json", "report/history.csv"):
        assert expected in names
    assert not any(n.startswith(("backup", "checkpoints")) or "pixels" in n for n in names)
    assert not (colour_cnn.model.parent / "_headstart-resume-cnn").exists()

    # The bad file was skipped and listed, not fatal.
    assert "skipped red/bad.png: not an image Pillow can read" in colour_cnn.result.stderr
    errors = pd.read_csv(colour_cnn.model / "report" / "errors.csv")
    assert errors["path"].tolist() == ["red/bad.png"]

    pixels = pixels_of(colour_cnn.images, colour_cnn.readable, 32).astype(np.float32)
    expected = load_keras(colour_cnn.model).predict(pixels, verbose=0)
    got = onnx_probabilities(colour_cnn.model / "model.onnx", pixels)
    assert np.abs(got - expected).max() <= 1e-5


def test_augmentation_is_active_in_training_and_inactive_in_predict_and_export(
    colour_cnn, tmp_path
):
    model = load_keras(colour_cnn.model)
    pixels = pixels_of(colour_cnn.images, colour_cnn.readable[:16], 32).astype(np.float32)
    augmentation = model.get_layer("augmentation")
    trained_view = np.asarray(augmentation(pixels, training=True))
    assert np.abs(trained_view - pixels).max() > 10  # images really change in training
    np.testing.assert_array_equal(np.asarray(augmentation(pixels, training=False)), pixels)

    inference = np.asarray(model(pixels, training=False))
    np.testing.assert_array_equal(inference, np.asarray(model(pixels, training=False)))
    exported = tmp_path / "cnn.onnx"
    result = run("export", colour_cnn.model, "-o", exported)
    assert result.exit_code == 0, result.output
    assert np.abs(onnx_probabilities(exported, pixels) - inference).max() <= 1e-5

    predicted = run(
        "predict", colour_cnn.model, colour_cnn.images, "-o", tmp_path / "p.csv", "--top-k", 3
    )
    assert predicted.exit_code == 0, predicted.output
    frame = pd.read_csv(tmp_path / "p.csv")
    assert frame["path"].tolist() == colour_cnn.readable
    first = frame.iloc[:16]
    classes = ["blue", "green", "red"]
    for suffix in ("", "_2", "_3"):
        columns = [classes.index(c) for c in first["prediction" + suffix]]
        np.testing.assert_allclose(
            first["probability" + suffix], inference[np.arange(16), columns], atol=1e-5
        )
    assert "accuracy" in predicted.output


def test_predict_refuses_features_for_a_cnn(colour_cnn, tmp_path):
    features = tmp_path / "features"
    embedded = run("embed", colour_cnn.images, "-o", features, "--backbone", colour_cnn.model)
    assert embedded.exit_code == 0, embedded.output
    result = run("predict", colour_cnn.model, features, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert "is a CNN from train-cnn: it predicts from images" in result.stderr


@pytest.mark.parametrize("which", ["colour", "digits"])
def test_embed_with_a_trained_cnn_stores_its_penultimate_layer(
    which, colour_cnn, digits_cnn, tmp_path
):
    import keras

    trained = {"colour": colour_cnn, "digits": digits_cnn}[which]
    description = json.loads((trained.model / "model.json").read_text())
    size, color_mode = description["input"]["image_size"], description["input"]["color_mode"]
    out = tmp_path / "features"
    result = run("embed", trained.images, "-o", out, "--backbone", trained.model)
    assert result.exit_code == 0, result.output

    frame = pd.read_parquet(out)
    assert frame["path"].tolist() == trained.readable
    model = load_keras(trained.model)
    cut = keras.Model(model.inputs, model.get_layer("features").output)
    pixels = pixels_of(trained.images, trained.readable, size, color_mode).astype(np.float32)
    expected = cut.predict(pixels, verbose=0)
    np.testing.assert_allclose(np.stack(frame["features"]), expected, rtol=1e-5, atol=1e-5)

    fingerprint = json.loads((out / "_headstart.json").read_text())["fingerprint"]
    assert fingerprint["backbone"] == "train-cnn simple_cnn"
    assert fingerprint["weights"] == str(trained.model.resolve())
    assert (fingerprint["image_size"], fingerprint["color_mode"]) == (size, color_mode)
    assert fingerprint["dim"] == 128

    if which == "colour":  # a head on those features predicts from images with the same CNN
        assert run("train", out, "-o", tmp_path / "head").exit_code == 0
        predicted = run("predict", tmp_path / "head", trained.images, "-o", tmp_path / "p.csv")
        assert predicted.exit_code == 0, predicted.output
        assert len(pd.read_csv(tmp_path / "p.csv")) == len(trained.readable)

    other_size = run("embed", trained.images, "-o", tmp_path / "x", "--backbone", trained.model,
                     "--image-size", size + 1)  # fmt: skip
    assert other_size.stderr == (
        f"Error: --backbone {trained.model} was trained on {size} px images; leave "
        f"--image-size out or set it to {size}\n"
    )


def damaged_copy(trained: Trained, tmp_path: Path, damage) -> Path:
    import shutil

    folder = tmp_path / "cnn"
    shutil.copytree(trained.model, folder)
    damage(folder)
    return folder


def _resized_input(folder: Path) -> None:
    description = json.loads((folder / "model.json").read_text())
    description["input"]["image_size"] = 48  # model.keras and model.onnx take 32 px
    (folder / "model.json").write_text(json.dumps(description))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            lambda f: (f / "model.onnx").write_bytes(b"\x08\x07garbage" * 50),
            "model.onnx cannot run one batch of (2, 32, 32, 3) (",
        ),
        (
            lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:5000]),
            "model.onnx cannot run one batch of (2, 32, 32, 3) (",
        ),
        (_resized_input, "model.onnx cannot run one batch of (2, 48, 48, 3) ("),
    ],
    ids=["garbage", "truncated", "model.json-size"],
)
def test_a_damaged_model_folder_is_one_error_in_every_command(colour_cnn, tmp_path, damage, said):
    """model.onnx that is not ONNX, cut short, or not for model.json's input: predict, export
    and info --verify say which file and why, before any output is written."""
    folder = damaged_copy(colour_cnn, tmp_path, damage)
    for command in (
        ("predict", folder, colour_cnn.images, "-o", tmp_path / "p.csv"),
        ("export", folder, "-o", tmp_path / "m.onnx"),
        ("info", folder, "--verify"),
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.startswith(f"Error: {folder / said}"), (command, result.stderr)
        assert "Traceback" not in result.output
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()
    assert run("info", folder).exit_code == 0  # without --verify info reads only the JSON


def test_embed_refuses_a_model_keras_that_does_not_take_model_json_input(colour_cnn, tmp_path):
    """The export of the features layer is cached per model.keras and model.json's input:
    an edited input size is a new export, which fails naming both files."""
    folder = damaged_copy(colour_cnn, tmp_path, _resized_input)
    out = tmp_path / "features"
    assert run("embed", colour_cnn.images, "-o", out, "--backbone", colour_cnn.model).exit_code == 0
    result = run("embed", colour_cnn.images, "-o", tmp_path / "f2", "--backbone", folder)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: {folder.resolve() / 'model.keras'} does not take the 48x48x3 images that "
        "model.json declares ("
    ), result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "f2" / "_headstart.json").exists()


def test_features_of_a_cnn_stay_usable_on_a_machine_without_its_cache(
    colour_cnn, tmp_path, monkeypatch, model_cache
):
    """A head on `embed --backbone MODEL_DIR` features, its cache gone: the model folder where
    it was recorded is used again; moved, predict and export say to give --backbone
    MODEL_DIR or FILE.onnx, which are checked against the fingerprint."""
    import shutil

    folder = tmp_path / "cnn"
    shutil.copytree(colour_cnn.model, folder)
    store, head = tmp_path / "features", tmp_path / "head"
    assert run("embed", colour_cnn.images, "-o", store, "--backbone", folder).exit_code == 0
    assert run("train", store, "-o", head).exit_code == 0
    fingerprint = json.loads((head / "head.json").read_text())["fingerprint"]
    exported = [p for p in model_cache.glob("models/cnn-*/model.onnx")
                if json.loads((p.parent / "manifest.json").read_text())["weights_sha256"]
                == fingerprint["weights_sha256"]]  # fmt: skip
    assert len(exported) == 1
    predict = ("predict", head, colour_cnn.images, "-o", tmp_path / "p.csv")
    assert run(*predict).exit_code == 0
    expected = pd.read_csv(tmp_path / "p.csv")

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache-1"))
    assert run(*predict).exit_code == 0  # the recorded folder is still there
    folder.rename(tmp_path / "moved")
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache-2"))
    for command in (predict, ("export", head, "-o", tmp_path / "m.onnx")):
        result = run(*command)
        assert result.exit_code == 1, result.output
        assert "is neither in the cache nor at that path; give its model folder with " \
            "--backbone MODEL_DIR" in result.stderr, result.stderr  # fmt: skip
    for given in (tmp_path / "moved", exported[0]):
        monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / f"cache-{given.name}"))
        result = run(*predict, "--backbone", given)
        assert result.exit_code == 0, result.output
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), expected)
        assert run(*predict).exit_code == 0  # given once, cached here
        assert run("export", head, "-o", tmp_path / "m.onnx", "--backbone", given).exit_code == 0
    other = run(*predict, "--backbone", head / "model.onnx")
    assert other.exit_code == 1
    assert "is not the backbone these features were made with" in other.stderr, other.stderr
    nonsense = run(*predict, "--backbone", tmp_path / "p.csv")
    assert nonsense.stderr.startswith(f"Error: --backbone {tmp_path / 'p.csv'}: not a train-cnn")
    on_cnn = run("predict", colour_cnn.model, colour_cnn.images, "-o", tmp_path / "q.csv",
                 "--backbone", tmp_path / "moved")  # fmt: skip
    assert "--backbone is for heads" in on_cnn.stderr


def backed_up_epochs(metadata: Path) -> int:
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return 0


def test_a_killed_training_resumes_after_its_last_completed_epoch(tmp_path):
    images = colour_images(tmp_path / "images", per_class=12)
    model_dir = tmp_path / "cnn"
    command = [
        sys.executable, "-m", "headstart", "train-cnn", str(images), "-o",
        str(model_dir), "--image-size", "32", "--epochs", "8", "--patience", "100",
    ]  # fmt: skip
    staging = tmp_path / "_headstart-resume-cnn"
    metadata = staging / "backup" / "phase1" / "training_metadata.json"
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while backed_up_epochs(metadata) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not model_dir.exists()
    completed = backed_up_epochs(metadata)
    assert 3 <= completed < 8

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming a killed run of train-cnn after epoch {completed}" in again.stderr
    epochs_logged = [int(n) for n in re.findall(r"^epoch (\d+)/8:", again.stderr, re.M)]
    assert epochs_logged == list(range(completed + 1, 9))  # none repeated, none skipped
    final = pd.read_csv(model_dir / "report" / "history.csv")
    assert final["epoch"].tolist() == list(range(8))
    assert json.loads((model_dir / "model.json").read_text())["training"]["epochs_run"] == 8
    assert not staging.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--arch", "inception", "--color-mode", "grayscale"],
            "--arch inception takes --color-mode rgb (grayscale images are converted to RGB)",
        ),
        (
            ["--fine-tune-layers", "5"],
            "--fine-tune-layers applies to a backbone's --arch (inception, resnet50, ...), "
            "not to --arch simple",
        ),
        (
            ["--arch", "inceptoin"],
            "unknown --arch 'inceptoin'; choose simple, or a backbone as `embed --backbone` "
            "takes it: inception, inception_v3, inception_resnet_v2, xception, resnet50, ",
        ),
        (
            ["--arch", "nasnet_mobile", "--image-size", "200"],
            "--arch nasnet_mobile takes --image-size 224 only: its weights are made for that size",
        ),
        (
            ["--arch", "resnet50", "--image-size", "16"],
            "--image-size 16 is too small; ResNet50 needs at least 32",
        ),
        (
            ["--augment", "heavy"],
            "unknown --augment 'heavy'; choose one of auto, full, geometric, light, none",
        ),
        (
            ["--image-size", "4", "--blocks", "3"],
            "--image-size 4 is too small for --blocks 3: each block halves it, so it needs at "
            "least 8",
        ),
        (
            ["--arch", "inception", "--image-size", "64"],
            "--image-size 64 is too small; InceptionV3 needs at least 75",
        ),
        (["--val-split", "1"], "--val-split must be in (0, 1), got 1.0"),
        (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ],
)
def test_settings_that_cannot_work_fail_before_any_work(tmp_path, options, message):
    images = colour_images(tmp_path / "images", per_class=2)
    result = run("train-cnn", images, "-o", tmp_path / "cnn", *options)
    assert result.exit_code == 1
    if message.endswith(", "):  # the list of backbones goes on
        assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1
    else:
        assert result.stderr == f"Error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_fine_tune_layers_count_inceptions_layers_with_weights_batchnorm_excluded():
    """--fine-tune-layers N counts layers that hold weights, BatchNorm excluded: the top N
    of those are trained in phase 2 (InceptionV3's top layers are mostly weightless
    concatenations, activations and BatchNorms). The phase itself, and the log line saying
    what it adds, are the VGG16 test's (an end-to-end InceptionV3 took 41 s)."""
    import keras

    from headstart.heads.cnn.model import unfreeze_top_layers

    base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(75, 75, 3))
    base.trainable = False
    unfrozen = unfreeze_top_layers(base, 5)
    weighted = [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert [layer.trainable for layer in weighted] == [False] * (len(weighted) - 5) + [True] * 5
    assert unfrozen == [layer.name for layer in reversed(weighted[-5:])]  # top first
    assert not any(
        layer.trainable
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization) or not layer.weights
    )
    added = sum(int(np.prod(w.shape)) for layer in weighted[-5:] for w in layer.weights)
    assert sum(int(np.prod(w.shape)) for w in base.trainable_weights) == added > 100_000


@pytest.mark.parametrize("family", ["inception", "caffe", "torch"])
def test_each_family_preprocessing_as_layers_equals_keras_preprocess_input(family):
    import keras

    from headstart.extractor.applications import APPLICATIONS

    module = next(a.module for a in APPLICATIONS.values() if a.preprocessing == family)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, family_preprocessing(inputs, family))
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    assert np.abs(np.asarray(expected) - pixels).max() > 1  # it does change them
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=2e-5)


def test_a_second_backbone_fine_tunes_exports_and_predicts_equal_to_keras(tmp_path):
    """--arch takes any backbone embed knows: VGG16 (caffe preprocessing, as a fixed 1x1
    convolution that training leaves alone), random weights, 32 px, frozen and then its top
    two convolutions fine-tuned. (ResNet50, the same family, took 67 s in CI: its 175 layers
    to trace and export.)"""
    import keras

    images = colour_images(tmp_path / "images", per_class=6)
    model_dir = tmp_path / "cnn"
    result = run(
        "train-cnn", images, "-o", model_dir, "--arch", "vgg16", "--weights", "random",
        "--image-size", 32, "--epochs", 1, "--no-augment", "--fine-tune-layers", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    description = json.loads((model_dir / "model.json").read_text())
    assert description["arch"] == "vgg16" and description["settings"]["weights"] == "random"
    assert description["settings"]["augment"] == "none" and description["defaults_chosen"] == {}
    assert description["training"]["epochs_run"] == 2  # one epoch per phase
    page = (model_dir / "report" / "index.html").read_text()  # the report's page, as heads
    assert "vgg16 CNN, validation" in page and "Misclassified images" in page
    mistakes = (model_dir / "report" / "misclassified.csv").read_text().splitlines()[1:]
    assert page.count('<figure class="mistake">') == len(mistakes)
    assert len(list((model_dir / "report").glob("gallery-*.png"))) == len(mistakes)
    (model_dir / "report" / "index.html").unlink()
    assert run("report", model_dir).exit_code == 0
    assert (model_dir / "report" / "index.html").read_text() == page

    model = load_keras(model_dir)
    assert "augmentation" not in [layer.name for layer in model.layers]
    preprocess = model.get_layer("preprocess")
    assert not preprocess.trainable
    kernel, bias = preprocess.get_weights()
    assert kernel[0, 0].tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]  # RGB -> BGR
    np.testing.assert_allclose(bias, [-103.939, -116.779, -123.68], rtol=1e-6)
    base = model.get_layer("vgg16")
    weighted = [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(weighted) == 13
    assert [layer.trainable for layer in weighted] == [False] * 11 + [True] * 2
    head = sum(int(np.prod(w.shape)) for w in model.get_layer("probabilities").weights)
    added = sum(int(np.prod(w.shape)) for layer in weighted[-2:] for w in layer.weights)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == head + added
    said = re.search(
        r"fine-tuning: VGG16's top 2 layers with weights unfrozen \(block5_conv3, block5_conv2; "
        r"BatchNorm stays frozen\): ([\d,]+) parameters trainable, ([\d,]+) more than the head's",
        result.stderr,
    )
    assert said, result.stderr
    assert int(said.group(1).replace(",", "")) == trainable
    assert int(said.group(2).replace(",", "")) == added

    readable = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    pixels = pixels_of(images, readable, 32).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    got = onnx_probabilities(model_dir / "model.onnx", pixels)
    assert np.abs(got - expected).max() <= 1e-5
    predicted = run("predict", model_dir, images, "-o", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output
    frame = pd.read_csv(tmp_path / "p.csv")
    assert frame["path"].tolist() == readable
    classes = description["classes"]
    columns = [classes.index(c) for c in frame["prediction"]]
    np.testing.assert_allclose(
        frame["probability"], expected[np.arange(len(readable)), columns], atol=1e-5
    )

    features = tmp_path / "features"  # and it is a backbone for embed, like any CNN
    embedded = run("embed", images, "-o", features, "--backbone", model_dir)
    assert embedded.exit_code == 0, embedded.output
    cut = keras.Model(model.inputs, model.get_layer("features").output)
    np.testing.assert_allclose(
        np.stack(pd.read_parquet(features)["features"]),
        cut.predict(pixels, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_models_nesting_what_tf2onnx_cannot_take_as_it_comes_export_equal_to_keras(tmp_path):
    """What ConvNeXt and EfficientNet hold, inside a nested model as train-cnn nests a
    backbone: a Normalization with a fixed mean and variance (captured constants, which
    tf2onnx would make extra graph inputs), a grouped convolution of one group per channel
    and Keras' exact GELU (Erfc); under Dropout, which only training uses."""
    import keras

    from headstart.heads.keras_onnx import save_keras_as_onnx

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            layers.Normalization(mean=[10, 20, 30, 40], variance=[4, 9, 16, 25]),
            layers.Conv2D(4, 3, groups=4, padding="same"),
            layers.Activation("gelu"),
        ],
        name="inner",
    )
    inputs = keras.Input((8, 8, 4), name="pixels")
    x = layers.GlobalAveragePooling2D()(inner(inputs, training=False))
    x = layers.Dropout(0.5)(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    path = save_keras_as_onnx(
        model, (None, 8, 8, 4), "pixels", "probabilities", tmp_path / "m.onnx"
    )

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    pixels = np.random.default_rng(0).uniform(0, 60, (5, 8, 8, 4)).astype(np.float32)
    got = session.run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(got, model.predict(pixels, verbose=0), atol=1e-6)
    assert isinstance(inner.layers[0].mean, type(inner.layers[0].variance))  # restored
    assert not isinstance(inner.layers[0].mean, np.ndarray)


def test_phase_one_checkpoint_loads_in_phase_two_without_keras_optimizer_warning(tmp_path):
    """The best checkpoint may be phase 1's, saved with the head's optimizer; read back in
    phase 2 Keras warns that it skips the optimizer's variables: not the user's concern."""
    import warnings

    import keras

    from headstart.heads.cnn.training import _load_weights

    keras.utils.set_random_seed(0)
    base = keras.layers.Dense(4, name="base")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(base(inputs)))
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    base.trainable = False
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    checkpoint = tmp_path / "phase1.weights.h5"
    model.save_weights(checkpoint)
    saved = model.get_weights()
    base.trainable = True
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(checkpoint)  # what Keras says on its own
    assert any("Skipping variable loading for optimizer" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _load_weights(model, checkpoint)
    assert not caught
    for restored, expected in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(restored, expected)
