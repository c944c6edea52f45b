"""Stores and heads written before the architecture step still work: tests/data/previous_main
holds a store (8 images, 75 px, random weights) and a logreg head on it, both written by
main at 936d203. Only their features are used, so no backbone is needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from headstart.cli import main

WRITTEN_BEFORE = Path(__file__).parent / "data" / "previous_main"


@pytest.fixture
def previous(tmp_path) -> Path:
    """A copy: the tests never write into the repository's data."""
    shutil.copytree(WRITTEN_BEFORE, tmp_path / "previous")
    return tmp_path / "previous"


def _run(*args) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_head_trains_on_a_store_written_before(previous, tmp_path):
    said = _run("train", previous / "store", "-o", tmp_path / "head", "--val-split", "0.25")
    assert "validation accuracy" in said
    head = json.loads((tmp_path / "head" / "head.json").read_text())
    stored = json.loads((previous / "store" / "_headstart.json").read_text())
    assert head["fingerprint"] == stored["fingerprint"]


def test_a_head_written_before_predicts_from_a_store_written_before(previous, tmp_path):
    out = tmp_path / "predictions.csv"
    _run("predict", previous / "head", previous / "store", "-o", out)
    predictions = pd.read_csv(out)
    assert len(predictions) == 8
    assert set(predictions["label"]) == {"red", "blue"}
    assert set(predictions["prediction"]) <= {"red", "blue"}


SVM_BEFORE_TUNING = Path(__file__).parent / "data" / "before_tuning" / "svm_head"


def test_a_head_written_before_hyperparameters_were_tuned_predicts_and_is_described(
    previous, tmp_path
):
    """An svm head written by main at 419f522 (fixed C and gamma, no `selection` in
    head.json) on the store above: predict and info read it as they read today's."""
    head = tmp_path / "svm_head"
    shutil.copytree(SVM_BEFORE_TUNING, head)
    out = tmp_path / "predictions.csv"
    _run("predict", head, previous / "store", "-o", out)
    predictions = pd.read_csv(out)
    assert len(predictions) == 8 and set(predictions["prediction"]) <= {"red", "blue"}
    said = _run("info", head)
    assert "svm head" in said and "cross-validation" not in said


def test_info_describes_what_was_written_before(previous):
    store = _run("info", previous / "store")
    head = _run("info", previous / "head")
    assert "8" in store and "inception_v3" in store
    assert "logreg" in head and "blue" in head and "red" in head


def test_features_written_before_the_backbone_families_match_todays(previous):
    """Today's fingerprint of the network that made a store written before (InceptionV3, in
    the words used before the other backbones came) matches the store's: new images may
    join it."""
    from headstart.extractor.fingerprint import fingerprint_differences, make_fingerprint

    stored = json.loads((previous / "store" / "_headstart.json").read_text())["fingerprint"]
    manifest = {key: value for key, value in stored.items() if key != "preprocessing"}
    today = make_fingerprint(manifest, stored["image_size"], stored.get("decode", "exact"))

    assert today["preprocessing"] == stored["preprocessing"]
    assert fingerprint_differences(stored, today) == []
