"""The Keras applications `embed --backbone NAME` offers, measured on this machine.

    python bench/backbones.py [NAME ...] [--all] [--images 32] [--out results.jsonl]
                              [--timeout 1800]

For each backbone (those named, else a representative set; with --all, then every other
listed one), with seeded random weights at its own default image size, in a fresh process:
  - the export through headstart (ensure_backbone): seconds, and the process's peak RSS;
  - parity: the features of the cached ONNX model on uint8 photos against the Keras
    pipeline's (its own preprocess_input, then predict), as the largest relative error of a
    row; where random weights make the network chaotic (Keras' own features move by more
    than 1e-3 on a 1e-4 nudge of the pixels), on the same network with its residual
    branches tamed, exported again through --weights FILE; and whether the export runs at
    the smallest size the catalogue gives;
  - the feature dim and parameter count (checked against the catalogue);
  - ONNX Runtime alone on pre-decoded batches of embed's default size (16 up to 299 px, as
    many pixels at larger sizes), with embed's session settings (img/s),
    and int8's feature cosine to fp32; the child's peak RSS over all of these;
and then, for those named (the representative set with --all), `headstart embed` end to
end on --images photos (img/s, a fresh process, model cached). Ratios are to inception_v3's,
the default, measured in the same run. A backbone that fails any step is printed with the
reason, as unsupported. Photos are random crops of scikit-learn's two sample photos; nothing
is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from headstart.extractor.applications import APPLICATIONS  # noqa: E402

REPRESENTATIVE = [
    "inception_v3", "resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
    "efficientnet_v2_s", "convnext_tiny", "xception",
]  # fmt: skip
PARITY_PHOTOS = 4
ORT_SECONDS = 8  # at least this long, after one warm-up call
CHAOTIC = 1e-3  # Keras' own features move further than this on a nudge of the pixels


def photos(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` uint8 RGB crops of scikit-learn's sample photos, resized to `size`."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sources = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        photo = sources[index % len(sources)]
        top, left = rng.integers(0, 100), rng.integers(0, 200)
        crop = Image.fromarray(photo[top : top + 320, left : left + 420])
        out.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    return np.stack(out)


def keras_features(model, module, pixels: np.ndarray, nudge: float = 0.0) -> np.ndarray:
    """The Keras pipeline's features: the application's own preprocess_input, then predict."""
    return model.predict(module.preprocess_input(pixels.astype(np.float32) + nudge), verbose=0)


def largest_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest relative error of a row of `got` against `want`."""
    return float((np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)).max())


def tame_residual_branches(model, factor: float = 0.5) -> int:
    """Scale by `factor` the scale (gamma) of each BatchNormalization whose output a residual
    Add takes; returns how many. The graph stays the same, only weights change."""
    import keras

    tamed = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Add):
            continue
        for tensor in layer.input:
            source = tensor._keras_history.operation
            while isinstance(source, keras.layers.Dropout):  # stochastic depth: identity here
                source = source.input._keras_history.operation
            if isinstance(source, keras.layers.BatchNormalization) and source.scale:
                tamed.add(source.name)
    for name in tamed:
        layer = model.get_layer(name)
        layer.gamma.assign(layer.gamma.numpy() * factor)
    return len(tamed)


