"""The rows of the GPU run (bench/gpu.sh runs each under its own timeout): one measurement
per call, printed as one Markdown table row and appended to --out as soon as it is done.

    python bench/gpu.py check   --device cuda             # the provider really starts
    python bench/gpu.py decode  --images 1024             # decoding alone, all cores
    python bench/gpu.py ort     --device cuda --precision fp16 --batch 128   # the network alone
    python bench/gpu.py cosine  --device cuda             # its features against the CPU's
    python bench/gpu.py embed   --device cuda --precision fp32               # end to end

Rates are medians of --repeats runs over --images images (the same images each time, after
a warm-up that pays for cuDNN's algorithm search), so that one slow run or a GPU's clock
ramp does not make the row. Photos: 500x375 JPEG crops of scikit-learn's two photos
(bench/embed.py's make_photos), decoded to --image-size. The network is InceptionV3 with
random weights from the cache (bench/gpu_graph.py refills it where it cannot be exported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(os.environ.get("HEADSTART_BENCH_PHOTOS", tempfile.gettempdir())) / "gpu-photos"


def photos(count: int) -> Path:
    """`count` photos, made once per machine and reused by every row."""
    from embed import make_photos  # bench/embed.py

    folder = PHOTOS / str(count)
    if not (folder / "photos" / f"{count - 1:05d}.jpg").is_file():
        make_photos(folder, count)
    return folder


def decoded(count: int, size: int) -> np.ndarray:
    from headstart.extractor.decode_pool import decode_in_order
    from headstart.extractor.scan import scan_images

    files = scan_images(photos(count)).images
    return np.stack([outcome.pixels for _, outcome in decode_in_order(files, size)])


def network(precision: str) -> Path:
    from headstart.extractor.backbone import ensure_backbone, parse_weights
    from headstart.extractor.spec import in_precision

    return in_precision(ensure_backbone(parse_weights("random")), precision).onnx_path


def session(args, precision: str | None = None, device: str | None = None):
    from headstart.extractor.runtime import BackboneSession

    precision = precision or args.precision
    return BackboneSession(network(precision), device or args.device, fp16=precision == "fp16")


def row(args, what: str, value: str, note: str = "") -> None:
    """One table row: printed, and appended to --out at once (a later row that hangs or
    crashes cannot take it with it)."""
    settings = f"{args.device} {args.precision} batch {args.batch}"
    if os.environ.get("HEADSTART_CUDA_NHWC") == "1":
        settings += " nhwc"
    if os.environ.get("HEADSTART_CUDNN_SEARCH"):
        settings += f" search {os.environ['HEADSTART_CUDNN_SEARCH'].lower()}"
    line = f"| {what} | {settings} | {value} | {note} |"
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


def median_rate(images: int, repeats: int, run) -> tuple[float, float]:
    """(median images/s, spread as (max - min) / median) of `repeats` timed calls of run()."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - started))
    middle = statistics.median(rates)
    return middle, (max(rates) - min(rates)) / middle


def check(args) -> None:
    import onnxruntime as ort

    print("onnxruntime", ort.__version__, ort.get_build_info(), flush=True)
    print("available:", ", ".join(ort.get_available_providers()), flush=True)
    running = session(args)
    features = running.run(decoded(args.batch, args.image_size)[: args.batch])
    assert running.device == args.device, f"asked for {args.device}, got {running.device}"
    assert np.isfinite(features).all() and features.shape[0] == args.batch
    row(args, "provider starts, one batch runs", running._session.get_providers()[0])


def decode(args) -> None:
    from headstart.extractor.decode_pool import decode_in_order
    from headstart.extractor.scan import scan_images
    from headstart.extractor.settings import default_workers

    files = scan_images(photos(args.images)).images
    list(decode_in_order(files, args.image_size))  # warm the page cache

    def run():
        for _, outcome in decode_in_order(files, args.image_size):
            assert not isinstance(outcome, Exception), outcome

    rate, spread = median_rate(len(files), args.repeats, run)
    row(args, "decoding alone", f"{rate:.0f} img/s", f"{default_workers()} threads, ±{spread:.0%}")


def ort_alone(args) -> None:
    pixels = decoded(args.images, args.image_size)
    batches = [pixels[i : i + args.batch] for i in range(0, len(pixels), args.batch)]
    network(args.precision)  # an fp16 or int8 copy is made here once, outside the timing
    started = time.perf_counter()
    running = session(args)
    opened = time.perf_counter() - started
    started = time.perf_counter()
    running.run(batches[0])  # cuDNN's algorithm search for this shape happens here
    first = time.perf_counter() - started
    odd = pixels[: max(1, args.batch // 2 - 3)]  # a new shape, as a last partial batch is
    started = time.perf_counter()
    running.run(odd)
    new_shape = time.perf_counter() - started

    def run():
        for batch in batches:
            running.run(batch)

    rate, spread = median_rate(len(pixels), args.repeats, run)
    note = (
        f"±{spread:.0%}; session {opened:.1f} s, first batch {first:.2f} s, "
        f"first batch of a new shape ({len(odd)}) {new_shape:.2f} s"
    )
    row(args, "ONNX Runtime alone", f"{rate:.0f} img/s", note)


def cosine(args) -> None:
    pixels = decoded(args.batch, args.image_size)
    here = session(args).run(pixels)
    cpu = session(args, precision="fp32", device="cpu").run(pixels)
    cos = (here * cpu).sum(1) / np.linalg.norm(here, axis=1) / np.linalg.norm(cpu, axis=1)
    row(args, "features vs CPU fp32", f"cosine min {cos.min():.5f}", f"mean {cos.mean():.6f}")


def embed(args) -> None:
    """`headstart embed` as a user runs it, a fresh process into a fresh store; the steady
    rate is (N - one batch) / (its time - the time of the same command on one batch)."""
    import shutil

    def one(images: Path) -> float:
        out = Path(tempfile.mkdtemp(prefix="gpu-store-"))
        command = [
            sys.executable, "-m", "headstart", "embed", str(images), "-o", str(out / "s"),
            "--weights", "random", "--image-size", str(args.image_size), "--device",
            args.device, "--precision", args.precision, "--batch-size", str(args.batch),
        ]  # fmt: skip
        try:
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                sys.exit(f"embed failed ({done.returncode}):\n{done.stderr[-2000:]}")
            return time.perf_counter() - started
        finally:
            shutil.rmtree(out)

    # The same command on one full batch: it pays the same start-up and the same shape's
    # cuDNN search (the search is per process), so the difference is the steady part.
    few, many = photos(args.batch), photos(args.images)
    one_batch = statistics.median(one(few) for _ in range(2))
    walls = [one(many) for _ in range(args.repeats)]
    wall = statistics.median(walls)
    steady = (args.images - args.batch) / (wall - one_batch)
    note = (
        f"{args.images} images in {wall:.1f} s (median of {len(walls)}); "
        f"one batch's run {one_batch:.1f} s"
    )
    row(args, "embed end to end, steady", f"{steady:.0f} img/s", note)


ROWS = {"check": check, "decode": decode, "ort": ort_alone, "cosine": cosine, "embed": embed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=list(ROWS))
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="the Markdown file each row is appended to")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    ROWS[args.row](args)


if __name__ == "__main__":
    main()
