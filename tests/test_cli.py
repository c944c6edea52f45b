"""The command line as a whole: help texts and the demo."""

from __future__ import annotations

import json

import onnx
import pandas as pd
import pytest
from click.testing import CliRunner

from headstart.cli import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"headstart {command}" in result.output


def test_top_level_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in main.commands:
        assert command in result.output


def test_demo_without_network_says_so_and_uses_random_weights(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no weights cached either
    out = tmp_path / "demo"

    result = CliRunner().invoke(main, ["demo", str(out), "--image-size", "75"])

    assert result.exit_code == 0, result.output
    assert "ImageNet weights could not be had" in result.output
    assert "using --weights random instead" in result.output
    assert "embedded 60, skipped 0, already present 0" in result.output
    fingerprint = json.loads((out / "features" / "_headstart.json").read_text())["fingerprint"]
    assert fingerprint["weights"] == "random(seed=0)"
    frame = pd.read_parquet(out / "features")
    assert sorted(frame["label"].unique()) == ["circle", "square", "triangle"]
    assert len(frame) == 60
    assert "3. trained a logreg head on 48 of them: validation accuracy" in result.output
    head = json.loads((out / "head" / "head.json").read_text())
    assert head["kind"] == "logreg" and head["fingerprint"] == fingerprint

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 24 and set(predictions["label"]) == {"circle", "square", "triangle"}
    accuracy = (predictions["label"] == predictions["prediction"]).mean()
    assert f"4. predicted the 24 held-out images from their pixels: accuracy {accuracy:.3f}" in (
        result.output
    )
    assert (out / "predictions_report" / "metrics.json").is_file()
    assert f"5. exported pixels -> probabilities as one ONNX model: {out / 'model.onnx'}" in (
        result.output
    )
    metadata = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert metadata["weights"] == "random(seed=0)"  # the outputs record the fallback


def test_library_errors_become_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["embed", str(tmp_path / "nowhere"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'nowhere'} does not exist\n"
    assert "Traceback" not in result.output
