"""The Ray engine against the local one on this machine, side by side in one run.

    python bench/scale.py [--images 160] [--image-size 299]

Times `embed` (model cached, fresh store each time, best of 2) with --engine local and
--engine ray (a local Ray instance started and stopped by the run, as a one-machine user
would see it) on the same 500x375 JPEGs, and prints images/s and the ratio ray/local.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embed import make_photos  # noqa: E402

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.backbone import ensure_backbone, parse_weights  # noqa: E402


def rate(images: Path, count: int, engine: str, image_size: int) -> float:
    best = float("inf")
    for _ in range(2):
        out = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        try:
            started = time.perf_counter()
            embed(images, out, weights="random", image_size=image_size, engine=engine)
            best = min(best, time.perf_counter() - started)
        finally:
            shutil.rmtree(out)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--image-size", type=int, default=299)
    args = parser.parse_args()
    ensure_backbone(parse_weights("random"))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        images = make_photos(Path(folder), args.images)
        local = rate(images, args.images, "local", args.image_size)
        ray = rate(images, args.images, "ray", args.image_size)
    print(f"{args.images} JPEGs 500x375 -> {args.image_size} px, one machine")
    print(f"local engine  {local:6.1f} images/s")
    print(f"Ray engine    {ray:6.1f} images/s (Ray start and stop included)")
    print(f"ray/local = {ray / local:.2f}")


if __name__ == "__main__":
    main()
