"""`headstart train`: heads on stored features, their ONNX files, reports and bad stores."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from corpus import colour_images
from headstart.cli import main
from headstart.extractor import embed
from headstart.heads.artifact import predict_with_onnx
from headstart.heads.dataset import load_labelled_features, stratified_split
from headstart.heads.train import HEAD_KINDS, make_head
from helpers import IMAGE_SIZE


@pytest.fixture(scope="module")
def colour_store(tmp_path_factory, weights_file):
    root = tmp_path_factory.mktemp("colours")
    images = colour_images(root / "images")
    embed(images, root / "features", weights=str(weights_file), image_size=IMAGE_SIZE)
    return root / "features"


@pytest.fixture(scope="module")
def shuffled_store(colour_store, tmp_path_factory):
    """The same features with the labels shuffled: nothing left to learn."""
    out = tmp_path_factory.mktemp("shuffled") / "features"
    out.mkdir()
    table = pq.read_table(colour_store)
    labels = np.random.default_rng(1).permutation(table["label"].to_numpy(zero_copy_only=False))
    table = table.set_column(1, table.schema.field("label"), pa.array(labels))
    pq.write_table(
        table.replace_schema_metadata(pq.read_schema(next(colour_store.glob("part-*"))).metadata),
        out / "part-00001.parquet",
    )
    shutil.copy(colour_store / "_headstart.json", out)
    return out


def train(features, head_dir, *extra):
    return CliRunner().invoke(main, ["train", str(features), "-o", str(head_dir), *extra])


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_head_learns_separable_classes_and_not_shuffled_labels(
    kind, colour_store, shuffled_store, tmp_path
):
    result = train(colour_store, tmp_path / "head", "--head", kind)
    assert result.exit_code == 0, result.output
    head = json.loads((tmp_path / "head" / "head.json").read_text())
    assert head["metrics"]["val_accuracy"] >= 0.9, head["metrics"]
    assert (
        f"validation accuracy {head['metrics']['val_accuracy']:.3f} ({kind} head" in result.output
    )

    shuffled = train(shuffled_store, tmp_path / "shuffled", "--head", kind)
    assert shuffled.exit_code == 0, shuffled.output
    chance = json.loads((tmp_path / "shuffled" / "head.json").read_text())
    assert chance["metrics"]["val_accuracy"] < 0.6  # 3 classes: chance is 1/3


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_onnx_head_gives_the_in_memory_probabilities(kind, colour_store, tmp_path):
    data = load_labelled_features(colour_store)
    train_rows, val_rows = stratified_split(data.y, 0.2, seed=0)
    head = make_head(kind, seed=0, folder=tmp_path, epochs=30)
    head.fit(
        data.X[train_rows], data.y[train_rows], validation=(data.X[val_rows], data.y[val_rows])
    )
    head.save(tmp_path, data.X.shape[1])

    expected = head.predict_proba(data.X)
    got = predict_with_onnx(tmp_path, data.X)
    assert got.shape == expected.shape == (150, 3)
    assert np.abs(got - expected).max() <= 1e-5


def test_head_folder_contents_fingerprint_and_no_pickle(colour_store, tmp_path):
    result = train(colour_store, tmp_path / "head", "--head", "mlp", "--epochs", "20")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "head"
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "head.json",
        "model.onnx",
        "report/confusion_matrix.png",
        "report/curves.png",
        "report/history.csv",
        "report/index.html",
        "report/metrics.json",
        "report/misclassified.csv",  # no mistakes: a header only, no thumbnails
        "report/page.json",
    ]
    head = json.loads((folder / "head.json").read_text())
    store = json.loads((colour_store / "_headstart.json").read_text())
    assert head["fingerprint"] == store["fingerprint"]
    assert head["classes"] == ["blue", "green", "red"] and head["kind"] == "mlp"
    metrics = json.loads((folder / "report" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == 30
    for path in folder.rglob("*"):
        if path.is_file():  # pickle streams start with the PROTO opcode 0x80
            assert not path.read_bytes().startswith(b"\x80"), path
            assert path.suffix not in {".pkl", ".pickle", ".joblib", ".keras"}


def test_mlp_stops_early_and_keeps_its_best_weights(colour_store, tmp_path):
    patience = 5
    result = train(
        colour_store,
        tmp_path / "head",
        "--head",
        "mlp",
        "--epochs",
        "500",
        "--patience",
        str(patience),
    )
    assert result.exit_code == 0, result.output
    history = pd.read_csv(tmp_path / "head" / "report" / "history.csv")
    assert len(history) < 100  # far from 500
    best = int(history["val_loss"].idxmin())
    assert len(history) == best + 1 + patience  # stopped `patience` epochs after the best
    logged = re.findall(
        r"^epoch (\d+)/500: .*val_accuracy [\d.]+.* \([\d.]+ s\)$", result.stderr, re.M
    )
    assert [int(epoch) for epoch in logged] == list(range(1, len(history) + 1))  # one a line

    data = load_labelled_features(colour_store)
    _, val_rows = stratified_split(data.y, 0.2, seed=0)
    probabilities = predict_with_onnx(tmp_path / "head", data.X[val_rows])
    loss = -np.mean(np.log(probabilities[np.arange(len(val_rows)), data.y[val_rows]]))
    assert loss == pytest.approx(history["val_loss"].min(), rel=1e-3)  # the best, restored


def test_split_is_stratified_and_reproducible():
    y = np.repeat([0, 1, 2], [10, 20, 30])
    first = stratified_split(y, 0.2, seed=3)
    again = stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(first[1], again[1])
    assert np.bincount(y[first[1]]).tolist() == [2, 4, 6]
    assert not set(first[0]) & set(first[1])


def _store_with_labels(tmp_path, weights_file, layout):
    images = tmp_path / "images"
    for index, relative in enumerate(layout):
        (images / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (index * 20 % 256, 80, 120)).save(images / relative)
    embed(images, tmp_path / "features", weights=str(weights_file), image_size=IMAGE_SIZE)
    return tmp_path / "features"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            ["a/1.png", "a/2.png", "b/1.png", "b/2.png", "loose.png"],
            "1 of 5 rows have no label (images directly in IMAGES_DIR, e.g. loose.png); put each "
            "image in a class folder",
        ),
        (["a/1.png", "a/2.png", "a/3.png"], "a classifier needs at least 2 classes, found 1 (a)"),
        (
            ["a/1.png", "a/2.png", "b/1.png", "c/1.png", "c/2.png"],
            "every class needs at least 2 images (one to train, one to validate); 1 class(es) "
            "have 1: b",
        ),
    ],
)
def test_stores_that_cannot_train_a_head(tmp_path, weights_file, layout, message):
    features = _store_with_labels(tmp_path, weights_file, layout)
    result = train(features, tmp_path / "head")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {features}: {message}\n"
    assert not (tmp_path / "head").exists()


def test_missing_empty_and_corrupt_stores(tmp_path, colour_store):
    missing = train(tmp_path / "nope", tmp_path / "head")
    assert missing.stderr == f"Error: {tmp_path / 'nope'} does not exist or is not a folder\n"
    (tmp_path / "empty").mkdir()
    empty = train(tmp_path / "empty", tmp_path / "head")
    assert empty.stderr == (
        f"Error: {tmp_path / 'empty'} holds no features; make them with: headstart embed "
        f"IMAGES_DIR -o {tmp_path / 'empty'}\n"
    )
    corrupt = tmp_path / "corrupt"
    shutil.copytree(colour_store, corrupt)
    part = next(corrupt.glob("part-*"))
    part.write_bytes(part.read_bytes()[:1000])
    broken = train(corrupt, tmp_path / "head")
    assert broken.exit_code == 1
    assert broken.stderr.startswith(f"Error: {part} is not a readable Parquet part (")
    bad_split = train(colour_store, tmp_path / "head", "--val-split", "1.5")
    assert bad_split.stderr == "Error: --val-split must be in [0, 1), got 1.5\n"
    assert not (tmp_path / "head").exists()


def test_mlp_is_indifferent_to_the_scale_of_the_features(colour_store):
    """The MLP trains on standardized features, so scaling them changes nothing (random
    weights give features ~1e-4, ImageNet weights ~1)."""
    data = load_labelled_features(colour_store)
    train_rows, val_rows = stratified_split(data.y, 0.2, seed=0)
    results = []
    for scale in (1.0, 1e4):
        X = data.X * np.float32(scale)
        head = make_head("mlp", seed=0, epochs=2)  # early on, before both runs saturate
        head.fit(X[train_rows], data.y[train_rows], validation=(X[val_rows], data.y[val_rows]))
        results.append(head.predict_proba(X[val_rows]))
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)


def test_mlp_writes_tensorboard_logs_when_asked(colour_store, tmp_path):
    result = train(
        colour_store, tmp_path / "head", "--head", "mlp", "--epochs", "2", "--tensorboard"
    )
    assert result.exit_code == 0, result.output
    logs = tmp_path / "head" / "logs"
    assert list((logs / "train").glob("events.out.tfevents.*"))
    assert list((logs / "validation").glob("events.out.tfevents.*"))
