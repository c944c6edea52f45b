"""Stores bigger than memory: peak memory, time and accuracy of train and predict as a store
grows from 10 k to 1 M rows, and what --store-dtype float16 changes (on bench/cnn_defaults'
digits and photos).

    python bench/big_store.py                       # 10k, 100k and 1M rows (about an hour)
    python bench/big_store.py --sizes 10000 100000  # quicker
    python bench/big_store.py --work /data/bench    # keep the stores for the next run

Each store is grown from a real small store (embedded here from sample images with random
weights: InceptionV3 at 75 px, 2,048 features) with its schema and fingerprint: 10 classes
whose features are drawn around a centre per class (learnable, not trivially), written class
after class in parts of 1,000 rows as embed writes a folder. Every command runs in its own
process; its peak memory (the kernel's maxrss of that child) is compared with the same
command on a tiny store of the same kind (20 rows), the baseline of a process that has
loaded its libraries. The budget is the default (--memory-budget 1GiB): a 10 k-row store
trains in memory, bigger ones stream.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn_defaults import make_digits, make_photos  # noqa: E402

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.samples import make_sample_images  # noqa: E402

CLASSES, ROWS_PER_PART, SIGNAL = 10, 1000, 0.08
MAKERS = {"digits": make_digits, "photos": make_photos}
MLP = ["--epochs", "2", "--batch-size", "256"]  # two epochs: memory and rows/s, not accuracy
COMMANDS = {
    "train logreg": lambda store, out: ["train", store, "-o", out / "logreg", "--head", "logreg"],
    "train mlp": lambda store, out: ["train", store, "-o", out / "mlp", "--head", "mlp", *MLP],
    "predict": lambda store, out: ["predict", out / "logreg", store, "-o", out / "predictions.csv"],
}


def real_store(work: Path) -> Path:
    """A small store embedded from sample images: the schema and fingerprint to grow."""
    images, store = work / "images", work / "real-float32"
    if not images.exists():
        make_sample_images(images, classes=3, per_class=60, size_range=(60, 140), seed=0)
    if not store.exists():
        embed(images, store, weights="random", image_size=75)
    return store


def grow(template: Path, rows: int, out: Path, seed: int = 0) -> Path:
    """A store of `rows` synthetic rows with `template`'s schema and fingerprint."""
    if (out / "_headstart.json").exists():
        return out  # kept from an earlier run (--work)
    schema = pq.read_schema(next(template.glob("part-*.parquet")))
    dim = schema.field("features").type.list_size
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, dim), dtype=np.float32)
    out.mkdir(parents=True)
    labels = np.arange(rows) * CLASSES // rows  # class after class, as a folder is listed
    for number, start in enumerate(range(0, rows, ROWS_PER_PART), 1):
        y = labels[start : start + ROWS_PER_PART]
        noise = rng.standard_normal((len(y), dim), dtype=np.float32)
        X = np.maximum(SIGNAL * centres[y] + noise, 0).astype(np.float32)
        paths = [f"c{label}/{start + i:07d}.jpg" for i, label in enumerate(y)]
        table = pa.table(
            {
                "path": paths,
                "label": [f"c{label}" for label in y],
                "sha256": [f"{start + i:064x}" for i in range(len(y))],
                "width": np.full(len(y), 75, np.int32),
                "height": np.full(len(y), 75, np.int32),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), dim),
            },
            schema=schema,
        )
        pq.write_table(table, out / f"part-{number:07d}.parquet")
    summary = json.loads((template / "_headstart.json").read_text())
    summary.pop("last_run", None)
    summary.pop("images_dir", None)
    (out / "_headstart.json").write_text(json.dumps(summary))
    return out


