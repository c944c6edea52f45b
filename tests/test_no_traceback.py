"""No traceback: every setting out of its range is one `Error:` line naming it, before any
work, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus import colour_images
from headstart.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


OUT_OF_RANGE = [
    (("embed", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("embed", "{images}", "-o", "{out}", "--image-size", 0),
     "--image-size 0 is too small; InceptionV3 needs at least 75"),
    (("embed", "{images}", "-o", "{out}", "--image-size", 4096),
     "--image-size must be from 1 to 2048, got 4096"),
    (("embed", "{images}", "-o", "{out}", "--workers", 0),
     "--workers must be from 1 to 256, got 0"),
    (("embed", "{images}", "-o", "{out}", "--workers", 100000),
     "--workers must be from 1 to 256, got 100000"),
    (("embed", "{images}", "-o", "{out}", "--views", 100000),
     "--views must be from 0 to 64, got 100000"),
    (("embed", "{images}", "-o", "{out}", "--rows-per-part", 0),
     "--rows-per-part must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--epochs", 0),
     "--epochs must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--hidden", 0),
     "--hidden must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--dropout", 1.5),
     "--dropout must be in [0, 1), got 1.5"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--lr", "nan"),
     "--lr must be in (0, 1], got nan"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--lr", 0),
     "--lr must be in (0, 1], got 0.0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--batch-size", 0),
     "--batch-size must be at least 1, got 0"),
    (("train", "{images}", "-o", "{out}", "--head", "mlp", "--patience", -1),
     "--patience must be at least 0, got -1"),
    (("train-cnn", "{images}", "-o", "{out}", "--image-size", 0),
     "--image-size must be from 1 to 2048, got 0"),
    (("train-cnn", "{images}", "-o", "{out}", "--seed", -1),
     "--seed must be from 0 to 4294967295, got -1"),
    (("train-cnn", "{images}", "-o", "{out}", "--lr", "inf"), "--lr must be in (0, 1], got inf"),
    (("train-cnn", "{images}", "-o", "{out}", "--l2", -1), "--l2 must be from 0 to 1, got -1.0"),
    (("train-cnn", "{images}", "-o", "{out}", "--workers", 0),
     "--workers must be from 1 to 256, got 0"),
    (("train-cnn", "{images}", "-o", "{out}", "--patience", -2),
     "--patience must be at least 0, got -2"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), OUT_OF_RANGE)
def test_settings_out_of_range_fail_at_once(tmp_path, args, message):
    images = colour_images(tmp_path / "images", per_class=3)
    out = tmp_path / "out"
    result = run(*(str(a).format(images=images, out=out) for a in args))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert not out.exists()


def test_the_readmes_four_readers_read_a_store(run_embed, sample_images, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    store = tmp_path / "features"
    assert run_embed(sample_images, store).exit_code == 0
    expected = sorted(pd.read_parquet(store)["path"])
    assert len(expected) == 12
    assert sorted(pq.read_table(store)["path"].to_pylist()) == expected
    assert sorted(pl.read_parquet(f"{store}/part-*.parquet")["path"].to_list()) == expected
    query = f"SELECT path FROM read_parquet('{store}/part-*.parquet') ORDER BY path"
    assert [row[0] for row in duckdb.sql(query).fetchall()] == expected


def test_csv_outputs_round_trip_any_file_name(run_embed, tmp_path, weights_file):
    import csv
    import io

    import pandas as pd
    import pyarrow.csv as pacsv

    images = colour_images(tmp_path / "images", per_class=3)
    odd = ["a,b.png", 'q"uote.png', "cr\rname.png", "lf\nname.png", "=1+2.png", " spaced .png"]
    for name in odd:
        (images / "red" / name).write_bytes((images / "red" / "000.png").read_bytes())
    (images / "blue" / "bad\r,\n.jpg").write_text("not an image")
    store = tmp_path / "features"
    assert run_embed(images, store).exit_code == 0
    assert run("train", store, "-o", tmp_path / "head").exit_code == 0
    for out in (tmp_path / "p.csv", tmp_path / "p.parquet"):
        result = run("predict", tmp_path / "head", images, "-o", out, "--weights", weights_file)
        assert result.exit_code == 0, result.output
    expected = pd.read_parquet(tmp_path / "p.parquet")["path"].tolist()
    assert {f"red/{name}" for name in odd} <= set(expected)
    bad = "blue/bad\r,\n.jpg"
    for written, paths in ((tmp_path / "p.csv", expected), (tmp_path / "p_errors.csv", [bad])):
        text = written.read_bytes().decode("utf-8")
        by_csv = [row[0] for row in csv.reader(io.StringIO(text, newline=""))][1:]
        by_pandas = pd.read_csv(io.StringIO(text, newline=""))["path"].tolist()
        options = pacsv.ParseOptions(newlines_in_values=True)
        by_arrow = pacsv.read_csv(written, parse_options=options)["path"].to_pylist()
        assert by_csv == by_pandas == by_arrow == paths


# main() run inside another program, failing as a full disk fails a Keras checkpoint
_EMBEDDED_MAIN = """
import errno, sys
import h5py
import headstart.heads.cnn.training as training
from click.testing import CliRunner
from headstart import cli
from headstart.extractor.safe_files import as_disk_error

