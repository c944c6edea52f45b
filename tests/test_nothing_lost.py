"""Nothing lost: every write safe (no link written through, only our own files removed),
the store bound to its images folder, and every folder entry accounted for."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from corpus import colour_images
from headstart.cli import main
from headstart.extractor.scan import IMAGE_SUFFIXES, scan_images
from headstart.heads.prediction_file import PredictionWriter
from helpers import IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def last_error(result) -> str:
    return result.stderr.splitlines()[-1] if result.stderr else ""


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (links not followed) with its bytes or link target."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            entries[key] = "-> " + os.readlink(path)
        elif path.is_file():
            entries[key] = path.read_bytes()
        else:
            entries[key] = "folder"
    return entries


@pytest.fixture
def outside(tmp_path):
    """A folder outside every output, with files a planted link points at."""
    folder = tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_bytes(b"the user's file\n")
    (folder / "sub" / "kept.txt").write_bytes(b"another one\n")
    return folder


def plant(link: Path, target: Path) -> None:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


@pytest.fixture(scope="module")
def made(tmp_path_factory, weights_file):
    """An images folder, its store and a head trained on it; tests copy them."""
    root = tmp_path_factory.mktemp("made")
    images = colour_images(root / "images", per_class=4)
    store = root / "features"
    embed = ("embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE)
    assert run(*embed).exit_code == 0
    assert run("train", store, "-o", root / "head").exit_code == 0
    return root


def copy_of(made: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(made / name, target, symlinks=True)
    return target


# --- links planted where headstart writes ------------------------------------------------

STORE_NAMES = [
    "_headstart.lock",
    "_headstart.meta.lock",
    "_headstart.json",
    "_errors.csv",
    "part-00002.parquet",
    "_headstart.shard0of2.lock",
    "_corrupt-part-00001.parquet",
]


@pytest.mark.parametrize("name", STORE_NAMES)
def test_embed_refuses_a_link_at_every_name_it_writes_in_a_store(
    made, tmp_path, outside, weights_file, name
):
    images, store = copy_of(made, tmp_path, "images"), copy_of(made, tmp_path, "features")
    plant(store / name, outside / "precious.txt")
    before_outside, before_store = snapshot(outside), snapshot(store)
    shard = ["--shard", "0/2"] if "shard" in name else []
    result = run(
        "embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE, *shard
    )
    assert result.exit_code == 1
    assert last_error(result).startswith(f"Error: {store / name} is a symbolic link where ")
    assert snapshot(outside) == before_outside
    assert snapshot(store) == before_store


HEAD_NAMES = ["head.json", "model.onnx", "report/metrics.json", "report/confusion_matrix.png"]


@pytest.mark.parametrize("name", [*HEAD_NAMES, "report", "logs"])
def test_train_refuses_to_replace_a_head_folder_holding_a_link(made, tmp_path, outside, name):
    head = copy_of(made, tmp_path, "head")
    plant(head / name, outside / ("sub" if name in ("report", "logs") else "precious.txt"))
    before_outside, before_head = snapshot(outside), snapshot(head)
    result = run("train", made / "features", "-o", head)
    assert result.exit_code == 1
    assert last_error(result).startswith(f"Error: {head / name} is a symbolic link where ")
    assert snapshot(outside) == before_outside
    assert snapshot(head) == before_head
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("_headstart-tmp-")]


def test_train_keeps_files_it_did_not_write_and_follows_a_linked_output(made, tmp_path):
    head = copy_of(made, tmp_path, "head")
    (head / "notes.txt").write_text("mine")
    refused = run("train", made / "features", "-o", head)
    assert refused.exit_code == 1
    assert "holds notes.txt, which headstart did not write there" in last_error(refused)
    assert (head / "notes.txt").read_text() == "mine"

    (head / "notes.txt").unlink()
    (tmp_path / "current").symlink_to(head)  # -o current -> head/: followed on purpose
    replaced = run("train", made / "features", "-o", tmp_path / "current", "--head", "knn")
    assert replaced.exit_code == 0, replaced.output
    assert (tmp_path / "current").is_symlink()
    assert json.loads((head / "head.json").read_text())["kind"] == "knn"


def fake_model_folder(folder: Path) -> Path:
    (folder / "report").mkdir(parents=True)
    (folder / "model.json").write_text('{"kind": "cnn"}')
    (folder / "model.keras").write_bytes(b"zip")
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "report" / "history.csv").write_text("epoch\n0\n")
    return folder


@pytest.mark.parametrize(
    "name", ["model.json", "model.keras", "model.onnx", "report/history.csv", "logs"]
)
def test_train_cnn_refuses_a_model_folder_holding_a_link(tmp_path, outside, name):
    images = colour_images(tmp_path / "images", per_class=4)
    model = fake_model_folder(tmp_path / "cnn")
    plant(model / name, outside / ("sub" if name == "logs" else "precious.txt"))
    before_outside, before_model = snapshot(outside), snapshot(model)
    result = run("train-cnn", images, "-o", model, "--image-size", 32, "--epochs", 1)
    assert result.exit_code == 1
    assert last_error(result).startswith(f"Error: {model / name} is a symbolic link where ")
    assert snapshot(outside) == before_outside and snapshot(model) == before_model


@pytest.mark.parametrize("name", ["pixels.u8", "run.json", "report/history.csv", "backup"])
def test_train_cnn_refuses_a_resume_folder_holding_a_link(tmp_path, outside, name):
    images = colour_images(tmp_path / "images", per_class=4)
    work = tmp_path / "_headstart-resume-cnn"
    work.mkdir()
    (work / "run.json").write_text('{"headstart": "train-cnn resume state", "key": "k"}')
    plant(work / name, outside / ("sub" if name == "backup" else "precious.txt"))
    before_outside, before_work = snapshot(outside), snapshot(work)
    result = run("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32, "--epochs", 1)
    assert result.exit_code == 1
    assert f"{work / name} is a " in last_error(result)
    assert snapshot(outside) == before_outside and snapshot(work) == before_work
    assert not (tmp_path / "cnn").exists()


def test_train_cnn_never_uses_a_work_folder_it_did_not_make(tmp_path, outside):
    images = colour_images(tmp_path / "images", per_class=4)
    work = tmp_path / "_headstart-resume-cnn"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "data.txt").write_text("a user's folder that happens to have this name")
    before = snapshot(work)
    result = run("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32, "--epochs", 1)
    assert result.exit_code == 1
    assert last_error(result) == (
        f"Error: {work} is not a train-cnn work folder headstart made (no run.json of its "
        "own); headstart does not touch it: move it away or choose another -o"
    )
    assert snapshot(work) == before
    shutil.rmtree(work)
    work.symlink_to(outside, target_is_directory=True)
    linked = run("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32, "--epochs", 1)
    assert linked.exit_code == 1
    assert last_error(linked).startswith(f"Error: {work} is a symbolic link where ")


PREDICTION_NAMES = [
    "preds_errors.csv",
    "preds_report",
    "preds_report/metrics.json",
    "preds_report/confusion_matrix.png",
]


@pytest.mark.parametrize("name", PREDICTION_NAMES)
def test_predict_refuses_links_at_its_derived_outputs_before_any_work(
    made, tmp_path, outside, name
):
    out = tmp_path / "out"
    out.mkdir()
    if "/" in name:
        (out / "preds_report").mkdir()
    plant(out / name, outside / ("sub" if name == "preds_report" else "precious.txt"))
    before_outside = snapshot(outside)
    result = run("predict", made / "head", made / "features", "-o", out / "preds.csv")
    assert result.exit_code == 1
    assert last_error(result).startswith(f"Error: {out / name} is a symbolic link where ")
    assert snapshot(outside) == before_outside
    assert {p.name for p in out.iterdir()} == {name.split("/")[0]}  # nothing written


def test_a_linked_output_file_is_followed_and_the_link_kept(made, tmp_path):
    (tmp_path / "v3").mkdir()
    (tmp_path / "current.csv").symlink_to(tmp_path / "v3" / "preds.csv")
    result = run("predict", made / "head", made / "features", "-o", tmp_path / "current.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "current.csv").is_symlink()
    assert len(pd.read_csv(tmp_path / "v3" / "preds.csv")) == 12
    assert (tmp_path / "v3" / "preds_report" / "metrics.json").is_file()
    (tmp_path / "current.onnx").symlink_to(tmp_path / "v3" / "model.onnx")
    export = run("export", made / "head", "-o", tmp_path / "current.onnx")
    assert export.exit_code == 0, export.output
    assert (tmp_path / "current.onnx").is_symlink()
    assert (tmp_path / "v3" / "model.onnx").stat().st_size > 1_000_000


# --- only what headstart made is removed --------------------------------------------------


def test_a_users_tmp_files_and_folders_survive_embed(made, tmp_path, weights_file):
    images, store = copy_of(made, tmp_path, "images"), copy_of(made, tmp_path, "features")
    (store / "_tmp-notes.txt").write_text("mine")
    (store / "_tmp-folder").mkdir()
    (store / "_tmp-folder" / "kept.txt").write_text("mine too")
    (store / "_tmp-part-00009.parquet").write_bytes(b"not provably ours")
    (store / "_headstart-tmp-0123456789ab-part-00009.parquet").mkdir()  # a folder: not ours
    before = {p: snapshot(store)[p] for p in snapshot(store) if "tmp" in p}
    result = run(
        "embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE
    )
    assert result.exit_code == 0, result.output
    assert {p: snapshot(store)[p] for p in snapshot(store) if "tmp" in p} == before


def test_predict_and_embed_into_one_folder_at_once(made, tmp_path, weights_file):
    images, out = copy_of(made, tmp_path, "images"), tmp_path / "out"
    # A predict that is writing its file when an embed into the same folder starts:
    writer = PredictionWriter(out / "preds.csv", ["a", "b"], 1, labelled=False)
    writer.write(["x.png"], [None], np.array([[0.25, 0.75]], np.float32))
    embedded = run(
        "embed", images, "-o", out, "--weights", weights_file, "--image-size", IMAGE_SIZE
    )
    assert embedded.exit_code == 0, embedded.output
    writer.commit()
    assert pd.read_csv(out / "preds.csv")["prediction"].tolist() == ["b"]
    assert len(pd.read_parquet(out / "part-00001.parquet")) == 12

    # And two real processes started together, each writing into the same folder.
    common = ["--weights", str(weights_file), "--image-size", str(IMAGE_SIZE)]
    embed = [sys.executable, "-m", "headstart", "embed", str(images), "-o",
             str(tmp_path / "both"), *common]  # fmt: skip
    predict = [sys.executable, "-m", "headstart", "predict", str(made / "head"),
               str(images), "-o", str(tmp_path / "both" / "preds.csv")]  # fmt: skip
    processes = [subprocess.Popen(c, cwd=REPO, stderr=subprocess.PIPE) for c in (embed, predict)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()
    assert len(pd.read_csv(tmp_path / "both" / "preds.csv")) == 12
    assert sum(len(pd.read_parquet(p)) for p in (tmp_path / "both").glob("part-*")) == 12


# --- the store knows its images folder ----------------------------------------------------


def embed_into(images: Path, store: Path, weights_file: Path, *extra):
    return run(
        "embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE, *extra
    )


def test_another_folder_is_refused_and_nothing_changes(made, tmp_path, weights_file):
    store = copy_of(made, tmp_path, "features")
    other = colour_images(tmp_path / "other", per_class=2, seed=5)
    before = snapshot(store)
    refused = embed_into(other, store, weights_file)
    assert refused.exit_code == 1
    recorded = json.loads((store / "_headstart.json").read_text())["images_dir"]
    assert recorded == str((made / "images").resolve())
    assert last_error(refused) == (
        f"Error: {store} holds the images of {recorded}, not of {other.resolve()} (6 of its 12 "
        "images are not there, e.g. blue/002.png). Use --overwrite to replace its rows with "
        f"those of {other.resolve()}, --images-moved if it is the same folder moved elsewhere, "
        "or choose another output folder"
    )
    assert snapshot(store) == before

    replaced = embed_into(other, store, weights_file, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "embedded 6, skipped 0, already present 0" in replaced.output
    summary = json.loads((store / "_headstart.json").read_text())
    assert summary["images_dir"] == str(other.resolve())
    assert f"images folder: {other.resolve()}" in run("info", store).output

    itself = embed_into(other, other, weights_file)
    assert itself.exit_code == 1
    assert last_error(itself).startswith(f"Error: -o {other} is IMAGES_DIR itself; ")


def test_the_same_files_at_another_path_are_accepted(made, tmp_path, weights_file):
    store = copy_of(made, tmp_path, "features")
    mounted = shutil.copytree(made / "images", tmp_path / "mnt" / "data")  # another mount
    result = embed_into(mounted, store, weights_file)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert "are now at" in result.stderr
    summary = json.loads((store / "_headstart.json").read_text())
    assert summary["images_dir"] == str(mounted.resolve())

    # Same names, other bytes: refused; --images-moved adopts the folder and re-embeds.
    changed = shutil.copytree(mounted, tmp_path / "changed")
    for path in changed.rglob("*.png"):
        pixels = np.asarray(Image.open(path)).copy()
        Image.fromarray(255 - pixels).save(path)
    refused = embed_into(changed, store, weights_file)
    assert refused.exit_code == 1
    assert "(files there have its images' names but other bytes, e.g. " in last_error(refused)
    moved = embed_into(changed, store, weights_file, "--images-moved")
    assert moved.exit_code == 0, moved.output
    assert "removed 12 rows of deleted or changed files" in moved.output
    assert "embedded 12, skipped 0, already present 0" in moved.output


def test_a_store_from_before_adopts_its_folder_on_its_next_run(made, tmp_path, weights_file):
    store = copy_of(made, tmp_path, "features")
    summary = json.loads((store / "_headstart.json").read_text())
    del summary["images_dir"]  # as written by earlier versions
    (store / "_headstart.json").write_text(json.dumps(summary))
    images = shutil.copytree(made / "images", tmp_path / "images-now")
    assert embed_into(images, store, weights_file).exit_code == 0
    assert json.loads((store / "_headstart.json").read_text())["images_dir"] == str(
        images.resolve()
    )
    other = colour_images(tmp_path / "other", per_class=2, seed=5)
    assert embed_into(other, store, weights_file).exit_code == 1


# --- every folder entry accounted for -----------------------------------------------------

_LIMITED_EMBED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # reading /dev/zero would hit it
from headstart import cli
cli.main(sys.argv[1:])
"""


