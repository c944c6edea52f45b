"""train-cnn's defaults against a plain ConvNet written directly in Keras, on held-out test
images of three data sets that need no download, over several seeds, in one run.

    python bench/cnn_defaults.py [--seeds 0 1 2] [--data digits shapes photos]
                                 [--set augment=false ...] [--out results.json]

Data sets (made once, seed 0; each has its own test images that neither side trains on):
- digits: scikit-learn's 1,797 handwritten digits (8x8) scaled up to 28 px grayscale;
  10 classes, a third held out for the test.
- shapes: 8 generated classes at 32 px RGB (disc, square, triangle, cross, ring, horizontal
  and vertical stripes, checkerboard), random colours, places, sizes and noise; 100 training
  and 60 test images a class.
- photos: 8 classes of 32 px crops from the two photos scikit-learn ships (each photo's four
  quarters), at random places and scales; 100 training and 60 test images a class.
- photos96 (only when asked, slower): the same at 96 px, 50 training images a class.

The reference is the course's two-convolution network, as one writes it in Keras: Rescaling,
Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten -> Dense 128 -> softmax, Adam 1e-3,
batch 32, no augmentation, EarlyStopping on val_loss (patience 5, best weights restored),
at most 100 epochs. Both sides train on the same files with the same stratified validation
split (train-cnn's, 20 %, the run's seed); train-cnn's model is scored from its model.onnx,
the reference from Keras. `--set KEY=VALUE` changes one of train-cnn's settings (as
CnnSettings.from_options takes it) to try a candidate default. Prints the mean test accuracy
and seconds of each side per data set, the difference in points and the verdict (a tie:
within 0.5 points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image, ImageDraw  # noqa: E402

from headstart.heads.cnn.settings import CnnSettings  # noqa: E402
from headstart.heads.cnn.training import train_cnn  # noqa: E402
from headstart.heads.dataset import stratified_split  # noqa: E402

DATASETS = ("digits", "shapes", "photos", "photos96")
TIE_POINTS = 0.5


# ---- data ---------------------------------------------------------------------------------


def _save(folder: Path, label: str, index: int, pixels: np.ndarray) -> None:
    (folder / label).mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(folder / label / f"{index:04d}.png")


def make_digits(train: Path, test: Path) -> tuple[int, str]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.arange(len(digits.target))
    held_out = set(stratified_split(digits.target, 1 / 3, seed=0)[1].tolist())
    for row in rows:
        small = Image.fromarray((digits.images[row] * (255 / 16)).astype(np.uint8))
        pixels = np.asarray(small.resize((28, 28), Image.Resampling.BILINEAR))[..., None]
        _save(test if row in held_out else train, str(digits.target[row]), row, pixels)
    return 28, "grayscale"


SHAPE_CLASSES = ("disc", "square", "triangle", "cross", "ring", "hstripes", "vstripes", "checker")


def _draw(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    big = size * 4  # drawn large and scaled down: smooth edges
    background, foreground = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(background - foreground).sum() < 150:  # visible
        foreground = rng.integers(0, 256, 3)
    image = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(v) for v in foreground)
    radius = rng.uniform(0.2, 0.4) * big
    cx, cy = rng.uniform(radius, big - radius, 2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "disc":
        draw.ellipse(box, fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=int(radius * 0.35))
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                     fill=fill)  # fmt: skip
    elif kind == "cross":
        arm = radius * 0.3
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    else:  # textures over the whole image
        period = rng.uniform(0.12, 0.25) * big
        phase = rng.uniform(0, period)
        grid = (np.arange(big) + phase) // (period / 2) % 2
        if kind == "hstripes":
            mask = np.repeat(grid[:, None], big, 1)
        elif kind == "vstripes":
            mask = np.repeat(grid[None, :], big, 0)
        else:
            mask = (grid[:, None] + grid[None, :]) % 2
        array = np.where(mask[..., None] > 0, foreground, background)
        image = Image.fromarray(array.astype(np.uint8))
    small = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    noisy = small + rng.normal(0, 12, small.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_shapes(train: Path, test: Path) -> tuple[int, str]:
    rng = np.random.default_rng(0)
    for kind in SHAPE_CLASSES:
        for index in range(160):
            _save(train if index < 100 else test, kind, index, _draw(kind, rng))
    return 32, "rgb"


def make_photos(train: Path, test: Path, size: int = 32, n_train: int = 100) -> tuple[int, str]:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    samples = load_sample_images()
    for photo_name, photo in zip(("china", "flower"), samples.images, strict=True):
        height, width = photo.shape[:2]
        for quarter in range(4):
            top, left = (quarter // 2) * height // 2, (quarter % 2) * width // 2
            label = f"{photo_name}{quarter}"
            for index in range(n_train + 60):
                side = int(rng.integers(40, 100))
                y = top + int(rng.integers(0, height // 2 - side))
                x = left + int(rng.integers(0, width // 2 - side))
                crop = Image.fromarray(photo[y : y + side, x : x + side])
                pixels = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
                _save(train if index < n_train else test, label, index, pixels)
    return size, "rgb"


def make_photos96(train: Path, test: Path) -> tuple[int, str]:
    return make_photos(train, test, size=96, n_train=50)


MAKERS = {
    "digits": make_digits,
    "shapes": make_shapes,
    "photos": make_photos,
    "photos96": make_photos96,
}


def load_folder(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, S, S, C) float32 in [0, 255] and labels, in train-cnn's scan order."""
    paths = sorted(folder.rglob("*.png"), key=lambda p: p.relative_to(folder).as_posix())
    pixels = [np.asarray(Image.open(p), np.float32) for p in paths]
    stacked = np.stack([p[..., None] if p.ndim == 2 else p for p in pixels])
    return stacked, np.array([classes.index(p.parent.name) for p in paths])


