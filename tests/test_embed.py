"""`headstart embed` end to end: the store's format, bad inputs, settings errors, incremental
re-runs, the fingerprint guard, the lock, and resuming after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

import corpus
from headstart.extractor.store import FeatureStore
from helpers import IMAGE_SIZE, run_cli_in_subprocess

REPO = Path(__file__).resolve().parents[1]


def read_store(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("path").reset_index(drop=True)


def last_error(result) -> str:
    """The final line on stderr, where click prints `Error: ...` (log lines may precede it)."""
    return result.stderr.splitlines()[-1] + "\n"


def read_errors(out: Path) -> dict[str, str]:
    with open(out / "_errors.csv", newline="") as handle:
        return {row["path"]: row["error"] for row in csv.DictReader(handle)}


def test_store_format(run_embed, sample_images, tmp_path):
    Image.fromarray(corpus.gradient(90, 70)).save(sample_images / "unlabelled.png")
    out = tmp_path / "features"

    result = run_embed(sample_images, out)

    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("embedded 13, skipped 0, already present 0")
    dataset = ds.dataset(out, format="parquet")
    assert dataset.schema.names == ["path", "label", "sha256", "width", "height", "features"]
    assert [dataset.schema.field(n).type for n in dataset.schema.names] == [
        pa.string(),
        pa.string(),
        pa.string(),
        pa.int32(),
        pa.int32(),
        pa.list_(pa.float32(), 2048),
    ]
    summary = json.loads((out / "_headstart.json").read_text())
    assert json.loads(dataset.schema.metadata[b"headstart"]) == summary["fingerprint"]
    assert summary["fingerprint"]["image_size"] == IMAGE_SIZE
    assert summary["last_run"]["embedded"] == 13

    frame = read_store(out)
    files = sorted(
        p.relative_to(sample_images).as_posix() for p in sample_images.rglob("*") if p.is_file()
    )
    assert frame["path"].tolist() == files
    labels = dict(zip(frame["path"], frame["label"]))
    assert pd.isna(labels["unlabelled.png"])  # a null label: no class folder
    assert labels["circle/circle_0000.jpg"] == "circle"
    assert labels["square/square_0003.png"] == "square"
    row = frame[frame["path"] == "unlabelled.png"].iloc[0]
    assert (row["width"], row["height"]) == (90, 70)
    assert np.isfinite(np.stack(frame["features"])).all()
    assert read_errors(out) == {}
    assert not list(out.glob("_tmp-*"))


def test_bad_inputs_are_listed_and_the_run_goes_on(run_embed, sample_images, tmp_path):
    expected = corpus.write_bad_inputs(sample_images)
    corpus.png_16bit(sample_images / "odd" / "deep.png") if (
        sample_images / "odd"
    ).mkdir() is None else None
    corpus.animated_gif(sample_images / "odd" / "anim.gif")
    corpus.jpeg_with_orientation(sample_images / "odd" / "rotated.jpg", corpus.gradient(60, 40), 6)
    (sample_images / "empty_class").mkdir()
    out = tmp_path / "features"

    result = run_embed(sample_images, out)

    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("embedded 15, skipped 6, already present 0")
    errors = read_errors(out)
    assert sorted(errors) == sorted(expected)
    for path, reason in expected.items():
        assert reason in errors[path]
        assert f"skipped {path}: " in result.output
    assert len(read_store(out)) == 15
    assert not (set(read_store(out)["path"]) & set(expected))

    strict = run_embed(sample_images, out, "--strict")
    assert strict.exit_code == 3
    assert strict.output.strip().endswith("embedded 0, skipped 6, already present 15")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda images, out: ["--image-size", "74"],
            "Error: --image-size 74 is too small; InceptionV3 needs at least 75\n",
        ),
        (
            lambda images, out: ["--batch-size", "0"],
            "Error: --batch-size must be at least 1, got 0\n",
        ),
        (
            lambda images, out: ["--weights", str(images / "missing.h5")],
            "Error: --weights {images}/missing.h5: no such file; use imagenet, random, or the "
            "path of a Keras weights file\n",
        ),
    ],
)
def test_bad_settings_fail_before_any_work(run_embed, sample_images, tmp_path, change, message):
    out = tmp_path / "features"
    result = run_embed(sample_images, out, *change(sample_images, out))
    assert result.exit_code == 1
    assert last_error(result) == message.format(images=sample_images)
    assert not out.exists()


def test_missing_or_empty_input_and_unknown_device(run_embed, tmp_path):
    out = tmp_path / "features"
    missing = run_embed(tmp_path / "nope", out)
    assert missing.exit_code == 1
    assert last_error(missing) == f"Error: {tmp_path / 'nope'} does not exist\n"
    (tmp_path / "empty" / "class").mkdir(parents=True)
    empty = run_embed(tmp_path / "empty", out)
    assert empty.exit_code == 1
    assert last_error(empty) == f"Error: no images found in {tmp_path / 'empty'} (no files)\n"
    (tmp_path / "empty" / "class" / "notes.txt").write_text("hello")
    text_only = run_embed(tmp_path / "empty", out)
    assert last_error(text_only) == (
        f"Error: no images found in {tmp_path / 'empty'} (1 file, none an image Pillow reads, "
        "e.g. class/notes.txt)\n"
    )
    device = run_embed(tmp_path / "empty", out, "--device", "gpu")
    assert device.exit_code == 2  # a command-line usage error, as click reports them
    assert (
        "Error: Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda', "
        "'tensorrt'." in device.output
    )
    assert not out.exists()


def test_asking_for_a_gpu_provider_that_cannot_run_is_an_error(run_embed, sample_images, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        expected = "this onnxruntime has no CUDAExecutionProvider"
    else:  # onnxruntime-gpu on a machine without a usable GPU: the session falls back
        expected = "ONNX Runtime could not start CUDAExecutionProvider on this machine"
    from headstart.extractor.providers import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("this machine has a GPU: --device cuda is expected to work here")
    result = run_embed(sample_images, tmp_path / "features", "--device", "cuda")
    assert result.exit_code == 1
    assert last_error(result).startswith("Error: --device cuda: ")
    assert expected in last_error(result)
    assert not list((tmp_path / "features").glob("part-*"))


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted(
    run_embed, sample_images, tmp_path
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    before = read_store(out).set_index("path")

    Image.fromarray(corpus.gradient(80, 80, seed=7)).save(sample_images / "circle" / "new.png")
    Image.fromarray(corpus.gradient(80, 80, seed=8)).save(
        sample_images / "circle" / "circle_0000.jpg"
    )  # same name, new content
    (sample_images / "square" / "square_0001.jpg").unlink()
    result = run_embed(sample_images, out)

    assert result.exit_code == 0, result.output
    assert "removed 2 rows of deleted or changed files" in result.output
    assert result.output.strip().endswith("embedded 2, skipped 0, already present 10")
    after = read_store(out).set_index("path")
    files = sorted(
        p.relative_to(sample_images).as_posix() for p in sample_images.rglob("*") if p.is_file()
    )
    assert after.index.tolist() == files
    import hashlib

    for path in files:
        assert (
            after.loc[path, "sha256"]
            == hashlib.sha256((sample_images / path).read_bytes()).hexdigest()
        )
    assert (
        after.loc["circle/circle_0000.jpg", "sha256"]
        != before.loc["circle/circle_0000.jpg", "sha256"]
    )
    unchanged = "circle/circle_0002.jpg"
    np.testing.assert_array_equal(
        after.loc[unchanged, "features"], before.loc[unchanged, "features"]
    )

    again = run_embed(sample_images, out)
    assert again.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert "removed" not in again.output


def test_another_extractor_is_refused_unless_overwrite(run_embed, sample_images, tmp_path):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    contents = {p.name: p.read_bytes() for p in out.iterdir()}

    refused = run_embed(sample_images, out, "--image-size", "80")
    assert refused.exit_code == 1
    assert last_error(refused) == (
        f"Error: {out} holds features of another extractor (image_size: {IMAGE_SIZE} (store) "
        "vs 80 (this run)). Use --overwrite to replace them, or choose another output folder\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == contents

    replaced = run_embed(sample_images, out, "--image-size", "80", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert replaced.output.strip().endswith("embedded 12, skipped 0, already present 0")
    assert json.loads((out / "_headstart.json").read_text())["fingerprint"]["image_size"] == 80
    assert len(read_store(out)) == 12


def test_a_second_run_on_the_same_store_is_refused(run_embed, sample_images, tmp_path):
    out = tmp_path / "features"
    with FeatureStore(out).locked():
        result = run_embed(sample_images, out)
    assert result.exit_code == 1
    assert last_error(result) == (
        f"Error: {out} is being written by another headstart run (pid {os.getpid()} on "
        f"{os.uname().nodename}); wait for it to finish or choose another output folder\n"
    )
    assert not list(out.glob("part-*"))
    assert run_embed(sample_images, out).exit_code == 0  # the lock went with its holder


def test_duplicates_left_by_a_killed_compaction_are_removed(run_embed, sample_images, tmp_path):
    out = tmp_path / "features"
    assert run_embed(sample_images, out, "--rows-per-part", "5").exit_code == 0
    # A run killed between renaming a rewritten part and deleting the old one leaves both;
    # one killed while writing leaves a temporary file.
    shutil.copy(out / "part-00001.parquet", out / "part-00007.parquet")
    leftover = out / "_headstart-tmp-0123456789ab-part-00008.parquet"
    leftover.write_bytes(b"half a part")
    os.utime(leftover, (time.time() - 60, time.time() - 60))  # a dead run's, not a new one's

    result = run_embed(sample_images, out)

    assert result.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert "removed 5 second copies of rows (left by a run killed while it compacted" in (
        result.output
    )
    assert "of deleted or changed files" not in result.output  # none was
    frame = read_store(out)
    assert frame["path"].is_unique and len(frame) == 12
    assert not list(out.glob("_headstart-tmp-*"))


def _embed_command(images: Path, out: Path, weights: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "headstart",
        "embed",
        str(images),
        "-o",
        str(out),
        "--weights",
        str(weights),
        "--image-size",
        str(IMAGE_SIZE),
        "--batch-size",
        "4",
        "--rows-per-part",
        "8",
        "--workers",
        "2",
    ]


def test_killed_runs_resume_to_the_same_rows(weights_file, tmp_path):
    from headstart.extractor.samples import make_sample_images

    images = make_sample_images(tmp_path / "images", classes=3, per_class=40, size_range=(60, 120))
    reference = tmp_path / "reference"
    subprocess.run(
        _embed_command(images, reference, weights_file), check=True, capture_output=True, cwd=REPO
    )

    out = tmp_path / "features"
    for parts_before_kill in (1, 4, 9):
        process = subprocess.Popen(
            _embed_command(images, out, weights_file),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < parts_before_kill:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = subprocess.run(
        _embed_command(images, out, weights_file), capture_output=True, text=True, cwd=REPO
    )
    assert finished.returncode == 0, finished.stderr
    assert "embedded" in finished.stdout and "already present" in finished.stdout

    expected, got = read_store(reference), read_store(out)
    assert got["path"].tolist() == expected["path"].tolist()
    assert got["sha256"].tolist() == expected["sha256"].tolist()
    np.testing.assert_allclose(
        np.stack(got["features"]), np.stack(expected["features"]), rtol=1e-5, atol=1e-7
    )
    assert not list(out.glob("_tmp-*"))


def test_a_second_run_does_not_import_tensorflow(weights_file, sample_images, tmp_path):
    result = run_cli_in_subprocess(
        "embed",
        sample_images,
        "-o",
        tmp_path / "f",
        "--weights",
        weights_file,
        "--image-size",
        IMAGE_SIZE,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 12, skipped 0, already present 0" in result.stdout
    assert "heavy modules imported: []" in result.stdout
    (sample_images / "circle" / "circle_0003.png").unlink()  # its row goes: a part rewritten
    again = run_cli_in_subprocess(
        "embed", sample_images, "-o", tmp_path / "f", "--weights", weights_file,
        "--image-size", IMAGE_SIZE,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "embedded 0, skipped 0, already present 11" in again.stdout
    assert "heavy modules imported: []" in again.stdout


def test_parts_are_valid_parquet_with_fingerprint(run_embed, sample_images, tmp_path):
    out = tmp_path / "features"
    run_embed(sample_images, out, "--rows-per-part", "5")
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == [
        "part-00001.parquet",
        "part-00002.parquet",
        "part-00003.parquet",
    ]
    fingerprint = json.loads((out / "_headstart.json").read_text())["fingerprint"]
    for part in parts:
        assert json.loads(pq.read_schema(part).metadata[b"headstart"]) == fingerprint


def test_imagenet_weights_unavailable_is_a_clear_error(tmp_path, sample_images, monkeypatch):
    from click.testing import CliRunner
    from keras.src.utils import file_utils

    from headstart.cli import main

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    out = tmp_path / "features"
    result = CliRunner().invoke(main, ["embed", str(sample_images), "-o", str(out)])
    assert result.exit_code == 1
    message = last_error(result)
    assert message.startswith("Error: could not get Keras' ImageNet weights for InceptionV3 ")
    assert "Name or service not known" in message
    assert "use --weights random" in message and "--weights PATH" in message
    assert not list(out.glob("part-*"))


def test_decoding_runs_ahead_of_the_model_by_a_bounded_window(tmp_path):
    from headstart.extractor.decode_pool import decoded_in_order
    from headstart.extractor.scan import ImageFile

    started = []
    images = [ImageFile(f"{i:04d}.jpg", None, tmp_path / f"{i:04d}.jpg") for i in range(500)]

    outcomes = decoded_in_order(images, started.append, workers=2, batch_size=16)
    order = []
    for consumed, (image, _) in enumerate(outcomes, start=1):
        order.append(image.path)
        assert len(started) - consumed <= 2 * 16  # never more than two batches ahead
        if consumed == 16:
            time.sleep(0.05)  # a slow model call: the workers fill the window, then wait
            assert len(started) - consumed >= 16  # ... but they did run ahead
    assert order == [image.path for image in images]  # in input order
