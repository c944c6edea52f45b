"""Augmented views in the lighter workflow: `embed --views K`, training split by image,
`predict --tta`, and stores without views."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from corpus import colour_images
from headstart.cli import main
from headstart.heads.dataset import load_labelled_features, split_by_image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return colour_images(tmp_path_factory.mktemp("views") / "images", per_class=8)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(images, weights_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "features"
    result = run("embed", images, "-o", out, "--weights", weights_file, "--image-size", 75,
                 "--views", 2, "--seed", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "embedded 24, skipped 0, already present 0" in result.output
    return out


def features_by_key(folder) -> dict:
    frame = pd.read_parquet(folder)
    return {(p, v): f for p, v, f in zip(frame["path"], frame["view"], frame["features"])}


def test_views_are_stored_reproducibly_and_recorded(store, images, weights_file, tmp_path):
    frame = pd.read_parquet(store)
    assert frame.columns.tolist() == [
        "path", "label", "sha256", "width", "height", "view", "features"
    ]  # fmt: skip
    assert frame.groupby("path")["view"].apply(sorted).map(tuple).unique().tolist() == [(0, 1, 2)]
    fingerprint = json.loads((store / "_headstart.json").read_text())["fingerprint"]
    assert fingerprint["views"] == {
        "views": 2, "augment": ["flip", "crop", "rotate", "color"], "seed": 3, "version": 1
    }  # fmt: skip

    again = tmp_path / "again"
    args = ["embed", images, "--weights", weights_file, "--image-size", 75]
    assert run(*args, "-o", again, "--views", 2, "--seed", 3, "--batch-size", 5).exit_code == 0
    first, second = features_by_key(store), features_by_key(again)
    assert first.keys() == second.keys()
    for key in first:  # same seed, same views, whatever the batching
        np.testing.assert_allclose(first[key], second[key], rtol=1e-5, atol=1e-7)
    path = next(iter(first))[0]
    assert np.abs(first[(path, 1)] - first[(path, 0)]).max() > 0  # a view is not the image

    other = tmp_path / "other-seed"
    assert run(*args, "-o", other, "--views", 2, "--seed", 4).exit_code == 0
    third = features_by_key(other)
    np.testing.assert_allclose(third[(path, 0)], first[(path, 0)], rtol=1e-5, atol=1e-7)
    assert np.abs(third[(path, 1)] - first[(path, 1)]).max() > 0


@pytest.mark.parametrize("views_in_training", ["all", "none"])
def test_training_splits_by_image_so_no_view_of_a_validation_image_leaks(
    store, views_in_training, tmp_path
):
    data = load_labelled_features(store)
    train, val = split_by_image(data, 0.25, seed=0, views_in_training=views_in_training)
    train_paths = {data.paths[i] for i in train}
    val_paths = {data.paths[i] for i in val}
    assert not train_paths & val_paths  # no image on both sides, in any view
    assert (data.view_numbers[val] == 0).all() and len(val) == len(val_paths) == 6
    expected_views = {0, 1, 2} if views_in_training == "all" else {0}
    assert set(data.view_numbers[train]) == expected_views
    assert len(train) == len(train_paths) * len(expected_views) == 18 * len(expected_views)

    result = run("train", store, "-o", tmp_path / "head", "--val-split", 0.25,
                 "--views-in-training", views_in_training)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "18 training / 6 validation images" in result.output
    training = json.loads((tmp_path / "head" / "head.json").read_text())["training"]
    assert training["train_rows"] == 18 * len(expected_views)


def test_tta_averages_the_stored_or_the_regenerated_views(store, images, tmp_path):
    assert run("train", store, "-o", tmp_path / "head").exit_code == 0
    head = tmp_path / "head"
    for name, source, extra in [
        ("plain", store, []),
        ("stored", store, ["--tta"]),
        ("regenerated", images, ["--tta"]),
    ]:
        result = run("predict", head, source, "-o", tmp_path / f"{name}.csv", "--top-k", 3, *extra)
        assert result.exit_code == 0, result.output
    plain, stored, regenerated = (
        pd.read_csv(tmp_path / f"{n}.csv") for n in ("plain", "stored", "regenerated")
    )
    assert len(plain) == len(stored) == len(regenerated) == 24  # one row per image
    assert stored["path"].tolist() == regenerated["path"].tolist()
    assert stored["prediction"].tolist() == regenerated["prediction"].tolist()
    np.testing.assert_allclose(stored["probability"], regenerated["probability"], atol=1e-5)
    assert np.abs(stored["probability"] - plain["probability"]).max() > 1e-6  # really averaged


def test_stores_without_views_refuse_tta_but_work_otherwise(images, weights_file, tmp_path):
    out = tmp_path / "plain"
    assert (
        run("embed", images, "-o", out, "--weights", weights_file, "--image-size", 75).exit_code
        == 0
    )
    assert "view" not in pd.read_parquet(out).columns
    assert run("train", out, "-o", tmp_path / "head").exit_code == 0
    refused = run("predict", tmp_path / "head", out, "-o", tmp_path / "p.csv", "--tta")
    assert refused.exit_code == 1
    assert refused.stderr == f"Error: --tta needs views: {out} was embedded without --views\n"
    refused = run("predict", tmp_path / "head", images, "-o", tmp_path / "p.csv", "--tta")
    assert refused.exit_code == 1 and "--tta needs a head trained on features" in refused.stderr


def test_deleted_files_lose_every_view_and_the_others_keep_theirs(images, weights_file, tmp_path):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    out = tmp_path / "features"
    args = ["embed", folder, "-o", out, "--weights", weights_file, "--image-size", 75,
            "--views", 2, "--rows-per-part", 7]  # fmt: skip
    assert run(*args).exit_code == 0
    (folder / "red" / "000.png").unlink()
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "removed 3 rows" in again.output
    frame = pd.read_parquet(out)
    assert len(frame) == 23 * 3 and "red/000.png" not in set(frame["path"])
    assert frame.groupby("path").size().unique().tolist() == [3]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--views", "-1"], "--views must be from 0 to 64, got -1"),
        (["--views", "2", "--augment", "flip,blur"], "--augment flip,blur: choose among flip"),
        (["--views", "2", "--engine", "ray"], "--views works with --engine local only"),
    ],
)
def test_view_settings_that_cannot_work(images, tmp_path, extra, message):
    result = run("embed", images, "-o", tmp_path / "f", "--weights", "random", *extra)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {message}")
    assert not (tmp_path / "f").exists()
