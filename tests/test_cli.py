"""The command line as a whole: help texts and the demo."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main


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
    assert "3. trained a logreg head on 48 images: validation accuracy" in result.output
    head = json.loads((out / "head" / "head.json").read_text())
    assert head["kind"] == "logreg" and head["fingerprint"] == fingerprint


def test_library_errors_become_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["embed", str(tmp_path / "nowhere"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'nowhere'} does not exist\n"
    assert "Traceback" not in result.output
