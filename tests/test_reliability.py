"""Reliability and safety, the hard way: mutated image bytes, kills at seeded moments, a full
disk, corrupt parts, untrusted model folders and awkward trees."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import corpus
from headstart.extractor.decode import DecodeError, load_image
from headstart.extractor.samples import make_sample_images
from headstart.extractor.scan import scan_images
from helpers import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")


def seed_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(corpus.gradient(48, 32))
    image.save(buffer, format=image_format)
    return buffer.getvalue()


SEEDS = {name: seed_bytes(name) for name in FORMATS}


@st.composite
def mutated_images(draw):
    """A valid image of some format with bytes flipped, inserted, deleted or cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(FORMATS))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:
            del data[position:]
    return bytes(data)


@settings(
    max_examples=int(os.environ.get("HEADSTART_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,  # a fixed sequence: CI is reproducible; set the env var for more
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=mutated_images())
def test_mutated_images_decode_or_fail_with_a_reason(data, tmp_path):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    try:
        decoded = load_image(path, 75)
    except DecodeError as error:
        assert str(error)  # a readable reason, never another exception
    else:
        assert decoded.pixels.shape == (75, 75, 3) and decoded.pixels.dtype == np.uint8


def test_embed_lists_every_mutated_file_as_a_row_or_an_error(run_embed, tmp_path):
    rng = np.random.default_rng(7)
    images = tmp_path / "images" / "fuzz"
    images.mkdir(parents=True)
    suffixes = {
        "JPEG": "jpg",
        "PNG": "png",
        "GIF": "gif",
        "WEBP": "webp",
        "TIFF": "tif",
        "BMP": "bmp",
    }
    for index in range(40):
        name = FORMATS[index % len(FORMATS)]
        data = bytearray(SEEDS[name])
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if index % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        (images / f"{index:02d}.{suffixes[name]}").write_bytes(bytes(data))

    out = tmp_path / "features"
    result = run_embed(tmp_path / "images", out)
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out)["path"].tolist() if list(out.glob("part-*")) else []
    errors = pd.read_csv(out / "_errors.csv")
    assert sorted(rows + errors["path"].tolist()) == sorted(
        f"fuzz/{p.name}" for p in images.iterdir()
    )
    assert errors["error"].str.len().min() > 0


def test_killed_at_twenty_seeded_moments_a_rerun_equals_an_uninterrupted_run(
    weights_file, tmp_path
):
    images = make_sample_images(tmp_path / "images", classes=3, per_class=30, size_range=(60, 120))
    files = sorted(images.rglob("*.jpg"))
    out = tmp_path / "features"
    rng = np.random.default_rng(20)
    command = [
        sys.executable, "-m", "headstart", "embed", str(images), "-o", str(out),
        "--weights", str(weights_file), "--image-size", str(IMAGE_SIZE), "--batch-size", "4",
        "--rows-per-part", "6",
    ]  # fmt: skip
    for kill in range(20):
        if kill % 5 == 4:  # between kills the folder changes: deletions and rewrites too
            files.pop(int(rng.integers(len(files)))).unlink()
            changed = files[int(rng.integers(len(files)))]
            Image.fromarray(corpus.gradient(70, 50, seed=kill)).save(changed, format="JPEG")
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(float(rng.uniform(0.3, 3.0)))  # start-up, decoding, inference, writing...
        process.send_signal(signal.SIGKILL)
        process.wait()

    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    reference = tmp_path / "reference"
    subprocess.run(command[:6] + [str(reference)] + command[7:], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip

    got = pd.read_parquet(out).sort_values("path", ignore_index=True)
    expected = pd.read_parquet(reference).sort_values("path", ignore_index=True)
    assert got["path"].tolist() == expected["path"].tolist() and got["path"].is_unique
    assert got["sha256"].tolist() == expected["sha256"].tolist()
    np.testing.assert_allclose(
        np.stack(got["features"]), np.stack(expected["features"]), rtol=1e-5, atol=1e-7
    )
    assert not list(out.glob("_tmp-*"))


def test_a_full_disk_gives_a_clear_error_and_no_partial_part(
    run_embed, sample_images, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    def no_space(table, where, *args, **kwargs):
        where.write(b"PAR1 half a part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", no_space)
    out = tmp_path / "features"
    result = run_embed(sample_images, out)
    assert result.exit_code == 1
    message = result.stderr.splitlines()[-1]
    assert message.startswith(
        f"Error: cannot write {out / 'part-00001.parquet'}: No space left on device; "
    )
    assert not out.exists()  # the run made the folder and could not fill it: nothing left


def test_a_truncated_part_is_named_and_repair_reembeds_exactly_its_rows(
    run_embed, sample_images, tmp_path
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out, "--rows-per-part", "4").exit_code == 0
    reference = pd.read_parquet(out).sort_values("path", ignore_index=True)
    from click.testing import CliRunner

    from headstart.cli import main

    assert (
        CliRunner().invoke(main, ["train", str(out), "-o", str(tmp_path / "head")]).exit_code == 0
    )
    part = out / "part-00002.parquet"
    lost = len(pd.read_parquet(part))
    part.write_bytes(part.read_bytes()[:200])

    refused = run_embed(sample_images, out)
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"Error: {part} is not a readable Parquet part (")
    assert "run embed again with --repair" in refused.stderr
    head = CliRunner().invoke(main, ["train", str(out), "-o", str(tmp_path / "head2")])
    assert head.exit_code == 1 and f"Error: {part} is not a readable Parquet part" in head.stderr
    predicted = CliRunner().invoke(
        main, ["predict", str(tmp_path / "head"), str(out), "-o", str(tmp_path / "p.csv")]
    )
    assert predicted.exit_code == 1
    assert f"Error: {part} is not a readable Parquet part" in predicted.stderr

    repaired = run_embed(sample_images, out, "--repair", "--rows-per-part", "4")
    assert repaired.exit_code == 0, repaired.output
    assert f"embedded {lost}, skipped 0, already present {12 - lost}" in repaired.output
    assert (out / "_corrupt-part-00002.parquet").is_file()
    got = pd.read_parquet(out).sort_values("path", ignore_index=True)
    assert got["path"].tolist() == reference["path"].tolist()
    np.testing.assert_allclose(
        np.stack(got["features"]), np.stack(reference["features"]), rtol=1e-5, atol=1e-7
    )


class _Trap:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_planted_as_model_onnx_is_refused_and_never_run(tmp_path):
    from click.testing import CliRunner

    from headstart.cli import main

    head = tmp_path / "head"
    head.mkdir()
    marker = tmp_path / "code-ran"
    (head / "model.onnx").write_bytes(pickle.dumps(_Trap(marker)))
    fingerprint = {"backbone": "inception_v3", "dim": 2048, "image_size": 75,
                   "weights": "random(seed=0)"}  # fmt: skip
    (head / "head.json").write_text(
        json.dumps({"kind": "logreg", "classes": ["a", "b"], "fingerprint": fingerprint})
    )
    features = tmp_path / "features.npy"
    result = CliRunner().invoke(main, ["export", str(head), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {head / 'model.onnx'} cannot run one batch of")
    assert "INVALID_PROTOBUF" in result.stderr
    assert not marker.exists() and not features.exists()


def test_a_keras_model_with_a_lambda_layer_is_refused_and_never_run(sample_images, tmp_path):
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((8, 8, 3), name="pixels")
    trap = str(marker)
    x = keras.layers.Lambda(lambda t, m=trap: t * 1.0 + 0 * len(open(m, "w").name))(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="probabilities")(x))
    marker.unlink(missing_ok=True)  # building the model called the lambda once
    folder = tmp_path / "cnn"
    folder.mkdir()
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(
        json.dumps({"input": {"image_size": 8, "color_mode": "rgb", "channels": 3}})
    )

    from click.testing import CliRunner

    from headstart.cli import main

    result = CliRunner().invoke(
        main, ["embed", str(sample_images), "-o", str(tmp_path / "f"), "--backbone", str(folder)]
    )
    assert result.exit_code == 1
    assert f"\nError: cannot use {folder.resolve() / 'model.keras'} as a" in "\n" + result.stderr
    assert "Lambda" in result.stderr and "safe_mode" in result.stderr
    assert not marker.exists()


# --- awkward trees -------------------------------------------------------------------------


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_links_out_of_the_folder_and_to_folders_are_followed_only_when_asked(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    _image(root / "a" / "inside.jpg")
    _image(outside / "far.jpg")
    _image(outside / "sub" / "deep.jpg")
    os.symlink(root / "a" / "inside.jpg", root / "a" / "alias.jpg")  # inside: an image
    os.symlink(outside / "far.jpg", root / "a" / "far.jpg")
    os.symlink(outside / "sub", root / "b")

    plain = scan_images(root)
    assert [i.path for i in plain.images] == ["a/alias.jpg", "a/inside.jpg"]
    assert [(r.path, r.reason) for r in plain.rejected] == [
        ("a/far.jpg", "symbolic link to a file outside IMAGES_DIR; not followed without "
         "--follow-links"),
        ("b/", "symbolic link to a folder; not followed without --follow-links"),
    ]  # fmt: skip
    followed = scan_images(root, follow_links=True)
    assert [(i.path, i.label) for i in followed.images] == [
        ("a/alias.jpg", "a"),
        ("a/far.jpg", "a"),
        ("a/inside.jpg", "a"),
        ("b/deep.jpg", "b"),
    ]
    assert followed.rejected == []


def test_a_symbolic_link_loop_is_skipped_not_followed_forever(tmp_path):
    root = tmp_path / "images"
    _image(root / "a" / "x.jpg")
    os.symlink(root, root / "a" / "back-to-root")
    os.symlink(root / "a", root / "a" / "self")
    result = scan_images(root, follow_links=True)
    assert [i.path for i in result.images] == ["a/x.jpg"]
    assert sorted(r.path for r in result.rejected) == ["a/back-to-root/", "a/self/"]
    assert all("already scanned" in r.reason for r in result.rejected)


def test_a_tree_deeper_than_pythons_recursion_limit(tmp_path):
    deep = tmp_path / "images" / "c"
    deep.mkdir(parents=True)
    for _ in range(1100):  # ~2.2 kB of path: under PATH_MAX
        deep = deep / "d"
        deep.mkdir()
    Image.new("RGB", (8, 8)).save(deep / "bottom.png")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default; the tree is deeper than that
    try:
        result = scan_images(tmp_path / "images")
    finally:
        sys.setrecursionlimit(limit)
    assert len(result.images) == 1 and result.images[0].label == "c"
    assert result.images[0].path.endswith("/d/bottom.png")
    (deep / "bottom.png").unlink()  # bottom-up: shutil.rmtree itself recurses too deep
    while deep != tmp_path:
        deep.rmdir()
        deep = deep.parent


def test_a_file_that_hangs_the_decoder_is_given_up_and_the_run_goes_on(
    run_embed, sample_images, tmp_path, monkeypatch
):
    import threading

    from headstart.extractor import decode, stream

    release, stuck_returned = threading.Event(), threading.Event()
    real_load = decode.load_image
    stuck = sorted(p.relative_to(sample_images).as_posix() for p in sample_images.rglob("*.*"))[3]

    def load_image(location, *args, **kwargs):
        if Path(location).relative_to(sample_images).as_posix() == stuck:
            release.wait(60)  # a decoder that never returns, as far as the run can tell
            stuck_returned.set()
        return real_load(location, *args, **kwargs)

    monkeypatch.setattr(decode, "load_image", load_image)
    monkeypatch.setattr(stream, "DECODE_TIMEOUT_S", 0.5)
    out = tmp_path / "features"
    try:
        result = run_embed(sample_images, out)
        assert not stuck_returned.is_set()  # the run finished without waiting for it
    finally:
        release.set()
    assert result.exit_code == 0, result.output
    assert "embedded 11, skipped 1, already present 0" in result.output
    errors = pd.read_csv(out / "_errors.csv")
    assert errors.values.tolist() == [[stuck, "decoding took longer than 0.5 s; skipped"]]
