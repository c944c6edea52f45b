"""Each head kind with its former fixed hyperparameters against the same kind with the
hyperparameters `train` now chooses by cross-validation, scored on held-out test images, in
one run; and `--head auto` against every kind.

    python bench/heads.py [--data samples digits shapes photos] [--out results.json]

Features come from the real InceptionV3 with random, seeded weights at 75 px (ImageNet
weights cannot be downloaded here), embedded once per data set (train and test images
apart). Data sets, each with its own test images that no head trains on:
- samples: `headstart demo`'s generated images, 3 classes, 60 training and 60 test images
  a class (the issue's set: 180 images at 75 px);
- digits, shapes, photos: bench/cnn_defaults.py's (10 classes of 1,198 / 599 scikit-learn
  digits; 8 generated shape and texture classes and 8 photo-crop classes, 800 / 480 each).

"before": SklearnHead with its former defaults (logreg C=1; svm C=1, gamma "scale"; knn 5
neighbours; rf unlimited depth, leaves of 1) fitted on the same training split (80 %, seed
0), as `train` did until now; "after": `headstart train --head KIND` as it is. Both are
scored from their saved ONNX heads on the test features. Prints test accuracy per kind and
data set, the difference in points and the training seconds.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cnn_defaults import make_digits, make_photos, make_shapes  # noqa: E402

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.samples import make_sample_images  # noqa: E402
from headstart.heads.artifact import predict_with_onnx  # noqa: E402
from headstart.heads.dataset import load_labelled_features, split_by_image  # noqa: E402
from headstart.heads.kinds import HEAD_KINDS, SKLEARN_KINDS  # noqa: E402
from headstart.heads.sklearn_heads import SklearnHead  # noqa: E402
from headstart.heads.train import train_head  # noqa: E402


def make_samples(train: Path, test: Path) -> None:
    make_sample_images(train, classes=3, per_class=60, size_range=(60, 140), seed=0)
    make_sample_images(test, classes=3, per_class=60, size_range=(60, 140), seed=1)


MAKERS = {
    "samples": make_samples,
    "digits": make_digits,
    "shapes": make_shapes,
    "photos": make_photos,
}


def test_accuracy(head_dir: Path, test) -> float:
    probabilities = predict_with_onnx(head_dir, test.X)
    classes = json.loads((head_dir / "head.json").read_text())["classes"]
    return float((np.asarray(classes)[probabilities.argmax(axis=1)] == test.labels).mean())


def before(features: Path, kind: str, out: Path, test) -> tuple[float, float]:
    """The former head: fixed hyperparameters, same split, saved and scored from ONNX."""
    data = load_labelled_features(features)
    train, val = split_by_image(data, 0.2, seed=0)
    started = time.monotonic()
    head = SklearnHead(kind, seed=0)
    head.fit(data.X[train], data.y[train], validation=(data.X[val], data.y[val]))
    seconds = time.monotonic() - started
    out.mkdir(parents=True)
    head.save(out, data.X.shape[1])
    probabilities = predict_with_onnx(out, test.X)
    predicted = np.asarray(data.classes)[probabilities.argmax(axis=1)]
    return float((predicted == test.labels).mean()), seconds


def after(features: Path, kind: str, out: Path, test) -> tuple[float, float, str]:
    started = time.monotonic()
    result = train_head(features, out, kind, epochs=100)
    seconds = time.monotonic() - started
    return test_accuracy(out, test), seconds, result.kind


def embed_sets(work: Path, name: str) -> tuple[Path, Path]:
    images = {part: work / name / part for part in ("train", "test")}
    for part in images.values():
        part.mkdir(parents=True)
    MAKERS[name](images["train"], images["test"])
    stores = []
    for part, folder in images.items():
        store = work / name / f"{part}-features"
        embed(folder, store, weights="random", image_size=75)
        stores.append(store)
    return stores[0], stores[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(MAKERS), choices=list(MAKERS))
    parser.add_argument("--kinds", nargs="+", default=[*HEAD_KINDS, "auto"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for name in args.data:
            train_store, test_store = embed_sets(work, name)
            test = load_labelled_features(test_store)
            for kind in args.kinds:
                row = {"data": name, "kind": kind}
                if kind in SKLEARN_KINDS:
                    row["before"], row["before_s"] = before(
                        train_store, kind, work / name / f"before-{kind}", test
                    )
                row["after"], row["after_s"], row["kept"] = after(
                    train_store, kind, work / name / f"after-{kind}", test
                )
                results.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(f"{'data':<8} {'head':<12} {'before':>7} {'s':>6} {'after':>7} {'s':>6} {'points':>7}")
    for row in results:
        was = row.get("before")
        shown, seconds = ("-", "-") if was is None else (f"{was:.4f}", f"{row['before_s']:.1f}")
        points = "" if was is None else f"{100 * (row['after'] - was):+.1f}"
        kind = row["kind"] if row["kind"] != "auto" else f"auto: {row['kept']}"
        print(f"{row['data']:<8} {kind:<12} {shown:>7} {seconds:>6} "
              f"{row['after']:>7.4f} {row['after_s']:>6.1f} {points:>7}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
