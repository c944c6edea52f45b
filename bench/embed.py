"""Embed throughput, measured side by side in one run.

    python bench/embed.py [--images 256] [--image-size 299] [--weights random]

Prints images/s of
  (a) headstart's embed pipeline end to end (scan, decode, model, Parquet store; model cached),
  (b) ONNX Runtime alone on pre-decoded batches: the ceiling for (a),
  (c) the Keras way: image_dataset_from_directory + InceptionV3.predict, at Keras' default
      batch (32) and at 64; the ratio is taken against the faster,
and the ratios a/b and a/c. Inputs are JPEG photos (random 500x375 crops of the two photos
scikit-learn ships), so no download is needed.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from extractor import embed  # noqa: E402
from extractor.backbone import build_keras_backbone, ensure_backbone, parse_weights  # noqa: E402
from extractor.decode import load_image  # noqa: E402
from extractor.pipeline import default_workers  # noqa: E402
from extractor.preprocess import stack_pixels  # noqa: E402
from extractor.runtime import BackboneSession  # noqa: E402


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs of 500x375: random crops of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photos
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        top = rng.integers(0, photo.shape[0] - 375 + 1)
        left = rng.integers(0, photo.shape[1] - 500 + 1)
        crop = photo[top : top + 375, left : left + 500]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(
            folder / "photos" / f"{index:05d}.jpg", quality=90
        )


def best_of(repeats: int, run) -> float:
    """The shortest of `repeats` timings of run() (the least disturbed by the machine)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def time_headstart(images: Path, args) -> float:
    def run():
        out = Path(tempfile.mkdtemp(prefix="bench-store-"))
        try:
            embed(
                images,
                out,
                weights=args.weights,
                image_size=args.image_size,
                batch_size=args.batch_size,
                device="cpu",
            )
        finally:
            shutil.rmtree(out)

    return best_of(args.repeats, run)


def time_onnxruntime_alone(images: Path, onnx_path: Path, args) -> float:
    files = sorted(images.rglob("*.jpg"))
    batches = [
        stack_pixels(
            [load_image(f, args.image_size).pixels for f in files[i : i + args.batch_size]]
        )
        for i in range(0, len(files), args.batch_size)
    ]
    session = BackboneSession(onnx_path, "cpu")
    session.run(batches[0])  # warm-up: the ceiling is the steady rate
    return best_of(args.repeats, lambda: [session.run(batch) for batch in batches])


def time_keras(images: Path, args, batch_size: int) -> float:
    import keras
    from keras.applications.inception_v3 import preprocess_input

    model = build_keras_backbone(parse_weights(args.weights))

    def run():
        dataset = keras.utils.image_dataset_from_directory(
            images,
            labels=None,
            image_size=(args.image_size, args.image_size),
            interpolation="bilinear",
            batch_size=batch_size,
            shuffle=False,
            verbose=False,
        ).map(preprocess_input)
        model.predict(dataset, verbose=0)

    return best_of(args.repeats, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--batch-size", type=int, default=16, help="headstart's CPU default")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        make_photos(folder, args.images)
        onnx_path = ensure_backbone(parse_weights(args.weights)).onnx_path
        n = args.images
        print(
            f"{n} JPEG photos 500x375 -> {args.image_size} px, batch {args.batch_size}, "
            f"{os.cpu_count()} cores, {default_workers()} decode workers, CPU provider"
        )
        # (a) and (b) first: TensorFlow, once imported, keeps threads that would disturb them.
        pipeline = n / time_headstart(folder, args)
        ceiling = n / time_onnxruntime_alone(folder, onnx_path, args)
        print(f"(a) headstart embed, end to end   {pipeline:8.1f} images/s")
        print(f"(b) ONNX Runtime alone            {ceiling:8.1f} images/s")
        print(f"    a/b = {pipeline / ceiling:.3f}")
        if not args.skip_keras:
            keras_rates = {batch: n / time_keras(folder, args, batch) for batch in (32, 64)}
            for batch, rate in keras_rates.items():
                print(f"(c) Keras image_dataset + predict {rate:8.1f} images/s (batch {batch})")
            print(f"    a/c = {pipeline / max(keras_rates.values()):.3f} (against the faster)")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
