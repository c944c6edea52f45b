"""The feature stream's overlap of host work and network, measured on CPU with a stand-in
network that takes a fixed time per batch without holding the GIL or the cores (as a GPU).

    python bench/overlap.py [--images 256] [--batch 16] [--image-size 299] [--repeats 3]

Prints, for the same photos and a real feature store (one part per --rows-per-part rows,
written with fsync): the host work alone (decode threads, copying into the batch buffers,
counting, writing parts: the stand-in answers at once), the network alone (batches x its
time per batch, set equal to the host work's so that overlap matters most), and embed's
loop as it is (the network one batch ahead on its own thread, parts written on another)
against the loop as it was (`stream.ahead = 1` and parts written in the loop: the baseline).
The decode threads overlap decoding with the network in both; what differs is the main
thread's share (buffers, counting, Parquet and fsync).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed import make_photos  # noqa: E402

from headstart.extractor.feature_rows import FeatureRows  # noqa: E402
from headstart.extractor.scan import scan_images  # noqa: E402
from headstart.extractor.spec import ExtractorSpec  # noqa: E402
from headstart.extractor.store import FeatureStore, PartWriter  # noqa: E402
from headstart.extractor.stream import FeatureStream  # noqa: E402

FINGERPRINT = {"dim": 8}


class StandIn:
    """A network that takes `seconds` per batch, sleeping (no GIL, no core), like a GPU."""

    device = "cpu"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run(self, pixels: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.zeros((len(pixels), 8), np.float32)


def embed_loop(images, args, seconds: float, as_before: bool, store: FeatureStore) -> None:
    """What pipeline.embed does between the scan and the summary."""
    spec = ExtractorSpec.of_pixels(args.image_size, "rgb")
    stream = FeatureStream(StandIn(seconds), spec, args.batch, None)
    with store.locked():
        if as_before:  # the network in the loop, each part written there too
            stream.ahead = 1
            pending = FeatureRows.empty()
            for rows in stream.batches(images):
                pending = pending.concat(rows)
                while len(pending) >= args.rows_per_part:
                    part, pending = pending.split(args.rows_per_part)
                    store.write_part(part, FINGERPRINT)
            if len(pending):
                store.write_part(pending, FINGERPRINT)
            return
        with PartWriter(store, FINGERPRINT, args.rows_per_part) as parts:
            for rows in stream.batches(images):
                parts.add(rows)
            parts.finish()


def wall(images, args, root: Path, seconds: float, as_before: bool) -> float:
    walls = []
    for repeat in range(args.repeats):
        store = FeatureStore(root / f"store-{seconds}-{as_before}-{repeat}")
        started = time.perf_counter()
        embed_loop(images, args, seconds, as_before, store)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-per-part", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as root:
        root = Path(root)
        images = scan_images(make_photos(root, args.images)).images
        wall(images, args, root, 0.0, False)  # the page cache
        host = wall(images, args, root, 0.0, False)
        batches = -(-len(images) // args.batch)
        per_batch = host / batches
        network = per_batch * batches
        serial = wall(images, args, root, per_batch, True)
        overlapped = wall(images, args, root, per_batch, False)
    print(f"{len(images)} photos, batches of {args.batch}, {args.image_size} px, a part every "
          f"{args.rows_per_part} rows, median of {args.repeats}")  # fmt: skip
    print(f"host work alone            {host:6.2f} s")
    print(f"network alone              {network:6.2f} s ({per_batch * 1000:.0f} ms per batch)")
    print(f"embed loop as before       {serial:6.2f} s = {serial / (host + network):.2f} x sum")
    ratio_max, ratio_sum = overlapped / max(host, network), overlapped / (host + network)
    print(f"embed loop now             {overlapped:6.2f} s = {ratio_max:.2f} x max, "
          f"{ratio_sum:.2f} x sum")  # fmt: skip
    print(f"now / before: {serial / overlapped:.2f}x faster")


if __name__ == "__main__":
    main()
