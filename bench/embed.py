"""Embed throughput against its limits, measured side by side in one run.

    python bench/embed.py [--images 32] [--image-size 299] [--device cpu] [--precision fp32]
                          [--weights random] [--keras]

For one device and precision, prints
  (a) `headstart embed` end to end, as a user runs it (a fresh process; model cached): the
      steady rate from the time difference between N and 10 N images, and the start-up
      overhead: the whole process's time for N images minus the time the network alone
      takes for them at rate (b) (robust where the difference of two noisy runs is not,
      and conservative: any shortfall of the pipeline on those N counts as start-up);
      with each run's peak RSS;
  (b) ONNX Runtime alone on pre-decoded batches: the network's ceiling;
  (d) decoding alone on all cores (the other ceiling on GPU nodes), exact and --fast-decode;
and the ratios a/b and a / min(b, d). On CPU it also prints the CPU time per image of
decoding and of the network, and the a/b they allow when decoding takes its cycles from the
network's cores; then int8 against fp32 (ONNX Runtime alone, and the features' cosine), and
the cost of --fast-decode as feature cosine on large photos. With --keras, the Keras way
(image_dataset_from_directory + predict) too.
Photos are random crops of the two photos scikit-learn ships (500x375 JPEGs; 1200x900 ones
upscaled for the fast-decode rows), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from headstart.extractor.backbone import ensure_backbone, parse_weights  # noqa: E402
from headstart.extractor.decode import DecodeError, load_image  # noqa: E402
from headstart.extractor.decode_pool import decode_in_order  # noqa: E402
from headstart.extractor.runtime import BackboneSession  # noqa: E402
from headstart.extractor.scan import scan_images  # noqa: E402
from headstart.extractor.settings import default_workers, usable_cores  # noqa: E402
from headstart.extractor.spec import in_precision  # noqa: E402
from headstart.extractor.stream import default_batch_size  # noqa: E402


def make_photos(folder: Path, count: int, size=(500, 375), seed: int = 0) -> Path:
    """`count` JPEGs of `size`: random crops (some mirrored) of scikit-learn's photos."""
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
        image = Image.fromarray(np.ascontiguousarray(crop))
        if size != (500, 375):
            image = image.resize(size, Image.Resampling.BICUBIC)
        image.save(folder / "photos" / f"{index:05d}.jpg", quality=90)
    return folder


def run_embed_process(images: Path, args) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of one `headstart embed` process into a fresh store; the
    RSS is the kernel's account of that child (wait4), as the process leaves without
    running exit handlers."""
    out = Path(tempfile.mkdtemp(prefix="bench-store-"))
    command = [
        sys.executable, "-m", "headstart", "embed", str(images), "-o", str(out),
        "--weights", args.weights, "--image-size", str(args.image_size), "--device",
        args.device, "--precision", args.precision,
    ]  # fmt: skip
    try:
        with tempfile.TemporaryFile() as said:
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=said, cwd=REPO)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode != 0:
                said.seek(0)
                sys.exit(f"embed failed:\n{said.read().decode(errors='replace')}")
    finally:
        shutil.rmtree(out)
    return seconds, usage.ru_maxrss // 1024


def best_of(repeats: int, measure):
    """The fastest of `repeats` (seconds, rss) measurements, with the largest RSS seen."""
    results = [measure() for _ in range(repeats)]
    return min(r[0] for r in results), max(r[1] for r in results)


def decoded_batches(images: Path, size: int, batch_size: int) -> tuple[list[np.ndarray], float]:
    """The images decoded into model batches, and the CPU milliseconds it took per image to
    read, hash and decode one (on this one thread, with nothing else running)."""
    files = [image.location for image in scan_images(images).images]
    started = time.thread_time()
    pixels = [load_image(f, size).pixels for f in files]
    decode_ms = (time.thread_time() - started) * 1000 / len(files)
    batches = [np.stack(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return batches, decode_ms


def onnxruntime_rate(onnx_path: Path, batches, args, fp16: bool = False):
    """(images/s, features, share of the cores busy) of ONNX Runtime alone on pre-decoded
    batches, after a warm-up; the share is this process's CPU time over wall time x cores."""
    session = BackboneSession(onnx_path, args.device, fp16=fp16)
    session.run(batches[0])
    best, features, busy = float("inf"), None, 0.0
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        features = [session.run(batch) for batch in batches]
        seconds = time.perf_counter() - started
        if seconds < best:
            best = seconds
            busy = (time.process_time() - cpu_started) / (seconds * usable_cores())
    return sum(len(b) for b in batches) / best, np.concatenate(features), busy