def measure_one(name: str) -> dict:
    """Everything but the end-to-end run, for one backbone (run in a child process)."""
    import importlib

    import onnxruntime as ort

    from headstart.extractor.backbone import (
        WeightsSpec,
        build_keras_backbone,
        ensure_backbone,
        parse_weights,
    )
    from headstart.extractor.runtime import BackboneSession
    from headstart.extractor.spec import in_precision
    from headstart.extractor.stream import default_batch_size

    app = APPLICATIONS[name]
    row: dict = {"name": name, "size": app.size}
    _phase("export")
    started = time.perf_counter()
    cached = ensure_backbone(WeightsSpec("random", 0), name)
    row["export_s"] = round(time.perf_counter() - started, 1)
    row["export_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    _phase("parity")
    model = build_keras_backbone(WeightsSpec("random", 0), backbone=name)
    row["dim"], row["params"] = int(model.output.shape[-1]), int(model.count_params())
    from headstart.extractor.applications import MEASURED

    row["catalogue_agrees"] = MEASURED.get(name, (0, 0, 0))[::2] == (row["dim"], row["params"])

    session = ort.InferenceSession(str(cached.onnx_path), providers=["CPUExecutionProvider"])
    pixels = photos(PARITY_PHOTOS, app.size)
    ours = session.run(None, {"pixels": pixels})[0]
    module = importlib.import_module(f"keras.applications.{app.module}")
    reference = keras_features(model, module, pixels)
    row["parity_max_rel"] = largest_relative_error(ours, reference)
    # random weights can make a deep network chaotic: Keras itself then moves far on a
    # nudge of 1e-4 (of 255) to the pixels, and any two float orders of the same arithmetic
    # (Keras', ONNX Runtime's) disagree as far. Parity is then measured again on the same
    # network with its residual branches tamed (their last BatchNormalization's scale
    # halved), through embed's own --weights FILE path.
    nudged = keras_features(model, module, pixels, nudge=1e-4)
    row["keras_sensitivity"] = largest_relative_error(nudged, reference)
    if row["keras_sensitivity"] > CHAOTIC:
        _phase("parity on tamed weights")
        row["parity_random_weights"] = row["parity_max_rel"]
        row["tamed_layers"] = tame_residual_branches(model)
        weights_file = Path(tempfile.mkdtemp()) / f"{name}_tamed.weights.h5"
        model.save_weights(weights_file)
        tamed = ensure_backbone(parse_weights(str(weights_file)), name)
        tamed_session = ort.InferenceSession(
            str(tamed.onnx_path), providers=["CPUExecutionProvider"]
        )
        reference = keras_features(model, module, pixels)
        row["parity_max_rel"] = largest_relative_error(
            tamed_session.run(None, {"pixels": pixels})[0], reference
        )
    # random weights can also saturate a network: identical features of different photos
    # would make the parity above say nothing
    row["features_vary"] = bool(np.ptp(reference, axis=0).max() > 1e-6 * np.abs(reference).max())
    if not app.fixed_size and name in MEASURED:
        small = photos(2, app.min_size)
        row["runs_at_min_size"] = session.run(None, {"pixels": small})[0].shape == (2, app.dim)

    _phase("ONNX Runtime alone")
    row["batch"] = default_batch_size("cpu", app.size)  # embed's: 16 up to 299 px, then fewer
    batch = photos(row["batch"], app.size, seed=1)
    alone = BackboneSession(cached.onnx_path, "cpu")  # embed's own session settings
    alone.run(batch)  # warm-up
    started, runs = time.perf_counter(), 0
    while runs < 2 or time.perf_counter() - started < ORT_SECONDS:
        alone.run(batch)
        runs += 1
    row["ort_img_s"] = round(runs * len(batch) / (time.perf_counter() - started), 2)

    _phase("int8 copy")
    int8 = in_precision(cached, "int8")
    quantized = ort.InferenceSession(str(int8.onnx_path), providers=["CPUExecutionProvider"])
    got, want = quantized.run(None, {"pixels": batch})[0], session.run(None, {"pixels": batch})[0]
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    row["int8_cosine_min"] = round(float(cosine.min()), 5)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # all phases
    return row


def _phase(what: str) -> None:
    """Said on stderr as the child goes: a child that is killed is known by its last."""
    print(f"phase: {what}", file=sys.stderr, flush=True)


def end_to_end(name: str, cache: str, images: Path, store: Path) -> float:
    """img/s of `headstart embed` on `images` in a fresh process, the model cached."""
    command = [sys.executable, "-m", "headstart", "embed", str(images), "-o", str(store),
               "--backbone", name, "--weights", "random"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HEADSTART_CACHE": cache}
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    count = sum(1 for _ in images.rglob("*.jpg"))
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="backbones [default: a representative set]")
    parser.add_argument("--all", action="store_true", help="every listed backbone")
    parser.add_argument("--images", type=int, default=32, help="photos for end to end")
    parser.add_argument("--out", type=Path, help="also write each row, as JSON lines")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per backbone")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the embed runs")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one)))
        return
    names = list(args.names or REPRESENTATIVE)
    if args.all:  # the rest after those named, in the catalogue's order
        names += [name for name in APPLICATIONS if name not in names]
    unknown = [name for name in names if name not in APPLICATIONS]
    if unknown:
        parser.error(f"unknown backbones {unknown}; choose from {', '.join(APPLICATIONS)}")
    if "inception_v3" not in names:
        names.insert(0, "inception_v3")  # the ratios' baseline
    end_to_end_names = set() if args.no_end_to_end else set(REPRESENTATIVE if args.all else names)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        cache = str(Path(work) / "cache")
        for name in names:
            try:
                child = subprocess.run(
                    [sys.executable, __file__, "--one", name],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "HEADSTART_CACHE": cache},
                    timeout=args.timeout,
                )
            except subprocess.TimeoutExpired:
                rows.append({"name": name, "not_measured": f"over {args.timeout} s"})
                print(f"{name:<22} not measured: over {args.timeout} s", flush=True)
                continue
            if child.returncode != 0:  # a signal: the out-of-memory killer's SIGKILL, say
                phases = [line for line in child.stderr.splitlines() if line.startswith("phase:")]
                during = f" during {phases[-1][7:]}" if phases else ""
                killed = f"killed by signal {-child.returncode}{during}"
                said = killed if child.returncode < 0 else _last_words(child.stderr)
                row = {"name": name, "unsupported": said[:300]}
            else:
                row = json.loads(child.stdout.strip().splitlines()[-1])
                if name in end_to_end_names:
                    row["end_to_end_img_s"] = _end_to_end_row(name, cache, work, args.images)
            rows.append(row)
            print(_line(row, rows[0]), flush=True)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")