def full_disk(*args, **kwargs):
    raise as_disk_error(OSError(errno.ENOSPC, "No space left on device"), "cnn", keras=True)

training.train_cnn = full_disk
result = CliRunner().invoke(cli.main, ["train-cnn", sys.argv[1], "-o", sys.argv[2]])
assert result.exit_code == 1 and "No space left on device" in result.output, result.output
assert sys.excepthook is sys.__excepthook__ and sys.unraisablehook is sys.__unraisablehook__
print("went on")
"""


def test_main_in_another_program_leaves_its_exit_alone(tmp_path):
    """Only the headstart process leaves early after a cut-short HDF5 write; a program that
    calls main() (a test runner, a notebook) keeps its hooks and its own exit code."""
    import subprocess
    import sys

    (tmp_path / "images").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _EMBEDDED_MAIN, tmp_path / "images", tmp_path / "cnn"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "went on"), result.stderr[-2000:]


SIGNALS = [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]

# The headstart command, signalled while it still loads its libraries
_SIGNAL_WHILE_IMPORTING = """
import builtins, os, signal, sys
from headstart import launch
real_import, signal_number = builtins.__import__, getattr(signal, sys.argv[1])

def importing(name, *args, **kwargs):
    if "extractor" in name.split("."):  # also `from .extractor.x import`
        os.kill(os.getpid(), signal_number)
    return real_import(name, *args, **kwargs)

