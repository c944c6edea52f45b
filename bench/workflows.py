"""When embed + a head, when train-cnn: both workflows on the same generated folders, timed
side by side in one run.

    python bench/workflows.py [--per-class 100] [--weights random]

Two data sets of four classes (circle, square, triangle, cross), `--per-class` images each:
- tinted: each class also has its own range of hues, so even generic features separate them;
- shapes: colours are random, only the shape tells the class apart (spatial information).
For each: (a) light: `embed` (InceptionV3, 139 px, backbone export cached beforehand) + a
logreg head; (b) `train-cnn --arch simple` at 64 px (defaults: 3 blocks, augmentation, early
stopping with patience 10, at most 100 epochs). Same files, same stratified split (seed 0).
Prints seconds and validation accuracy of each and the time ratio b/a.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.backbone import ensure_backbone, parse_weights  # noqa: E402
from headstart.extractor.samples import SHAPES, draw_shape  # noqa: E402
from headstart.heads.cnn.settings import CnnSettings  # noqa: E402
from headstart.heads.cnn.training import train_cnn  # noqa: E402
from headstart.heads.train import train_head  # noqa: E402

TINTS = np.array([[1.0, 0.4, 0.4], [0.4, 1.0, 0.4], [0.4, 0.4, 1.0], [1.0, 1.0, 0.3]])


def make_images(folder: Path, per_class: int, tinted: bool, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, shape in enumerate(SHAPES):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.asarray(draw_shape(shape, rng, (96, 200)), dtype=np.float32)
            if tinted:
                pixels *= TINTS[label]
            Image.fromarray(pixels.astype(np.uint8)).save(folder / shape / f"{index:04d}.jpg")
    return folder


def light(images: Path, work: Path, weights: str) -> tuple[float, float]:
    started = time.perf_counter()
    embed(images, work / "features", weights=weights, image_size=139)
    trained = train_head(work / "features", work / "head", "logreg")
    return time.perf_counter() - started, trained.accuracy


def full(images: Path, work: Path) -> tuple[float, float, int]:
    started = time.perf_counter()
    settings = CnnSettings(arch="simple", image_size=64)
    result = train_cnn(images, work / "cnn", settings)
    return time.perf_counter() - started, result.accuracy, result.epochs_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--weights", default="random", help="imagenet, random or PATH")
    args = parser.parse_args()
    ensure_backbone(parse_weights(args.weights))  # the one-time export is not the workflow
    print(f"{len(SHAPES)} classes x {args.per_class} images, weights {args.weights}, CPU")
    print("| data | light: embed + logreg | train-cnn simple | time b/a |")
    print("|---|---|---|---|")
    for name, tinted in (("tinted", True), ("shapes", False)):
        with tempfile.TemporaryDirectory(prefix="bench-workflows-") as temporary:
            work = Path(temporary)
            images = make_images(work / "images", args.per_class, tinted)
            light_s, light_acc = light(images, work, args.weights)
            full_s, full_acc, epochs = full(images, work)
            print(
                f"| {name} | {light_s:.1f} s, accuracy {light_acc:.3f} | {full_s:.1f} s "
                f"({epochs} epochs), accuracy {full_acc:.3f} | {full_s / light_s:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