# ---- the two sides ------------------------------------------------------------------------


def reference(train: tuple, test: tuple, seed: int, classes: int) -> tuple[float, int]:
    """The course's ConvNet in plain Keras: test accuracy and epochs run."""
    import keras

    keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = train, test
    train_rows, val_rows = stratified_split(y, 0.2, seed)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=5, min_delta=0.001, restore_best_weights=True
    )
    history = model.fit(
        x[train_rows],
        y[train_rows],
        validation_data=(x[val_rows], y[val_rows]),
        epochs=100,
        batch_size=32,
        callbacks=[stop],
        verbose=0,
    )
    predicted = model.predict(x_test, verbose=0).argmax(1)
    keras.backend.clear_session()
    return float((predicted == y_test).mean()), len(history.history["loss"])


def headstart(
    train_dir: Path, test: tuple, work: Path, settings: CnnSettings
) -> tuple[float, int, dict]:
    """train-cnn with `settings`, scored from its model.onnx: test accuracy, epochs run, and
    the settings it recorded."""
    import keras
    import onnxruntime as ort

    result = train_cnn(train_dir, work / "model", settings)
    keras.backend.clear_session()
    session = ort.InferenceSession(str(work / "model" / "model.onnx"))
    x_test, y_test = test
    name = session.get_inputs()[0].name
    probabilities = np.concatenate(
        [session.run(None, {name: x_test[i : i + 256]})[0] for i in range(0, len(x_test), 256)]
    )
    description = json.loads((work / "model" / "model.json").read_text())
    accuracy = float((probabilities.argmax(1) == y_test).mean())
    return accuracy, result.epochs_run, description["settings"]


# ---- the run ------------------------------------------------------------------------------


def parse_set(values: list[str]) -> dict:
    options = {}
    for value in values:
        key, _, raw = value.partition("=")
        options[key] = json.loads(raw) if raw not in ("", None) else raw
        if isinstance(options[key], list):
            options[key] = tuple(options[key])
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", nargs="+", choices=DATASETS, default=list(DATASETS[:3]))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", type=Path, help="JSON of every run; runs in it are skipped")
    args = parser.parse_args()
    options = parse_set(args.set)
    label = "defaults" + "".join(f" {k}={v}" for k, v in options.items())
    done = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    print(f"train-cnn: {label}; seeds {args.seeds}; CPU, {os.cpu_count()} cores", flush=True)

    rows = []
    for data in args.data:
        with tempfile.TemporaryDirectory(prefix="bench-cnn-") as temporary:
            root = Path(temporary)
            size, color_mode = MAKERS[data](root / "train", root / "test")
            classes = sorted(p.name for p in (root / "train").iterdir())
            train, test = load_folder(root / "train", classes), load_folder(root / "test", classes)
            for seed in args.seeds:
                sides = [("reference", None)] if not args.no_reference else []
                sides.append((label, options))
                for side, side_options in sides:
                    key = f"{data}/{seed}/{side}"
                    if key not in done:
                        started = time.perf_counter()
                        if side_options is None:
                            accuracy, epochs = reference(train, test, seed, len(classes))
                            recorded = None
                        else:
                            settings = CnnSettings.from_options(
                                image_size=size, color_mode=color_mode, seed=seed, **side_options
                            )
                            accuracy, epochs, recorded = headstart(
                                root / "train", test, root / f"run-{seed}", settings
                            )
                        done[key] = {
                            "accuracy": accuracy,
                            "seconds": time.perf_counter() - started,
                            "epochs": epochs,
                            "settings": recorded,
                        }
                        if args.out:
                            args.out.write_text(json.dumps(done, indent=1))
                    run = done[key]
                    print(f"{key}: accuracy {run['accuracy']:.4f}, {run['epochs']} epochs, "
                          f"{run['seconds']:.0f} s", flush=True)  # fmt: skip
        rows.append(data)

    print(f"\n| data | reference accuracy | time | train-cnn ({label}) | time | points | verdict |")
    print("|---|---|---|---|---|---|---|")
    for data in rows:
        mine = [done[f"{data}/{seed}/{label}"] for seed in args.seeds]
        theirs = [done.get(f"{data}/{seed}/reference") for seed in args.seeds]
        mine_acc = np.mean([r["accuracy"] for r in mine])
        mine_s = np.mean([r["seconds"] for r in mine])
        if None in theirs:
            print(f"| {data} | – | – | {mine_acc:.4f} | {mine_s:.0f} s | – | – |")
            continue
        theirs_acc = np.mean([r["accuracy"] for r in theirs])
        theirs_s = np.mean([r["seconds"] for r in theirs])
        points = 100 * (mine_acc - theirs_acc)
        verdict = "tie" if abs(points) <= TIE_POINTS else ("beats" if points > 0 else "LOSES")
        print(f"| {data} | {theirs_acc:.4f} | {theirs_s:.0f} s | {mine_acc:.4f} | {mine_s:.0f} s "
              f"| {points:+.1f} | {verdict} |")  # fmt: skip


if __name__ == "__main__":
    main()
