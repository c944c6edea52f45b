"""Peak memory (summed over the whole process tree) and time of the work that goes through
TensorFlow, each in a fresh process and an empty model cache, as headstart does it and as it
did before issue 20 (tf2onnx's conversion left as it is: the baseline), side by side.

    python bench/footprint.py [--only export,demo,train-cnn] [--backbones inception_v3 ...]
                              [--all] [--no-baseline] [--out rows.jsonl]

- export: the one-time export of each backbone (ensure_backbone, random weights; --all:
  every listed one), with the ONNX file's sha256 (headstart's and the baseline's must be
  equal);
- demo: `headstart demo --weights random` (sample images, the InceptionV3 export, embed,
  train, predict, export);
- train-cnn: `headstart train-cnn --arch inception --weights random` on the demo's 60
  images at 75 px, 2 epochs, then its ONNX conversion.

Printed per measure: seconds and peak GB, headstart's and the baseline's, and the ratios.
With --no-baseline only headstart's are measured (how applications.EXPORT_MEASURED is:
`--only export --all --no-baseline`). A run that fails (killed for want
of memory, say) is printed as failed, with its exit status, and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 0.05  # seconds

# The child runs headstart's code, or the baseline: every conversion without
# keras_export.converted (set before anything imports it by name).
PRELUDE = """
import os, sys
if os.environ.pop("FOOTPRINT_BASELINE", None):
    from headstart.extractor import keras_export
    keras_export.converted = lambda convert: convert()
"""
EXPORT = """
import json, sys
from headstart.extractor.backbone import ensure_backbone, parse_weights
cached = ensure_backbone(parse_weights("random"), sys.argv[1])
print(json.dumps({"onnx_sha256": cached.manifest["onnx_sha256"]}))
"""
COMMAND = """
import sys
from headstart.launch import run
sys.argv = ["headstart", *sys.argv[1:]]
run()
"""


def tree_rss_bytes(root: int) -> int:
    """The resident memory of process `root` and all its descendants, from /proc."""
    children: dict[int, list[tuple[int, int]]] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    own = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parent, rss = int(fields[1]), int(fields[21]) * page
        if int(entry) == root:
            own = rss
        children.setdefault(parent, []).append((int(entry), rss))
    total, stack = own, [root]
    while stack:
        for child, rss in children.get(stack.pop(), []):
            total += rss
            stack.append(child)
    return total


class Failed(Exception):
    def __init__(self, returncode: int, peak_gb: float, stderr: str):
        super().__init__(f"exit status {returncode} at {peak_gb:.2f} GB: {stderr[-300:]}")
        self.row = {"failed": returncode, "peak_gb": round(peak_gb, 2)}


def measured(code: str, args: list[str], baseline: bool, cache: str) -> dict:
    """Run `code` in a fresh Python with `args`; its seconds, peak tree GB and last stdout
    line (JSON, where it prints one)."""
    env = {**os.environ, "HEADSTART_CACHE": cache, "PYTHONPATH": _importable()}
    if baseline:
        env["FOOTPRINT_BASELINE"] = "1"
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss_bytes(child.pid))
        except OSError:
            pass
        time.sleep(SAMPLE_EVERY)
    out, err = child.communicate()
    if child.returncode != 0:
        raise Failed(child.returncode, peak / 2**30, err.strip()[-2000:])
    row = {"seconds": round(time.perf_counter() - started, 1), "peak_gb": round(peak / 2**30, 2)}
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if last.startswith("{"):
        row.update(json.loads(last))
    return row


_LINK = tempfile.mkdtemp(prefix="footprint-")


def _importable() -> str:
    """A folder where `headstart` is this checkout (the repository root is the package)."""
    link = Path(_LINK) / "headstart"
    if not link.exists():
        link.symlink_to(REPO)
    return _LINK


def export(backbone: str, baseline: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        return measured(EXPORT, [backbone], baseline, cache)


def demo(baseline: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        return measured(COMMAND, ["demo", out, "--weights", "random"], baseline, cache)


def train_cnn(baseline: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        images = Path(work) / "demo"
        measured(COMMAND, ["demo", str(images), "--weights", "random"], False, cache)
        return measured(
            COMMAND,
            [
                "train-cnn", str(images / "images"), "-o", str(Path(work) / "cnn"),
                "--arch", "inception", "--weights", "random", "--image-size", "75",
                "--epochs", "2", "--fine-tune-layers", "0",
            ],
            baseline,
            cache,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="export,demo,train-cnn", help="comma-separated")
    parser.add_argument("--backbones", nargs="*", default=["inception_v3"])
    parser.add_argument("--all", action="store_true", help="export: every listed backbone")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", type=Path, help="also write each row, as JSON lines")
    args = parser.parse_args()
    if args.all:
        sys.path.insert(0, _importable())
        from headstart.extractor.applications import APPLICATIONS

        args.backbones = list(APPLICATIONS)
    measures = []
    for name in args.only.split(","):
        if name == "export":
            measures += [(f"export {b}", lambda bl, b=b: export(b, bl)) for b in args.backbones]
        elif name == "demo":
            measures.append(("headstart demo", demo))
        elif name == "train-cnn":
            measures.append(("train-cnn --arch inception", train_cnn))
        else:
            parser.error(f"--only: {name!r} is not one of export, demo, train-cnn")
    for label, measure in measures:
        try:
            ours = measure(False)
        except Failed as failure:
            print(f"{label:<34} failed: {failure}", flush=True)
            _write(args.out, {"measure": label, **failure.row})
            continue
        line = f"{label:<34} {ours['seconds']:>6.1f} s {ours['peak_gb']:>5.2f} GB"
        row = {"measure": label, **ours}
        if not args.no_baseline:
            try:
                base = measure(True)
            except Failed as failure:
                print(f"{line}   baseline failed: {failure}", flush=True)
                _write(args.out, {**row, "baseline": failure.row})
                continue
            row["baseline"] = base
            line += (
                f"   baseline {base['seconds']:>6.1f} s {base['peak_gb']:>5.2f} GB   "
                f"ratio {ours['seconds'] / base['seconds']:.2f}x time "
                f"{ours['peak_gb'] / base['peak_gb']:.2f}x memory"
            )
            if "onnx_sha256" in ours:
                same = ours["onnx_sha256"] == base["onnx_sha256"]
                line += "   same ONNX" if same else "   ONNX DIFFERS"
        print(line, flush=True)
        _write(args.out, row)


def _write(out: Path | None, row: dict) -> None:
    if out:
        with out.open("a") as rows:
            rows.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
