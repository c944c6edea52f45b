"""The lighter workflow against the full one, measured side by side in one run.

    python bench/light_vs_full.py [--images 400] [--image-size 139] [--epochs 10 30]

(a) light: `embed` once (ONNX Runtime, model cached) + the MLP head trained E epochs on the
    stored features;
(b) full: the Keras transfer-learning workflow: frozen InceptionV3 inside the model and the
    same head (same layers, seed, optimizer, batch) trained end to end on the images for E
    epochs, so the backbone runs on every image every epoch.
Both see the same decoded pixels, the same split, and no early stopping. The full model
gets the head's input standardization (feature mean and variance) for free, as constants.
Prints both validation accuracies and the speed-up b/a for each E.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.backbone import build_keras_backbone, ensure_backbone, parse_weights  # noqa: E402
from headstart.extractor.decode import load_image  # noqa: E402
from headstart.extractor.samples import SHAPES, draw_shape  # noqa: E402
from headstart.heads.dataset import load_labelled_features, stratified_split  # noqa: E402
from headstart.heads.mlp import MLPHead  # noqa: E402


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """Four shape classes, each drawn in its own range of hues: learnable even from the
    random-weight backbone the benchmark runs offline with."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tints = np.array([[1.0, 0.4, 0.4], [0.4, 1.0, 0.4], [0.4, 0.4, 1.0], [1.0, 1.0, 0.3]])
    for index in range(count):
        label = index % len(SHAPES)
        (folder / SHAPES[label]).mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(draw_shape(SHAPES[label], rng, (120, 240)), dtype=np.float32)
        Image.fromarray((pixels * tints[label]).astype(np.uint8)).save(
            folder / SHAPES[label] / f"{index:04d}.jpg", quality=90
        )


def light(images: Path, args, epochs: int) -> tuple[float, float]:
    """(seconds, validation accuracy) of embed + MLP head."""
    out = Path(tempfile.mkdtemp(prefix="bench-light-"))
    try:
        started = time.perf_counter()
        embed(images, out / "features", weights=args.weights, image_size=args.image_size)
        data = load_labelled_features(out / "features")
        train, val = stratified_split(data.y, 0.2, seed=0)
        head = MLPHead(epochs=epochs, seed=0).fit(
            data.X[train], data.y[train], validation=(data.X[val], data.y[val])
        )
        seconds = time.perf_counter() - started
        accuracy = float((head.predict_proba(data.X[val]).argmax(1) == data.y[val]).mean())
        return seconds, accuracy
    finally:
        shutil.rmtree(out)


def full(images: Path, args, epochs: int) -> tuple[float, float]:
    """(seconds, validation accuracy) of the frozen InceptionV3 + head trained on images."""
    import keras

    pixels, y, classes = _decoded_images(images, args.image_size)
    train, val = stratified_split(y, 0.2, seed=0)
    backbone = build_keras_backbone(parse_weights(args.weights))
    backbone.trainable = False
    features = backbone.predict(_preprocess(pixels[train]), verbose=0, batch_size=64)
    mean, variance = features.mean(axis=0), features.var(axis=0)  # given, not timed

    keras.utils.set_random_seed(0)
    inputs = keras.Input((args.image_size, args.image_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # inception_v3.preprocess_input
    x = backbone(x, training=False)
    x = keras.layers.Normalization(mean=mean, variance=np.maximum(variance, 1e-30))(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    model.fit(
        pixels[train],
        y[train],
        validation_data=(pixels[val], y[val]),
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    accuracy = float((model.predict(pixels[val], verbose=0).argmax(1) == y[val]).mean())
    return seconds, accuracy


def _decoded_images(images: Path, size: int):
    files = sorted(images.rglob("*.jpg"))
    labels = [f.parent.name for f in files]
    classes = sorted(set(labels))
    pixels = np.stack([load_image(f, size).pixels for f in files]).astype(np.float32)
    return pixels, np.searchsorted(classes, labels), classes


def _preprocess(pixels: np.ndarray) -> np.ndarray:
    return pixels / 127.5 - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=139)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-light-full-"))
    try:
        make_images(folder, args.images)
        ensure_backbone(parse_weights(args.weights))  # export once, outside the timings
        rng = np.random.default_rng(0)  # import TensorFlow and build Keras once, untimed too
        MLPHead(epochs=1).fit(rng.normal(size=(8, 4)).astype(np.float32), np.arange(8) % 2)
        print(
            f"{args.images} images, 4 classes, {args.image_size} px, {args.weights} weights, "
            f"{os.cpu_count()} CPU cores; head Dense(256) -> Dropout(0.5) -> softmax"
        )
        print(
            f"{'E':>4} {'light s':>9} {'light acc':>10} {'full s':>9} {'full acc':>9} "
            f"{'speed-up':>9}"
        )
        for epochs in args.epochs:
            light_s, light_acc = light(folder, args, epochs)
            full_s, full_acc = full(folder, args, epochs)
            print(
                f"{epochs:>4} {light_s:>9.1f} {light_acc:>10.3f} {full_s:>9.1f} "
                f"{full_acc:>9.3f} {full_s / light_s:>8.1f}x"
            )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