def measured(arguments: list) -> tuple[float, float, str]:
    """Peak RSS (bytes), seconds and output of one headstart command in its own process:
    the peak is the kernel's, from wait4 (which Popen.wait would take first)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "headstart", *map(str, arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    chunks = []
    while chunk := process.stdout.read(65536):
        chunks.append(chunk)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    output = b"".join(chunks).decode(errors="replace")
    if process.returncode:
        raise SystemExit(f"headstart {' '.join(map(str, arguments))} failed:\n{output[-3000:]}")
    return usage.ru_maxrss * 1024, seconds, output


def accuracy_of(name: str, out: Path) -> float | None:
    if name.startswith("train"):
        head = json.loads((out / name.split()[1] / "head.json").read_text())
        return head["metrics"]["val_accuracy"]
    metrics = out / "predictions_report" / "metrics.json"
    return json.loads(metrics.read_text())["accuracy"] if metrics.exists() else None


def float16_effect(work: Path, name: str) -> dict:
    """One image set (bench/cnn_defaults' digits or photos) embedded into a float32 and a
    float16 store: the features' cosine, the stores' sizes, and the validation accuracy of
    the logreg head trained on each (same images, same split)."""
    images = work / f"{name}-images"
    if not images.exists():
        MAKERS[name](images, work / f"{name}-test-images")
    result, features = {}, {}
    for dtype in ("float32", "float16"):
        store = work / f"{name}-{dtype}"
        if not store.exists():
            embed(images, store, weights="random", image_size=75, store_dtype=dtype)
        table = pq.read_table(list(store.glob("part-*.parquet"))).sort_by("path")
        flat = table["features"].combine_chunks().flatten()
        features[dtype] = np.asarray(flat, np.float32).reshape(table.num_rows, -1)
        measured(["train", store, "-o", work / f"{name}-head-{dtype}", "--head", "logreg"])
        head = json.loads((work / f"{name}-head-{dtype}" / "head.json").read_text())
        size = sum(part.stat().st_size for part in store.glob("part-*.parquet"))
        result[dtype] = {"bytes": size, "val_accuracy": head["metrics"]["val_accuracy"]}
    a, b = features["float32"], features["float16"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"images": len(a), "min_cosine": float(cosine.min()), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work", type=Path, help="where the stores are made (and kept)")
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--no-float16", action="store_true", help="skip the float16 part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        template = real_store(work)
        tiny = grow(template, 2 * CLASSES, work / "tiny")
        results = []
        for size in args.sizes:
            store = grow(template, size, work / f"store-{size}")
            out = work / f"out-{size}"
            out.mkdir(exist_ok=True)
            for name in args.commands:
                baseline_out = work / f"baseline-{size}"
                baseline_out.mkdir(exist_ok=True)
                if name == "predict":  # the head trained on this store, on the tiny store
                    base_args = COMMANDS[name](tiny, out)
                    base_args[-1] = baseline_out / "predictions.csv"
                else:
                    base_args = COMMANDS[name](tiny, baseline_out)
                base_peak, _, _ = measured(base_args)
                peak, seconds, output = measured(COMMANDS[name](store, out))
                row = {
                    "rows": size,
                    "command": name,
                    "peak_over_baseline": peak - base_peak,
                    "peak": peak,
                    "baseline": base_peak,
                    "seconds": seconds,
                    "rows_per_s": size / seconds,
                    "accuracy": accuracy_of(name, out),
                    "streamed": "streaming them" in output,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            started = time.monotonic()
            measured(["info", store])
            info_seconds = time.monotonic() - started
            print(json.dumps({"rows": size, "command": "info", "seconds": info_seconds}))
        print()
        print(f"{'rows':>9}  {'command':<13} {'peak over baseline':>18} {'seconds':>8} "
              f"{'rows/s':>8} {'accuracy':>8}  path")  # fmt: skip
        for row in results:
            accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            path = "streamed" if row["streamed"] else "in memory"
            if row["command"] == "predict":
                path = "streamed"
            print(f"{row['rows']:>9,}  {row['command']:<13} "
                  f"{row['peak_over_baseline'] / 2**20:>14,.0f} MiB {row['seconds']:>8.1f} "
                  f"{row['rows_per_s']:>8,.0f} {accuracy:>8}  {path}")  # fmt: skip
        _acceptance(results)
        print()
        if args.no_float16:
            return
        print("float16 store vs float32 (InceptionV3 random weights, 75 px):")
        for name in MAKERS:
            print(name, json.dumps(float16_effect(work, name)), flush=True)


def _acceptance(results: list[dict]) -> None:
    """Peak within ±15 % from 100 k to 1 M rows, and under 2 GB at 1 M."""
    by = {(r["rows"], r["command"]): r["peak_over_baseline"] for r in results}
    for command in COMMANDS:
        sizes = sorted(rows for rows, name in by if name == command and rows >= 100_000)
        if len(sizes) < 2:
            continue
        low, high = by[(sizes[0], command)], by[(sizes[-1], command)]
        ratio = high / low if low > 0 else float("inf")
        print(f"{command}: peak at {sizes[-1]:,} rows / at {sizes[0]:,} rows = {ratio:.2f} "
              f"({'within' if abs(ratio - 1) <= 0.15 else 'NOT within'} ±15 %); "
              f"{high / 2**30:.2f} GiB at {sizes[-1]:,} rows "
              f"({'under' if high < 2e9 else 'NOT under'} 2 GB)")  # fmt: skip


if __name__ == "__main__":
    main()
