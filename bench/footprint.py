"""Peak memory and time of a backbone's one-time export to ONNX, each in a fresh process.

    python bench/footprint.py [BACKBONE ...] [--weights random]

For each backbone (default inception_v3), the export headstart makes (ensure_backbone, into
an empty cache) is run twice side by side: as it is, and with tf2onnx's defensive copies of
its graph (every conversion before keras_export.converted), the baseline. Printed per run:
seconds, the process's peak RSS and the ONNX file's sha256 (the two must be equal), then
the ratios. Issue 20's other measures (headstart demo, train-cnn) are still to be added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from headstart.extractor import keras_export
from headstart.extractor.backbone import ensure_backbone, parse_weights
if sys.argv[3] == "baseline":
    keras_export.converted = lambda convert: convert()  # tf2onnx's copies, as before
started = time.perf_counter()
cached = ensure_backbone(parse_weights(sys.argv[2]), sys.argv[1])
print(json.dumps({
    "seconds": round(time.perf_counter() - started, 1),
    "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    "onnx_sha256": cached.manifest["onnx_sha256"],
}))
"""


def export_once(backbone: str, weights: str, how: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, backbone, weights, how],
            capture_output=True, text=True, env={**os.environ, "HEADSTART_CACHE": cache},
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{backbone} ({how}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbones", nargs="*", default=["inception_v3"])
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()
    for backbone in args.backbones:
        base = export_once(backbone, args.weights, "baseline")
        ours = export_once(backbone, args.weights, "headstart")
        same = "same ONNX" if base["onnx_sha256"] == ours["onnx_sha256"] else "ONNX DIFFERS"
        print(
            f"{backbone:<20} export {ours['seconds']:>6.1f} s {ours['peak_gb']:>5.2f} GB   "
            f"with tf2onnx's copies {base['seconds']:>6.1f} s {base['peak_gb']:>5.2f} GB   "
            f"ratio {ours['seconds'] / base['seconds']:.2f}x time "
            f"{ours['peak_gb'] / base['peak_gb']:.2f}x memory   {same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
