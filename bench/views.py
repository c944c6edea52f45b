"""Do augmented views close the gap to the full workflow with augmentation? Side by side.

    python bench/views.py [--per-class 8] [--epochs 10] [--weights random]

A data set where augmentation should matter: 4 shape classes with few training images per class,
drawn centred and upright, and validation images that are flipped, shifted, cropped and
rotated. For K = 0, 4, 8: `embed --views K` of the training images (139 px), a logreg head on
all their rows, accuracy on the plain validation images, and the embed time. Beside it, the
full Keras workflow: the same frozen InceptionV3 with augmentation layers inside the model,
a softmax head trained E epochs on the training images (backbone run every epoch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.backbone import build_keras_backbone, ensure_backbone, parse_weights  # noqa: E402
from headstart.extractor.decode import load_image  # noqa: E402
from headstart.extractor.samples import SHAPES, draw_shape  # noqa: E402
from headstart.heads.dataset import load_labelled_features  # noqa: E402
from headstart.heads.sklearn_heads import SklearnHead  # noqa: E402

SIZE = 139
TINTS = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0], [1.0, 1.0, 0.4]])


def make_images(folder: Path, per_class: int, shifted: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, shape in enumerate(SHAPES):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.asarray(draw_shape(shape, rng, (160, 160)), dtype=np.float32)
            image = Image.fromarray((pixels * TINTS[label]).astype(np.uint8))
            if shifted:  # what augmentation should teach: flips, shifts, crops, rotations
                if rng.random() < 0.5:
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                side = int(160 * rng.uniform(0.6, 0.85))
                x, y = rng.integers(0, 160 - side + 1, 2)
                image = image.crop((x, y, x + side, y + side)).rotate(rng.uniform(-20, 20))
            image.save(folder / shape / f"{index:03d}.png")
    return folder


def accuracy_of_views(train: Path, val_store: Path, work: Path, views: int, weights: str):
    out = work / f"train-views-{views}"
    started = time.perf_counter()
    embed(train, out, weights=weights, image_size=SIZE, views=views)
    seconds = time.perf_counter() - started
    data, val = load_labelled_features(out), load_labelled_features(val_store)
    head = SklearnHead("logreg").fit(data.X, data.y)
    predicted = head.predict_proba(val.X).argmax(axis=1)
    return seconds, float((predicted == val.y).mean())


def full_workflow(train: Path, val: Path, epochs: int, weights: str):
    import keras

    from headstart.heads.cnn.model import augmentation

    def pixels(folder: Path):
        files = sorted(folder.rglob("*.png"))
        x = np.stack([load_image(f, SIZE).pixels for f in files]).astype(np.float32)
        y = np.array([SHAPES.index(f.parent.name) for f in files])
        return x, y

    (x_train, y_train), (x_val, y_val) = pixels(train), pixels(val)
    keras.utils.set_random_seed(0)
    base = build_keras_backbone(parse_weights(weights))
    base.trainable = False
    # The head gets the features' standardization for free, as the logreg head has it.
    features = base.predict(x_train / 127.5 - 1, verbose=0)
    standardize = keras.layers.Normalization(
        mean=features.mean(axis=0), variance=features.var(axis=0) + 1e-12
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = augmentation(0)(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = standardize(base(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(len(SHAPES), activation="softmax")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=16, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float((model.predict(x_val, verbose=0).argmax(axis=1) == y_val).mean())
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()
    ensure_backbone(parse_weights(args.weights))
    with tempfile.TemporaryDirectory(prefix="bench-views-") as folder:
        work = Path(folder)
        train = make_images(work / "train", args.per_class, shifted=False, seed=0)
        val = make_images(work / "val", 25, shifted=True, seed=1)
        embed(val, work / "val-features", weights=args.weights, image_size=SIZE)
        print(f"{len(SHAPES)} classes x {args.per_class} training images, 100 shifted "
              f"validation images, {SIZE} px, weights {args.weights}")  # fmt: skip
        print("| workflow | embed / train time | validation accuracy |")
        print("|---|---|---|")
        for views in (0, 4, 8):
            seconds, accuracy = accuracy_of_views(
                train, work / "val-features", work, views, args.weights
            )
            print(f"| embed --views {views} + logreg | {seconds:.1f} s | {accuracy:.3f} |")
        seconds, accuracy = full_workflow(train, val, args.epochs, args.weights)
        print(f"| full Keras, augmentation layers, {args.epochs} epochs | {seconds:.1f} s | "
              f"{accuracy:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