def _last_words(stderr: str) -> str:
    """The child's last line that is not TensorFlow's start-up logging."""
    lines = [
        line
        for line in stderr.strip().splitlines()
        if not line.startswith(("I0000", "E0000", "W0000", "WARNING: All log", "phase:"))
    ]
    return lines[-1] if lines else "no output"


def _end_to_end_row(name: str, cache: str, work: str, count: int) -> float | str:
    from PIL import Image

    size = APPLICATIONS[name].size
    images = Path(work) / f"photos-{name}"
    (images / "all").mkdir(parents=True)
    for index, photo in enumerate(photos(count, max(size, 320), seed=2)):
        Image.fromarray(photo).save(images / "all" / f"{index}.jpg", quality=90)
    try:
        return round(end_to_end(name, cache, images, Path(work) / f"store-{name}"), 2)
    except RuntimeError as error:
        return f"failed: {error}"


def _line(row: dict, baseline: dict) -> str:
    if "unsupported" in row:
        return f"{row['name']:<22} unsupported: {row['unsupported']}"
    ratio = row["ort_img_s"] / baseline["ort_img_s"] if "ort_img_s" in baseline else float("nan")
    e2e = row.get("end_to_end_img_s", "-")
    return (
        f"{row['name']:<22} dim {row['dim']:>5}  size {row['size']:>3}  export "
        f"{row['export_s']:>6.1f} s {row['export_peak_rss_mb']:>6} MB  parity "
        f"{row['parity_max_rel']:.1e}{' (tamed)' if 'tamed_layers' in row else ''}  "
        f"ORT {row['ort_img_s']:>7.2f} img/s ({ratio:.2f}x "
        f"inception_v3)  end to end {e2e} img/s  int8 cosine {row['int8_cosine_min']}  "
        f"catalogue {'ok' if row['catalogue_agrees'] else 'DIFFERS'}"
        + ("" if row.get("runs_at_min_size", True) else "  FAILS AT MIN SIZE")
        + ("" if row.get("features_vary", True) else "  FEATURES DO NOT VARY (parity vacuous)")
    )


if __name__ == "__main__":
    main()