def test_devices_and_fifos_named_like_images_are_skipped_unread(tmp_path, weights_file):
    images = colour_images(tmp_path / "images", per_class=2)
    os.mknod(images / "red" / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    os.mkfifo(images / "blue" / "pipe.jpg")  # nobody ever writes to it
    os.mkfifo(images / "blue" / "pipe")  # no suffix: not even its header is read
    command = [
        sys.executable, "-c", _LIMITED_EMBED, "embed", str(images), "-o", str(tmp_path / "f"),
        "--weights", str(weights_file), "--image-size", str(IMAGE_SIZE),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("embedded 6, skipped 2, already present 0, not images 1")
    errors = pd.read_csv(tmp_path / "f" / "_errors.csv")
    assert errors.values.tolist() == [
        ["blue/pipe.jpg", "not a regular file (a FIFO); skipped"],
        ["red/zero.png", "not a regular file (a character device); skipped"],
    ]


def write_every_format(folder: Path) -> dict[str, str]:
    """One small image in every format Pillow both reads and writes here; returns the
    suffixes written and their format names."""
    registered = Image.registered_extensions()
    image = Image.fromarray(np.uint8(np.indices((24, 32)).sum(0)[..., None] * [3, 5, 7] % 256))
    written = {}
    for suffix in IMAGE_SUFFIXES:
        format_name = registered[suffix]
        if format_name not in Image.SAVE:
            continue
        buffer = io.BytesIO()
        try:
            (image.convert("1") if format_name == "XBM" else image).save(buffer, format_name)
        except (OSError, ValueError):  # BLP, MSP and EPS cannot write RGB (or need gs)
            continue
        (folder / f"image{suffix}").write_bytes(buffer.getvalue())
        written[suffix] = format_name
    return written


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_every_entry_is_a_row_an_error_or_counted_as_not_an_image(run_embed, tmp_path):
    images = tmp_path / "images" / "all"
    images.mkdir(parents=True)
    written = write_every_format(images)
    for named in (".ppm", ".tga", ".ico", ".avif", ".qoi", ".jp2", ".webp", ".tiff"):
        assert named in written  # the formats that used to vanish without a word are there
    shutil.copy(images / "image.png", images / "IMG_0001")  # an image without a suffix
    (images / "README").write_text("no suffix, not an image")
    (images / "notes.txt").write_text("a text file")
    (images / "fake.png").write_text("a text file named like an image")
    (images / ".hidden.png").write_text("hidden: skipped on purpose, not counted")
    entries = [p for p in images.iterdir() if not p.name.startswith(".")]

    result = run_embed(tmp_path / "images", tmp_path / "features")

    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "features")
    errors = pd.read_csv(tmp_path / "features" / "_errors.csv")
    summary = json.loads((tmp_path / "features" / "_headstart.json").read_text())["last_run"]
    assert len(rows) + len(errors) + summary["not_images"] == len(entries)
    assert summary["not_images"] == 2 and f"not images {summary['not_images']}" in result.output
    assert "all/IMG_0001" in set(rows["path"])
    postscript = {"all/image.eps", "all/image.ps"}  # readable only with Ghostscript
    assert set(errors["path"]) - postscript == {"all/fake.png"}
    stored = {Path(p).suffix for p in rows["path"]}
    assert {".ppm", ".tga", ".ico", ".avif", ".qoi", ".jp2"} <= stored


def test_headstarts_own_outputs_inside_the_images_folder_are_skipped(made, tmp_path, weights_file):
    images = copy_of(made, tmp_path, "images")
    store = images / "features"  # everything written inside the images folder
    assert embed_into(images, store, weights_file).exit_code == 0
    assert run("train", store, "-o", images / "head", "--head", "knn").exit_code == 0
    predicted = run("predict", images / "head", images, "-o", images / "preds.csv")
    assert predicted.exit_code == 0, predicted.output
    assert (images / "preds_report" / "confusion_matrix.png").is_file()
    fake_model_folder(images / "cnn")
    Image.new("RGB", (20, 20)).save(images / "cnn" / "report" / "curves.png")
    (images / "_headstart-resume-cnn").mkdir()
    Image.new("RGB", (20, 20)).save(images / "_headstart-resume-cnn" / "x.png")

    again = embed_into(images, store, weights_file)
    assert again.exit_code == 0, again.output
    assert again.output.strip().endswith("embedded 0, skipped 0, already present 12")
    for output in ("_headstart-resume-cnn/", "cnn/", "features/", "head/", "preds.csv",
                   "preds_report/"):  # fmt: skip
        assert f"skipped {output}: headstart's own output" in again.stderr
    assert set(pd.read_parquet(store)["label"]) == {"blue", "green", "red"}
    repredicted = run("predict", images / "head", images, "-o", images / "preds.csv")
    assert repredicted.exit_code == 0
    assert len(pd.read_csv(images / "preds.csv")) == 12

    scan = scan_images(images)
    assert scan.own_outputs == [
        "_headstart-resume-cnn/", "cnn/", "features/", "head/", "preds.csv", "preds_report/"
    ]  # fmt: skip


def test_a_memory_limit_holds_for_the_test_of_devices():
    """The device test relies on RLIMIT_AS stopping a runaway read: check it does here."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "open('/dev/zero', 'rb').read()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "MemoryError" in result.stderr


# --- what a hostile pass found ------------------------------------------------------------


def test_a_users_file_deep_in_a_head_folder_keeps_it_from_being_replaced(made, tmp_path):
    head = copy_of(made, tmp_path, "head")
    (head / "report" / "mynote.txt").write_text("mine")
    refused = run("train", made / "features", "-o", head)
    assert refused.exit_code == 1
    assert "holds report/mynote.txt, which headstart did not write" in last_error(refused)
    assert (head / "report" / "mynote.txt").read_text() == "mine"


def test_export_and_predict_never_write_into_artifacts_or_at_a_stores_names(made, tmp_path):
    head, store = copy_of(made, tmp_path, "head"), copy_of(made, tmp_path, "features")
    before = snapshot(head), snapshot(store)
    not_onnx = run("export", head, "-o", tmp_path / "photo.jpg")
    assert last_error(not_onnx) == (
        f"Error: -o {tmp_path / 'photo.jpg'}: the exported model's name must end in .onnx"
    )
    for command in (
        ("export", head, "-o", head / "model.onnx"),
        ("export", head, "-o", head / "report" / "x.onnx"),
        ("predict", head, store, "-o", head / "preds.csv"),
    ):
        result = run(*command)
        assert result.exit_code == 1
        assert f"is inside the head folder {head}, whose files are headstart's" in last_error(
            result
        )
    wedge = run("predict", head, store, "-o", store / "part-00002.parquet")
    assert last_error(wedge) == (
        f"Error: -o {store / 'part-00002.parquet'}: part-00002.parquet is a name of the "
        f"feature store {store}'s own files; choose another name"
    )
    assert (snapshot(head), snapshot(store)) == before


def test_predict_never_replaces_a_users_file_at_its_derived_names(made, tmp_path):
    (tmp_path / "q_errors.csv").write_text("my precious notes\n")
    errors = run("predict", made / "head", made / "features", "-o", tmp_path / "q.csv")
    assert last_error(errors) == (
        f"Error: {tmp_path / 'q_errors.csv'} was not written by headstart, and predict would "
        "replace it; move it away or choose another -o"
    )
    (tmp_path / "r_report").mkdir()
    (tmp_path / "r_report" / "metrics.json").write_text('{"my": "own"}')
    report = run("predict", made / "head", made / "features", "-o", tmp_path / "r.csv")
    assert last_error(report).startswith(f"Error: {tmp_path / 'r_report' / 'metrics.json'} was")
    assert (tmp_path / "q_errors.csv").read_text() == "my precious notes\n"
    assert (tmp_path / "r_report" / "metrics.json").read_text() == '{"my": "own"}'
    assert not (tmp_path / "q.csv").exists() and not (tmp_path / "r.csv").exists()
    # Its own report and errors list from an earlier run are replaced as usual.
    (tmp_path / "r_report" / "metrics.json").unlink()
    assert run("predict", made / "head", made / "features", "-o", tmp_path / "r.csv").exit_code == 0
    assert run("predict", made / "head", made / "features", "-o", tmp_path / "r.csv").exit_code == 0


def test_a_hard_link_at_a_lock_file_is_refused(made, tmp_path, weights_file):
    store = copy_of(made, tmp_path, "features")
    important = tmp_path / "important.txt"
    important.write_text("keep me")
    (store / "_headstart.lock").unlink()
    os.link(important, store / "_headstart.lock")
    result = embed_into(made / "images", store, weights_file)
    assert result.exit_code == 1
    assert last_error(result).startswith(
        f"Error: {store / '_headstart.lock'} is a file with other hard links where "
    )
    assert important.read_text() == "keep me"


def test_only_leftovers_of_dead_runs_are_removed(made, tmp_path):
    import fcntl

    dead = tmp_path / "_headstart-tmp-0123456789ab-p.csv"  # a SIGKILLed predict's file
    dead.write_text("half")
    live = tmp_path / "_headstart-tmp-ba9876543210-p.csv"  # a running predict's file
    live.write_text("being written")
    other = tmp_path / "_headstart-tmp-0123456789ab-other.csv"  # another output's
    other.write_text("not this run's name")
    young = tmp_path / "_headstart-tmp-abababababab-p.csv"  # created a moment ago
    young.write_text("maybe not locked yet")
    for path in (dead, live, other):
        os.utime(path, (time.time() - 60, time.time() - 60))
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run("predict", made / "head", made / "features", "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert not dead.exists() and live.exists() and other.exists() and young.exists()
    staging = tmp_path / "_headstart-tmp-0123456789ab-head"  # a SIGKILLed train's folder
    (staging / "report").mkdir(parents=True)
    os.utime(staging, (time.time() - 60, time.time() - 60))
    old = tmp_path / "_headstart-old-0123456789ab-head"  # a head replaced at that moment
    old.mkdir()
    assert run("train", made / "features", "-o", tmp_path / "head").exit_code == 0
    assert not staging.exists() and old.exists()


def test_a_failed_run_leaves_no_output_behind(made, tmp_path):
    not_weights = tmp_path / "weights.h5"
    not_weights.write_text("print('not a weights file')")
    result = run("embed", made / "images", "-o", tmp_path / "store", "--weights", not_weights)
    assert result.exit_code == 1 and last_error(result).startswith("Error: ")
    images = colour_images(tmp_path / "images", per_class=3)
    split = run("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32,
                "--val-split", 0.99)  # fmt: skip
    assert split.exit_code == 1 and last_error(split).startswith("Error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "weights.h5"]


def test_a_second_train_cnn_on_the_same_output_is_refused(tmp_path):
    import fcntl

    images = colour_images(tmp_path / "images", per_class=4)
    work = tmp_path / "_headstart-resume-cnn"
    work.mkdir()
    (work / "run.json").write_text('{"headstart": "train-cnn resume state"}')
    held = os.open(work, os.O_RDONLY)  # as the first run holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        second = run("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32)
    finally:
        os.close(held)
    assert second.exit_code == 1
    assert last_error(second) == (
        f"Error: {work} is in use by another train-cnn run; wait for it to finish or choose "
        "another -o"
    )
    assert sorted(p.name for p in work.iterdir()) == ["run.json"]


def test_rows_of_files_that_cannot_be_read_this_time_are_kept(
    made, tmp_path, weights_file, monkeypatch
):
    images, store = made / "images", copy_of(made, tmp_path, "features")
    before = pd.read_parquet(store).sort_values("path", ignore_index=True)
    real_open = os.open

    def denied(path, *args, **kwargs):  # as a file and a folder without permission would be
        if str(path).endswith("red/000.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    monkeypatch.setattr(os, "scandir", _denying_scandir(images / "blue"))
    result = embed_into(images, store, weights_file)
    assert result.exit_code == 0, result.output
    assert "skipped blue/: cannot list folder: Permission denied" in result.stderr
    assert "skipped red/000.png: cannot read file: Permission denied" in result.stderr
    assert "kept the stored rows of 5 files that are there but could not be read" in result.output
    assert "removed" not in result.output
    after = pd.read_parquet(store).sort_values("path", ignore_index=True)
    assert after["path"].tolist() == before["path"].tolist()


def _denying_scandir(folder: Path):
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    return scandir


def test_an_unreadable_file_without_suffix_is_listed_not_counted_as_not_an_image(
    tmp_path, monkeypatch
):
    images = colour_images(tmp_path / "images", per_class=2)
    shutil.copy(images / "red" / "000.png", images / "red" / "IMG_0001")
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("IMG_0001"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    scan = scan_images(images)
    assert [(r.path, r.reason) for r in scan.rejected] == [
        ("red/IMG_0001", "cannot read file: Permission denied")
    ]
    assert scan.not_images == []


def test_odd_output_paths(made, tmp_path, weights_file):
    (tmp_path / "current").symlink_to(tmp_path / "v3")  # dangling: the store is made there
    assert embed_into(made / "images", tmp_path / "current", weights_file).exit_code == 0
    assert (tmp_path / "v3" / "_headstart.json").is_file()
    root = run("train", made / "features", "-o", "/")
    assert last_error(root) == "Error: -o /: give a file or folder to write, not /"


FULL_DISK_COMMANDS = {
    "embed": lambda m, t, w: ("embed", m / "images", "-o", t / "store", "--weights", w,
                              "--image-size", IMAGE_SIZE),
    "train": lambda m, t, w: ("train", m / "features", "-o", t / "head"),
    "train mlp": lambda m, t, w: ("train", m / "features", "-o", t / "head", "--head", "mlp",
                                  "--epochs", 2),
    "predict csv": lambda m, t, w: ("predict", m / "head", m / "images", "-o", t / "p.csv"),
    "predict parquet": lambda m, t, w: ("predict", m / "head", m / "features", "-o",
                                        t / "p.parquet"),
    "export": lambda m, t, w: ("export", m / "head", "-o", t / "m.onnx"),
    "train-cnn": lambda m, t, w: ("train-cnn", m / "images", "-o", t / "cnn", "--image-size", 32,
                                  "--epochs", 1),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("free_kb", [0, 1500])  # nothing fits; a part of the outputs fits
def test_full_disks_give_one_error_line_and_leave_nothing(made, tmp_path, weights_file, free_kb):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], check=True)
    try:
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as handle:  # fill it, give `free_kb` back
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - free_kb * 1024))
        for name, command in FULL_DISK_COMMANDS.items():
            args = [str(a) for a in command(made, disk, weights_file)]
            result = subprocess.run(
                [sys.executable, "-m", "headstart", *args],
                cwd=REPO, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
            if result.returncode == 0 and free_kb:  # it fitted in what was left
                for made_here in (p for p in disk.iterdir() if p != filler):
                    shutil.rmtree(made_here) if made_here.is_dir() else made_here.unlink()
                continue
            assert result.returncode == 1, (name, result.returncode, result.stderr[-2000:])
            last = result.stderr.splitlines()[-1]
            assert last.startswith("Error: ") and "No space left on device" in last, (name, last)
            assert sorted(p.name for p in disk.iterdir()) == ["filler"], name
    finally:
        subprocess.run(["umount", disk], check=True)


# --- what a second hostile pass found -----------------------------------------------------


def test_a_second_repair_keeps_the_first_ones_copy(made, tmp_path, weights_file):
    store = tmp_path / "store"
    assert embed_into(made / "images", store, weights_file, "--rows-per-part", 4).exit_code == 0
    for _ in (1, 2):  # the last part's name is taken again by its re-embedded rows
        (store / "part-00003.parquet").write_bytes(b"PAR1 broken")
        repaired = embed_into(made / "images", store, weights_file, "--repair")
        assert repaired.exit_code == 0, repaired.output
    assert (store / "_corrupt-part-00003.parquet").read_bytes() == b"PAR1 broken"
    assert (store / "_corrupt-2-part-00003.parquet").read_bytes() == b"PAR1 broken"
    assert len(pd.read_parquet(store / "part-00003.parquet")) == 4


def test_outputs_never_nest_in_artifacts_nor_swallow_a_class(made, tmp_path, weights_file):
    head, images = copy_of(made, tmp_path, "head"), copy_of(made, tmp_path, "images")
    for command, out in (
        (("embed", images, "--weights", weights_file), head / "store"),
        (("train", made / "features"), head / "report" / "inner"),
        (("train", made / "features"), made / "features" / "head"),
    ):
        result = run(*command, "-o", out)
        assert result.exit_code == 1
        assert last_error(result).startswith(f"Error: -o {out}: is inside the ")
        assert not out.exists()
    swallowed = embed_into(images, images / "red", weights_file)
    assert last_error(swallowed) == (
        f"Error: -o {images / 'red'}: is a folder of IMAGES_DIR that holds files and is not a "
        "feature store; its images would be skipped as the store's: choose a new folder"
    )
    # A head folder where predict's report would go is not written into either.
    (tmp_path / "zz_report").mkdir()
    shutil.copytree(head, tmp_path / "zz_report", dirs_exist_ok=True)
    before = snapshot(tmp_path / "zz_report")
    into_head = run("predict", made / "head", made / "features", "-o", tmp_path / "zz.csv")
    assert into_head.exit_code == 1 and "was not written by headstart" in last_error(into_head)
    assert snapshot(tmp_path / "zz_report") == before


def test_a_failed_first_run_removes_the_parent_folders_it_made(made, tmp_path):
    missing = run("train", tmp_path / "nowhere", "-o", tmp_path / "a" / "b" / "head")
    assert missing.exit_code == 1
    not_weights = tmp_path / "bogus.h5"
    not_weights.write_text("no weights here")
    bogus = run("embed", made / "images", "-o", tmp_path / "c" / "d" / "store", "--weights",
                not_weights, "--image-size", IMAGE_SIZE)  # fmt: skip
    assert bogus.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.h5"]


def test_an_output_that_is_a_device_is_refused_with_the_right_advice(made, tmp_path):
    (tmp_path / "null.onnx").symlink_to("/dev/null")
    result = run("export", made / "head", "-o", tmp_path / "null.onnx")
    assert last_error(result) == (
        f"Error: -o {tmp_path / 'null.onnx'}: /dev/null exists and is not a file; give a file name"
    )


def test_a_sample_it_cannot_read_is_not_called_other_bytes(
    made, tmp_path, weights_file, monkeypatch
):
    store = copy_of(made, tmp_path, "features")
    copy = shutil.copytree(made / "images", tmp_path / "copy")
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(copy)) and str(path).endswith(".png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    result = embed_into(copy, store, weights_file)
    assert result.exit_code == 1
    assert "(its images could not be read there to compare them)" in last_error(result)


def test_shards_of_two_folders_never_fill_one_store(made, tmp_path, weights_file):
    store = tmp_path / "store"
    other = colour_images(tmp_path / "other", per_class=2, seed=5)
    first = embed_into(made / "images", store, weights_file, "--shard", "0/2",
                       "--rows-per-part", 1000)  # fmt: skip
    assert first.exit_code == 0, first.output
    for part in store.glob("part-*"):
        part.unlink()  # as if shard 0 had recorded the folder but written nothing yet
    second = embed_into(other, store, weights_file, "--shard", "1/2")
    assert second.exit_code == 1
    assert last_error(second) == (
        f"Error: {store} is being filled with the images of {(made / 'images').resolve()} by "
        f"other shards, not those of {other.resolve()}; give every shard the same IMAGES_DIR"
    )


def test_a_linked_store_is_an_output_wherever_the_walk_meets_it(made, tmp_path):
    images = copy_of(made, tmp_path, "images")
    shutil.copytree(made / "features", images / "red" / "store")
    (images / "blue" / "st").symlink_to(images / "red" / "store")
    scan = scan_images(images, follow_links=True)
    assert scan.own_outputs == ["blue/st/", "red/store/"]
    assert scan.rejected == []


def test_a_train_cnn_killed_while_tidying_up_installs_its_model_on_the_next_run(
    tmp_path, monkeypatch
):
    import headstart.heads.cnn.training as train_cnn

    images = colour_images(tmp_path / "images", per_class=6)
    command = ("train-cnn", images, "-o", tmp_path / "cnn", "--image-size", 32, "--epochs", 2)
    real_install = train_cnn.install_folder

    def killed(*args):  # as if SIGKILLed once every file of the model was written
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cnn, "install_folder", killed)
    assert run(*command).exit_code != 0
    work = tmp_path / "_headstart-resume-cnn"
    assert json.loads((work / "run.json").read_text())["finished"] is True
    assert (work / "model.onnx").is_file() and not (tmp_path / "cnn").exists()

    monkeypatch.setattr(train_cnn, "install_folder", real_install)
    again = run(*command)
    assert again.exit_code == 0, again.output
    assert "epoch 1/2" not in again.stderr  # nothing trained again
    assert "validation accuracy" in again.output
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == [
        "model.json", "model.keras", "model.onnx", "report"
    ]  # fmt: skip
    assert not work.exists()


def test_outputs_may_not_take_headstarts_own_names(made, tmp_path):
    for command, suffix in (
        (("predict", made / "head", made / "features", "-o"), ".csv"),
        (("train", made / "features", "-o"), ""),
        (("export", made / "head", "-o"), ".onnx"),
    ):
        out = tmp_path / f"_headstart-tmp-0123456789ab-y{suffix}"
        result = run(*command, out)
        assert last_error(result) == (
            f"Error: -o {out}: names starting with _headstart are headstart's own "
            "(temporaries, locks, summaries), which it may remove; choose another name"
        )
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_leaves_no_half_folder(made, tmp_path, monkeypatch):
    import headstart.heads.predict as predict_module
    from headstart.extractor.errors import OutputError

    def full(report, metrics, title, **page):
        report.write_text("metrics.json", "{}")
        raise OutputError(f"cannot write {report.path / 'confusion_matrix.png'}: No space left")

    monkeypatch.setattr(predict_module, "write_report", full)
    result = run("predict", made / "head", made / "features", "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert last_error(result).endswith(
        f"; the predictions were written to {tmp_path / 'p.csv'}, their report was not"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