builtins.__import__ = importing
sys.argv[1:] = ["--version"]
launch.run()
"""


@pytest.mark.parametrize(("signal_name", "code", "word"), SIGNALS)
def test_a_signal_while_the_libraries_load_is_one_line_too(signal_name, code, word):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_IMPORTING, signal_name],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (code, f"{word}: nothing was done\n")
    assert result.stdout == ""


@pytest.mark.parametrize(("signal_name", "code", "word"), SIGNALS)
def test_ctrl_c_and_sigterm_say_what_was_kept(tmp_path, weights_file, signal_name, code, word):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    images = colour_images(tmp_path / "images", per_class=40)
    store = tmp_path / "store"
    command = [
        sys.executable, "-m", "headstart", "embed", str(images), "-o", str(store),
        "--weights", str(weights_file), "--image-size", "75", "--rows-per-part", "5",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (store / "part-00002.parquet").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code
    assert stderr.splitlines()[-1] == (
        f"{word}: the parts written so far are kept; the same command goes on from there"
    )
    again = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0
    assert "already present 0" not in again.stdout and "embedded" in again.stdout


def test_the_confusion_picture_stays_bounded_up_to_1000_classes(tmp_path):
    import io
    import json

    import numpy as np
    from PIL import Image

    from headstart.extractor.safe_files import OutputFolder
    from headstart.heads.report import classification_metrics, write_report

    rng = np.random.default_rng(0)
    for count in (2, 31, 1000):
        classes = [f"class {i}" for i in range(count)]
        y = rng.integers(0, count, 3 * count)
        metrics = classification_metrics(y, rng.random((3 * count, count)), classes)
        with OutputFolder(tmp_path / str(count)) as report:
            write_report(report, metrics, "validation")
        picture = Image.open(
            io.BytesIO((tmp_path / str(count) / "confusion_matrix.png").read_bytes())
        )
        assert max(picture.size) <= 1700
        stored = json.loads((tmp_path / str(count) / "metrics.json").read_text())
        assert len(stored["confusion_matrix"]["matrix"]) == count  # the whole matrix is kept


def test_library_warnings_are_one_line_of_ours(made_store, tmp_path, monkeypatch):
    from PIL import Image

    images = colour_images(tmp_path / "images", per_class=3)
    Image.new("RGB", (40, 40)).save(images / "red" / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: a 'large' image
    result = run("predict", made_store / "head", images, "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "large.png is a very large image (0 megapixels); decoded, slowly" in result.stderr
    assert "DecompressionBomb" not in result.stderr and "Warning" not in result.stderr


def test_an_unlabelled_prediction_removes_the_stale_report(made_store, tmp_path):
    labelled = colour_images(tmp_path / "labelled", per_class=3)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "one.png").write_bytes((labelled / "red" / "000.png").read_bytes())
    out = tmp_path / "p.csv"
    assert run("predict", made_store / "head", labelled, "-o", out).exit_code == 0
    assert (tmp_path / "p_report" / "metrics.json").is_file()
    assert run("predict", made_store / "head", loose, "-o", out).exit_code == 0
    assert not (tmp_path / "p_report").exists()


@pytest.fixture(scope="module")
def made_store(tmp_path_factory, weights_file):
    """A store of colour images and a logreg head trained on it."""
    root = tmp_path_factory.mktemp("made")
    images = colour_images(root / "images", per_class=4)
    embed = ("embed", images, "-o", root / "store", "--weights", weights_file, "--image-size", 75)
    assert run(*embed).exit_code == 0
    assert run("train", root / "store", "-o", root / "head").exit_code == 0
    return root


# --- readers and writers ------------------------------------------------------------------


def test_a_reader_sees_a_whole_snapshot_while_a_compaction_replaces_parts(
    run_embed, sample_images, tmp_path, monkeypatch
):
    import shutil

    import pyarrow.parquet as pq

    import headstart.extractor.store as store_module
    from headstart.extractor.store import FeatureStore

    store = tmp_path / "features"
    assert run_embed(sample_images, store, "--rows-per-part", 4).exit_code == 0
    features = FeatureStore(store)
    fingerprint = features.fingerprint()
    expected = sorted(features.read_table(fingerprint)["path"].to_pylist())
    real_read = pq.read_table
    compacted = []

    def read_during_a_compaction(part, *args, **kwargs):
        if not compacted:  # a writer replaces part 2 by part 9 right after the listing
            shutil.copy(store / "part-00002.parquet", store / "part-00009.parquet")
            (store / "part-00002.parquet").unlink()
            compacted.append(True)
        return real_read(part, *args, **kwargs)

    monkeypatch.setattr(store_module.pq, "read_table", read_during_a_compaction)
    assert sorted(features.read_table(fingerprint)["path"].to_pylist()) == expected
    monkeypatch.setattr(store_module.pq, "read_table", real_read)

    # A compaction killed between writing the new part and removing the old one: each row
    # is read once, and predict and train see 12 images.
    shutil.copy(store / "part-00001.parquet", store / "part-00010.parquet")
    assert sorted(features.read_table(fingerprint)["path"].to_pylist()) == expected


def test_an_unfinished_store_is_announced(run_embed, sample_images, tmp_path):
    import json

    from headstart.extractor.store import FeatureStore

    store = tmp_path / "features"
    assert run_embed(sample_images, store).exit_code == 0
    summary = json.loads((store / "_headstart.json").read_text())
    summary["last_run"] = {"status": "running"}  # as a killed run leaves it
    (store / "_headstart.json").write_text(json.dumps(summary))
    info = run("info", store)
    assert "  status: interrupted" in info.output
    trained = run("train", store, "-o", tmp_path / "head")
    assert trained.exit_code == 0
    assert f"{store}: its last embed did not finish" in trained.stderr
    with FeatureStore(store).locked():  # a writer at work
        assert "  status: running" in run("info", store).output
        read = run("predict", tmp_path / "head", store, "-o", tmp_path / "p.csv")
        assert f"{store} is being written by an embed right now" in read.stderr


def test_a_second_train_into_the_same_head_is_refused(made_store, tmp_path):
    import fcntl

    head = tmp_path / "head"
    lock = tmp_path / "_headstart-lock-head"
    with open(lock, "w") as held:  # the first train holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        second = run("train", made_store / "store", "-o", head)
    assert second.exit_code == 1
    assert second.stderr == (
        f"Error: -o {head}: another train is writing it; wait for it to finish or choose another\n"
    )
    assert not head.exists()
    assert run("train", made_store / "store", "-o", head).exit_code == 0  # once it is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]


def test_a_store_of_another_extractor_is_refused_before_any_export(
    made_store, tmp_path, monkeypatch
):
    import json
    import shutil

    store = shutil.copytree(made_store / "store", tmp_path / "store")
    empty_cache = tmp_path / "cache"
    monkeypatch.setenv("HEADSTART_CACHE", str(empty_cache))
    result = run("embed", made_store / "images", "-o", store, "--weights", "random",
                 "--image-size", 80, "--precision", "int8")  # fmt: skip
    assert result.exit_code == 1
    fingerprint = json.loads((store / "_headstart.json").read_text())["fingerprint"]
    weights = f"{fingerprint['weights']} ({fingerprint['weights_sha256'][:12]}…)"
    assert result.stderr.splitlines()[-1] == (
        f"Error: {store} holds features of another extractor (image_size: 75 (store) vs 80 "
        f"(this run); precision: fp32 (store) vs int8 (this run); weights_sha256: {weights} "
        "(store) vs random(seed=0) (this run)). Use --overwrite to replace them, or choose "
        "another output folder"
    )
    assert not empty_cache.exists()  # nothing was exported


def test_cache_entries_are_checked_and_a_damaged_one_made_again(tmp_path, monkeypatch):
    import json

    import headstart.extractor.model_cache as model_cache
    from headstart.extractor.model_cache import (
        DamagedEntry,
        cached_export,
        read_entry,
        sha256_of_file,
    )

    exports = []

    def export(onnx_path):
        exports.append(onnx_path)
        onnx_path.write_bytes(b"network " * 1000)
        return {"backbone": "test", "onnx_sha256": sha256_of_file(onnx_path)}

    entry = tmp_path / "models" / "test-entry"
    cached = cached_export(entry, export, "a test network")
    assert len(exports) == 1 and (entry / "verified.json").is_file()
    assert cached_export(entry, export, "a test network") == cached  # trusted: not made again

    # A file that still has its verified size, mtime and inode is not hashed again.
    monkeypatch.setattr(model_cache, "sha256_of_file", lambda path: pytest.fail("hashed"))
    assert read_entry(entry) == cached
    monkeypatch.undo()

    with open(entry / "model.onnx", "r+b") as handle:  # truncated
        handle.truncate(100)
    with pytest.raises(DamagedEntry, match="is not the file that was exported"):
        read_entry(entry)
    assert cached_export(entry, export, "a test network").onnx_path.stat().st_size == 8000
    assert len(exports) == 2

    (entry / "manifest.json").write_text("{not json")
    with pytest.raises(DamagedEntry, match="manifest.json cannot be read"):
        read_entry(entry)
    cached_export(entry, export, "a test network")
    assert len(exports) == 3
    assert json.loads((entry / "manifest.json").read_text())["backbone"] == "test"


# --- the sweep: every command on read-only folders and files in the way -------------------


@pytest.fixture
def read_only(tmp_path):
    """`read_only(folder)`: make `folder` a read-only bind mount of itself (root is bound
    by a read-only mount as by nothing else), undone at the end."""
    import subprocess

    mounted = []

    def make(folder):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", folder, folder], check=True)
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", folder], check=True)


def one_clean_error(result, *fragments):
    """Exit 1 with one `Error:` line holding every fragment: no traceback, no other line."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def test_every_command_on_a_read_only_output_is_one_clean_error(made_store, tmp_path, read_only):
    frozen = read_only(tmp_path / "frozen")
    images, store, head = made_store / "images", made_store / "store", made_store / "head"
    for command in (
        ("embed", images, "-o", frozen / "store"),
        ("train", store, "-o", frozen / "head"),
        ("predict", head, store, "-o", frozen / "p.csv"),
        ("predict", head, images, "-o", frozen / "p.parquet"),
        ("export", head, "-o", frozen / "m.onnx"),
        ("train-cnn", images, "-o", frozen / "cnn", "--image-size", 32, "--epochs", 1),
        ("demo", frozen / "demo"),
    ):
        result = run(*command)
        one_clean_error(result, "Read-only file system", str(frozen))
        assert "_headstart-" not in result.output  # the folder named, not a lock inside it
    assert list(frozen.iterdir()) == []


