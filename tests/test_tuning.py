"""Heads that tune themselves: hyperparameters chosen by cross-validation by image, `--head
auto`, `--class-weight balanced` and a final model on every image (`--val-split 0`). The
features are drawn here (2,048 dimensions, the stored fingerprint of tests/data's store), so
no backbone runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from headstart.cli import main
from headstart.heads.artifact import predict_with_onnx
from headstart.heads.dataset import LabelledFeatures, image_folds
from headstart.heads.kinds import HEAD_KINDS
from helpers import write_feature_store

DIM = 2048


def train(features, head_dir, *extra):
    return CliRunner().invoke(main, ["train", str(features), "-o", str(head_dir), *map(str, extra)])


def gaussian_classes(counts: dict[str, int], informative: int, shift: float, noise_dims: int,
                     seed: int) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Each class a Gaussian whose mean differs from the others' in `informative`
    dimensions by `shift`; `noise_dims` more dimensions of pure noise; the rest zero."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for index, (name, count) in enumerate(counts.items()):
        X = np.zeros((count, DIM), np.float32)
        X[:, : informative + noise_dims] = rng.normal(size=(count, informative + noise_dims))
        X[:, :informative] += shift * (index - (len(counts) - 1) / 2)
        rows.append(X)
        labels += [name] * count
    return np.concatenate(rows), labels


def head_json(folder) -> dict:
    return json.loads((folder / "head.json").read_text())


@pytest.fixture(scope="module")
def easy_store(tmp_path_factory):
    """Three well-separated classes, 30 images each."""
    X, labels = gaussian_classes({"a": 30, "b": 30, "c": 30}, 8, 3.0, 40, seed=0)
    return write_feature_store(tmp_path_factory.mktemp("easy") / "features", X, labels)


def test_cross_validation_regularizes_many_noisy_dimensions_more_than_few_clean_ones(tmp_path):
    noisy, noisy_labels = gaussian_classes({"a": 40, "b": 40}, 30, 0.35, 2000, seed=1)
    clean, clean_labels = gaussian_classes({"a": 40, "b": 40}, 4, 3.0, 0, seed=1)
    chosen = {}
    for name, X, labels in (("noisy", noisy, noisy_labels), ("clean", clean, clean_labels)):
        store = write_feature_store(tmp_path / name, X, labels)
        result = train(store, tmp_path / f"head-{name}", "--head", "logreg")
        assert result.exit_code == 0, result.output
        head = head_json(tmp_path / f"head-{name}")
        selection = head["selection"]
        assert [row["C"] for row in selection["grid"]] == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
        assert selection["chosen"]["C"] == head["hyperparameters"]["C"]
        assert selection["method"].startswith("5-fold cross-validation by image on 64 ")
        best = max(row["accuracy"] for row in selection["grid"])
        assert selection["cv_accuracy"] == best == head["metrics"]["cv_accuracy"]
        C = selection["chosen"]["C"]
        assert f"logreg: C {C:g}, chosen among 6 values of C by 5-fold cross-validation" in (
            result.output
        )
        chosen[name] = C
    assert chosen["noisy"] < chosen["clean"], chosen


def test_a_given_hyperparameter_is_kept_and_the_others_searched(easy_store, tmp_path):
    result = train(easy_store, tmp_path / "svm", "--head", "svm", "--C", "10")
    assert result.exit_code == 0, result.output
    head = head_json(tmp_path / "svm")
    assert head["hyperparameters"]["C"] == 10.0
    assert head["selection"]["given"] == {"C": 10.0}
    assert len(head["selection"]["grid"]) == 4  # the gamma axis only
    assert {row["C"] for row in head["selection"]["grid"]} == {10.0}

    result = train(easy_store, tmp_path / "knn", "--head", "knn", "--k", "3")
    assert result.exit_code == 0, result.output
    head = head_json(tmp_path / "knn")
    assert head["hyperparameters"]["neighbors"] == 3
    assert head["selection"] is None  # nothing to choose, and a validation split scores it
    assert "cross-validation" not in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--head", "logreg", "--k", "3"], "--k is for --head knn (or auto), not logreg"),
        (["--head", "knn", "--gamma", "0.1"], "--gamma is for --head svm (or auto), not knn"),
        (["--head", "svm", "--epochs", "50"], "--epochs is for --head mlp (or auto), not svm"),
        (["--head", "rf", "--dropout", "0.2"], "--dropout is for --head mlp (or auto), not rf"),
        (
            ["--head", "knn", "--lr", "0.1", "--hidden", "8"],
            "--lr, --hidden are for --head mlp (or auto), not knn",
        ),
        (["--head", "svm", "--C", "0"], "--C must be from 1e-06 to 1000000, got 0.0"),
        (["--head", "knn", "--k", "0"], "--k must be from 1 to 2147483647, got 0"),
        (["--head", "rf", "--max-depth", "-2"], "--max-depth must be from 1 to 10000, got -2"),
        (["--cv-folds", "1"], "--cv-folds must be at least 2, got 1"),
        (["--head", "svm", "--gamma", "1e-300"], "--gamma must be from 1e-09 to 1000, got 1e-300"),
        (["--val-split", "1"], "--val-split must be in [0, 1), got 1.0"),
        (
            ["--head", "knn", "--class-weight", "balanced"],
            "--class-weight balanced: the knn head has no class weights; choose --head logreg, "
            "svm, rf, mlp or auto",
        ),
    ],
)
def test_settings_that_cannot_work_fail_before_any_work(easy_store, tmp_path, extra, message):
    result = train(easy_store, tmp_path / "head", *extra)
    assert result.exit_code == 1, result.output
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "head").exists()


def test_head_auto_lists_every_kind_and_keeps_the_best_cross_validated_one(easy_store, tmp_path):
    result = train(
        easy_store, tmp_path / "head", "--head", "auto", "--epochs", "6", "--cv-folds", "2"
    )
    assert result.exit_code == 0, result.output
    head = head_json(tmp_path / "head")
    rows = head["auto"]
    assert [row["kind"] for row in rows] == list(HEAD_KINDS)
    best = max(row["cv_score"] for row in rows)
    kept = next(row for row in rows if row["kind"] == head["kind"])
    assert kept["cv_score"] == best == head["metrics"]["cv_accuracy"]
    table = result.output.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("head "))
    assert "cv accuracy" in table[header] and "validation" in table[header]
    for row, line in zip(rows, table[header + 1 : header + 1 + len(rows)]):
        assert line.split()[:3] == [row["kind"], f"{row['cv_score']:.3f}",
                                    f"{row['val_accuracy']:.3f}"]  # fmt: skip
        assert line.endswith("<- kept") == (row["kind"] == head["kind"])
    report = tmp_path / "head" / "report"
    assert (report / "history.csv").exists() == (head["kind"] == "mlp")
    X = np.zeros((3, DIM), np.float32)
    assert predict_with_onnx(tmp_path / "head", X).shape == (3, 3)


@pytest.mark.parametrize("kind", ["logreg", "svm", "rf"])
def test_balanced_class_weights_raise_the_minority_recall(kind, tmp_path):
    counts = {"common": 100, "rare": 5}
    X, labels = gaussian_classes(counts, 8, 1.0, 0, seed=2)  # the classes overlap
    store = write_feature_store(tmp_path / "features", X, labels)
    test_X, test_labels = gaussian_classes({"common": 300, "rare": 300}, 8, 1.0, 0, seed=12)
    recall = {}
    for weight in ("none", "balanced"):
        folder = tmp_path / weight
        result = train(store, folder, "--head", kind, "--class-weight", weight)
        assert result.exit_code == 0, result.output
        # validation is imbalanced (20 to 1): balanced accuracy and each class's recall
        line = next(line for line in result.output.splitlines() if "recall per class" in line)
        assert re.search(r"recall per class: (common|rare) [01]\.\d\d, (common|rare) ", line)
        head = head_json(folder)
        assert head["training"]["class_weight"] == weight
        assert head["hyperparameters"]["class_weight"] == (None if weight == "none" else weight)
        scoring = "balanced_accuracy" if weight == "balanced" else "accuracy"
        assert head["selection"]["scoring"] == scoring
        predicted = predict_with_onnx(folder, test_X).argmax(axis=1)
        rare = np.array(test_labels) == "rare"
        recall[weight] = float((predicted[rare] == 1).mean())
    assert recall["balanced"] > recall["none"], recall
    if kind == "logreg":  # predict reports it too, on labelled imbalanced input
        out = tmp_path / "predictions.csv"
        said = CliRunner().invoke(
            main, ["predict", str(tmp_path / "none"), str(store), "-o", str(out)]
        )
        assert said.exit_code == 0, said.output
        assert re.search(r"balanced accuracy [01]\.\d{3} \(classes are imbalanced\)", said.output)
        metrics = json.loads((tmp_path / "predictions_report" / "metrics.json").read_text())
        assert metrics["imbalanced"] and 0 < metrics["balanced_accuracy"] <= 1


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_val_split_zero_trains_a_final_head_on_every_image(kind, easy_store, tmp_path):
    folder = tmp_path / "head"
    mlp = ["--epochs", "12", "--patience", "3", "--lr", "0.01"] if kind == "mlp" else []
    result = train(easy_store, folder, "--head", kind, "--val-split", "0", *mlp, "--cv-folds", "2")
    assert result.exit_code == 0, result.output
    head = head_json(folder)
    assert head["training"]["train_images"] == 90 and head["training"]["val_images"] == 0
    assert head["selection"]["method"].startswith("2-fold cross-validation by image on 90 ")
    assert head["metrics"]["val_accuracy"] is None
    assert head["metrics"]["cv_accuracy"] >= 0.9
    assert "no held-out images (--val-split 0)" in result.output
    metrics = json.loads((folder / "report" / "metrics.json").read_text())
    assert "out-of-fold predictions" in metrics["scored_on"]
    assert metrics["images"] == 90  # each image once, from the fold that held it out
    if kind == "mlp":
        epochs = int(np.ceil(np.median(head["selection"]["best_epochs"])))
        assert head["training"]["epochs_run"] == epochs
        assert len(pd.read_csv(folder / "report" / "history.csv")) == epochs
        assert f"mlp: {epochs} epochs on every image" in result.output
    if kind == "rf":
        assert head["hyperparameters"]["trees_chosen_by"] == "out-of-bag log-loss"
    out = tmp_path / "predictions.csv"
    predicted = CliRunner().invoke(main, ["predict", str(folder), str(easy_store), "-o", str(out)])
    assert predicted.exit_code == 0, predicted.output
    assert (pd.read_csv(out)["prediction"] == pd.read_csv(out)["label"]).mean() >= 0.9


def views_of(images_a_class: int) -> LabelledFeatures:
    """Two classes of images, each with two augmented views besides its plain one."""
    paths = [f"{c}/{i}.png" for c in "ab" for i in range(images_a_class) for _ in range(3)]
    labels = np.array([p[0] for p in paths])
    views = np.array([0, 1, 2] * (2 * images_a_class))
    X = np.zeros((len(paths), 4), np.float32)
    return LabelledFeatures(X, labels, paths, ["a", "b"], {}, views)


def test_folds_keep_every_view_of_an_image_on_one_side():
    data = views_of(5)
    paths, labels, views = data.paths, data.labels, data.views
    rows = np.arange(30)
    folds, images = image_folds(data, rows, 5, seed=0)
    assert images == 10 and len(folds) == 5
    held = []
    for train, held_out in folds:
        assert (views[held_out] == 0).all()
        assert not {paths[i] for i in train} & {paths[i] for i in held_out}
        assert sorted(labels[held_out]) == ["a", "b"]  # stratified
        assert len(train) == 8 * 3  # every view of the other images
        held += [paths[i] for i in held_out]
    assert sorted(held) == sorted(set(paths))  # each image held out once
    plain_only, _ = image_folds(data, rows, 5, seed=0, views_in_training="none")
    assert all((views[train] == 0).all() for train, _ in plain_only)
    assert [h.tolist() for _, h in plain_only] == [h.tolist() for _, h in folds]
    one_image_each = np.r_[0:3, 15:18]  # a/0.png and b/0.png with their views
    assert image_folds(data, one_image_each, 5, seed=0) == ([], 2)


def test_cross_validation_runs_on_a_stratified_subsample_of_a_big_training_set():
    data = views_of(20)  # 40 images, 120 rows
    folds, images = image_folds(data, np.arange(120), 5, seed=0, max_rows=60)
    assert images == 20 and len(folds) == 5  # half the rows: half the images
    held = np.concatenate([held_out for _, held_out in folds])
    assert sorted(data.labels[held].tolist()) == ["a"] * 10 + ["b"] * 10
    again, _ = image_folds(data, np.arange(120), 5, seed=0, max_rows=60)
    assert all((a == b).all() for (a, _), (b, _) in zip(again, folds))  # reproducible
    smallest, images = image_folds(data, np.arange(120), 5, seed=0, max_rows=6)
    assert images == 10 and len(smallest) == 5  # never under a fold's worth of each class


def test_head_auto_leaves_out_a_kind_that_cannot_train_and_says_why(tmp_path):
    """Eight images, three quarters held out: one training image a class leaves nothing to
    cross-validate, and svm's Platt scaling needs two."""
    store = Path(__file__).parent / "data" / "previous_main" / "store"
    result = train(store, tmp_path / "head", "--head", "auto", "--val-split", "0.75",
                   "--epochs", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--head auto: leaving out svm: the svm head calibrates its probabilities" in (
        result.output
    )
    assert "logreg: no cross-validation: a class has 1 training image(s)" in result.output
    head = head_json(tmp_path / "head")
    assert [row["kind"] for row in head["auto"]] == ["logreg", "knn", "rf", "mlp"]
    assert all(row["cv_score"] is None for row in head["auto"])
    best = max(row["val_accuracy"] for row in head["auto"])  # no folds: validation decides
    assert next(r for r in head["auto"] if r["kind"] == head["kind"])["val_accuracy"] == best
    assert head["selection"] is None


def test_a_high_val_split_on_imbalanced_classes_still_trains_on_every_class(tmp_path):
    """50, 2 and 2 images at --val-split 0.9: rounding alone would hold out both images of
    a small class (and at 0.2 leave one out of validation)."""
    X, labels = gaussian_classes({"big": 50, "small": 2, "tiny": 2}, 8, 3.0, 0, seed=4)
    store = write_feature_store(tmp_path / "features", X, labels)
    for split in ("0.9", "0.2"):
        for kind in ("logreg", "knn", "rf"):
            folder = tmp_path / f"{kind}-{split}"
            result = train(store, folder, "--head", kind, "--val-split", split)
            assert result.exit_code == 0, result.output
            metrics = json.loads((folder / "report" / "metrics.json").read_text())
            assert all(m["support"] >= 1 for m in metrics["per_class"].values()), metrics
            assert predict_with_onnx(folder, X[:2]).shape == (2, 3)  # every class a column