def decode_rate(images: Path, size: int, fast: bool, repeats: int) -> float:
    files = scan_images(images).images
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _image, outcome in decode_in_order(files, size, workers=default_workers(), fast=fast):
            assert not isinstance(outcome, DecodeError), outcome
        best = min(best, time.perf_counter() - started)
    return len(files) / best


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def keras_rate(images: Path, args) -> float:
    import keras
    from keras.applications.inception_v3 import preprocess_input

    from headstart.extractor.backbone import build_keras_backbone

    model = build_keras_backbone(parse_weights(args.weights))
    count = len(scan_images(images).images)

    def run():
        dataset = keras.utils.image_dataset_from_directory(
            images, labels=None, image_size=(args.image_size, args.image_size),
            interpolation="bilinear", batch_size=32, shuffle=False, verbose=False,
        ).map(preprocess_input)  # fmt: skip
        started = time.perf_counter()
        model.predict(dataset, verbose=0)
        return time.perf_counter() - started, 0

    return count / best_of(args.repeats, run)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="N (the large run has 10 N)")
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--weights", default="random")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keras", action="store_true", help="also time the Keras way")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        n = args.images
        small, large = make_photos(root / "small", n), make_photos(root / "large", 10 * n, seed=1)
        fp32 = ensure_backbone(parse_weights(args.weights))
        model = in_precision(fp32, args.precision)
        batch = default_batch_size(args.device, args.image_size)  # embed's own default
        print(
            f"{args.device}, {args.precision}, {os.cpu_count()} cores, {default_workers()} decode "
            f"threads, batch {batch}; 500x375 JPEGs -> {args.image_size} px, N = {n}"
        )

        t_small, rss_small = best_of(args.repeats, lambda: run_embed_process(small, args))
        t_large, rss_large = best_of(args.repeats, lambda: run_embed_process(large, args))
        steady = 9 * n / (t_large - t_small)
        batches, decode_ms = decoded_batches(large, args.image_size, batch)
        ceiling, features, busy = onnxruntime_rate(
            model.onnx_path, batches, args, fp16=args.precision == "fp16"
        )
        decoding = decode_rate(large, args.image_size, False, args.repeats)
        startup = t_small - n / ceiling
        print(f"(a) embed, steady state             {steady:8.1f} images/s")
        print(f"    start-up overhead               {startup:8.2f} s (whole process, N images)")
        print(f"    peak RSS, N / 10 N images        {rss_small} / {rss_large} MB "
              f"({rss_large / rss_small - 1:+.1%})")  # fmt: skip
        print(f"(b) ONNX Runtime alone              {ceiling:8.1f} images/s")
        print(f"(d) decoding alone, all cores       {decoding:8.1f} images/s")
        bound = steady / min(ceiling, decoding)
        print(f"    a/b = {steady / ceiling:.3f}   a/min(b, d) = {bound:.3f}")
        if args.device == "cpu":
            # On CPU the decoder's cycles come out of the network's cores: unless they fit
            # in the moments the network leaves its cores idle, a/b cannot pass this.
            network_ms = usable_cores() * 1000 / ceiling
            print(
                f"    CPU per image: decoding {decode_ms:.2f} ms (one thread), network "
                f"{network_ms:.1f} ms ({usable_cores()} cores / b, {busy:.1%} of them busy)\n"
                f"    a/b bound when decoding takes its cycles from the network: "
                f"{network_ms / (network_ms + decode_ms):.3f}"
            )

        if args.device == "cpu" and args.precision == "fp32":
            int8 = in_precision(fp32, "int8")
            rate8, features8, _ = onnxruntime_rate(int8.onnx_path, batches, args)
            print(
                f"int8: ONNX Runtime alone {rate8:.1f} images/s = {rate8 / ceiling:.2f}x fp32; "
                f"feature cosine min {cosines(features, features8).min():.5f}"
            )

        big = make_photos(root / "big", 64, size=(1200, 900), seed=2)
        exact_rate = decode_rate(big, args.image_size, False, args.repeats)
        fast_rate = decode_rate(big, args.image_size, True, args.repeats)
        files = [image.location for image in scan_images(big).images]
        exact = np.stack([load_image(f, args.image_size).pixels for f in files])
        fast = np.stack([load_image(f, args.image_size, fast=True).pixels for f in files])
        session = BackboneSession(fp32.onnx_path, args.device)
        cos = cosines(session.run(exact), session.run(fast))
        print(
            f"--fast-decode on 1200x900 JPEGs: decoding {exact_rate:.1f} -> {fast_rate:.1f} "
            f"images/s ({fast_rate / exact_rate:.2f}x); feature cosine min {cos.min():.5f}, "
            f"mean {cos.mean():.5f}"
        )
        if args.keras:
            rate = keras_rate(large, args)
            print(f"(c) Keras image_dataset + predict   {rate:8.1f} images/s")
            print(f"    a/c = {steady / rate:.2f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