def test_a_read_only_store_is_read_and_an_embed_into_it_refused(
    made_store, tmp_path, read_only, weights_file
):
    import shutil

    store = shutil.copytree(made_store / "store", tmp_path / "store")
    before = sorted(p.name for p in store.iterdir())
    read_only(store)
    assert run("train", store, "-o", tmp_path / "head").exit_code == 0
    assert run("predict", tmp_path / "head", store, "-o", tmp_path / "p.csv").exit_code == 0
    assert "status: complete" in run("info", store).output
    again = run("embed", made_store / "images", "-o", store, "--weights", weights_file,
                "--image-size", 75)  # fmt: skip
    one_clean_error(again, str(store), "Read-only file system")
    assert "_headstart" not in again.output  # the store named, not its lock file
    assert sorted(p.name for p in store.iterdir()) == before


def test_a_read_only_cache_is_used_and_an_export_into_it_refused(
    made_store, tmp_path, read_only, monkeypatch
):
    import os
    import shutil

    cache = shutil.copytree(os.environ["HEADSTART_CACHE"], tmp_path / "cache")
    read_only(cache)
    monkeypatch.setenv("HEADSTART_CACHE", str(cache))
    predicted = run("predict", made_store / "head", made_store / "images", "-o", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output  # the export is there: read only
    empty = read_only(tmp_path / "empty-cache")
    monkeypatch.setenv("HEADSTART_CACHE", str(empty))
    exported = run("embed", made_store / "images", "-o", tmp_path / "s", "--weights", "random",
                   "--image-size", 75, "--seed", 7)  # fmt: skip
    one_clean_error(exported, "Read-only file system", str(empty))
    assert not (tmp_path / "s").exists()


def test_a_file_given_as_an_output_folder_is_one_clean_error(made_store, tmp_path):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("mine")
    for command in (
        ("embed", made_store / "images", "-o", in_the_way),
        ("train", made_store / "store", "-o", in_the_way),
        ("train-cnn", made_store / "images", "-o", in_the_way, "--image-size", 32),
        ("predict", made_store / "head", made_store / "store", "-o", in_the_way / "p.csv"),
        ("export", made_store / "head", "-o", in_the_way / "m.onnx"),
    ):
        one_clean_error(run(*command), str(in_the_way))
    assert in_the_way.read_text() == "mine"


def test_a_picture_that_cannot_be_drawn_is_a_warning_and_the_head_is_kept(
    made_store, tmp_path, monkeypatch
):
    import headstart.heads.report as report

    def broken(*args):
        raise RuntimeError("no usable font")

    monkeypatch.setattr(report, "_plot_confusion", broken)
    result = run("train", made_store / "store", "-o", tmp_path / "head")
    assert result.exit_code == 0, result.output
    picture = tmp_path / "head" / "report" / "confusion_matrix.png"
    assert (
        f"could not draw {picture} (RuntimeError: no usable font); metrics.json has the numbers"
        in result.stderr
    )
    assert (tmp_path / "head" / "model.onnx").is_file() and not picture.exists()
    assert (tmp_path / "head" / "report" / "metrics.json").is_file()


@pytest.mark.parametrize("taken", [False, True])
@pytest.mark.parametrize("closed", [1, 2])
def test_a_command_started_with_stdout_or_stderr_closed_still_does_its_work(
    tmp_path, weights_file, closed, taken
):
    """A cron job with `>&-` or `2>&-`: Python then has no sys.stdout or sys.stderr; the
    progress bar and the way out must not need them. `taken`: a launcher (pyenv's shim
    script) opened a file of its own read-only on that descriptor: writing there fails."""
    import os
    import subprocess
    import sys

    images = colour_images(tmp_path / "images", per_class=2)
    store = tmp_path / "store"
    command = [
        sys.executable, "-m", "headstart", "embed", str(images), "-o", str(store),
        "--weights", str(weights_file), "--image-size", "75",
    ]  # fmt: skip
    kept = subprocess.PIPE
    done = subprocess.run(
        command,
        stdout=kept if closed == 2 else None,
        stderr=kept if closed == 1 else None,
        preexec_fn=lambda: (
            os.close(closed),
            taken and os.set_inheritable(os.open(__file__, os.O_RDONLY), True),
        ),
        cwd=Path(__file__).resolve().parents[1],
        text=True,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sorted(store.glob("part-*.parquet"))
    said = done.stdout if closed == 2 else done.stderr
    assert "Traceback" not in said


def test_standard_output_on_a_full_disk_is_one_error_line(made_store):
    """`headstart info STORE > /dev/full`: the disk that holds standard output is full."""
    import subprocess
    import sys

    for args in (("info", made_store / "store"), ("info", "--json", made_store / "store")):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "headstart", *map(str, args)], stdout=full,
                stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
            )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr == "Error: cannot write to standard output: No space left on device\n"


def test_a_librarys_error_is_told_on_one_line_by_the_end_that_says_what_failed():
    from headstart.extractor.terminal import said_by

    error = RuntimeError("[ONNXRuntimeError] : 1 : FAIL :\n" + "x " * 400 + "\n\tConv_3 failed")
    told = said_by(error)
    assert told.endswith("x Conv_3 failed") and len(told) == 300
    assert said_by(error, keep="start").startswith("[ONNXRuntimeError] : 1 : FAIL : x x")
    assert "\n" not in told and "\t" not in told
    assert said_by(ValueError("  \n")) == "ValueError"  # nothing said: its kind, not ()
