"""Progress that batch logs can see (extractor/progress.py): without a terminal, a line
every HEADSTART_PROGRESS_SECONDS with done/total, rate and time left, from embed, train's
streamed passes and epochs, predict and train-cnn."""

from __future__ import annotations

import logging
import re

import numpy as np
from click.testing import CliRunner

from headstart.cli import main
from headstart.extractor.progress import Progress
from helpers import write_feature_store

LINE = re.compile(r"^(?P<name>.+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+)")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def progress_lines(output: str, name: str) -> list[re.Match]:
    lines = [LINE.match(line) for line in output.splitlines()]
    return [line for line in lines if line and line["name"] == name]


def test_a_line_says_done_total_rate_and_time_left(caplog, monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr("headstart.extractor.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="headstart"):
        with Progress(1000, "embed", seconds=15) as progress:
            progress.update(250)  # at 10 s: not yet 15 s since the start
            progress.update(250)  # at 20 s: a line
            progress.update(100)  # at 30 s: 10 s since the last line
    assert [r.message for r in caplog.records] == [
        "embed: 500/1,000 images (50%), 25 images/s, about 20s left"
    ]


def test_files_known_unchanged_count_as_done_but_not_in_the_rate(caplog, monkeypatch):
    """A re-run trusts 9,000 files at once: they are done, but the time left is the rate
    of the files it reads."""
    clock = iter([0.0, 20.0])
    monkeypatch.setattr("headstart.extractor.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="headstart"):
        with Progress(10_000, "embed", seconds=15, initial=9_000) as progress:
            progress.update(100)  # at 20 s: 5 images/s
    assert [r.message for r in caplog.records] == [
        "embed: 9,100/10,000 images (91%), 5 images/s, about 3m00s left"
    ]


def test_embed_without_a_terminal_logs_its_progress(
    run_embed, sample_images, tmp_path, monkeypatch
):
    monkeypatch.setenv("HEADSTART_PROGRESS_SECONDS", "0.000001")
    result = run_embed(sample_images, tmp_path / "features", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    lines = progress_lines(result.output, "embed")
    assert lines and all(line["total"] == "12" and line["unit"] == "images" for line in lines)
    done = [number(line["done"]) for line in lines]
    assert done == sorted(done) and 0 < done[0] < 12
    assert re.search(r"images/s, (about \d+s|less than 1s) left", result.output)
    assert "\r" not in result.output  # no bar drawn into a log


def test_the_default_interval_keeps_a_short_run_quiet(run_embed, sample_images, tmp_path):
    result = run_embed(sample_images, tmp_path / "features")
    assert progress_lines(result.output, "embed") == []


def test_a_nonsense_interval_is_an_error_before_any_work(sample_images, tmp_path, monkeypatch):
    for said in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv("HEADSTART_PROGRESS_SECONDS", said)
        result = CliRunner().invoke(main, ["embed", str(sample_images), "-o", str(tmp_path / "f")])
        assert result.exit_code == 1
        assert f"Error: HEADSTART_PROGRESS_SECONDS={said!r}: give the seconds between two" in (
            result.output
        )
        assert not (tmp_path / "f").exists()


def learnable(rows: int, dim: int, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), rows // classes)
    X = rng.normal(size=(len(labels), dim)).astype(np.float32) + 0.2 * labels[:, None]
    return X, [f"class{label}" for label in labels]


def test_streamed_training_and_predict_log_their_passes(tmp_path, monkeypatch):
    """A store bigger than --memory-budget: logreg's passes, mlp's epochs (their batches)
    and predict's windows each log lines of rows or batches done."""
    monkeypatch.setenv("HEADSTART_PROGRESS_SECONDS", "0.000001")
    X, labels = learnable(3000, 2048)
    store = write_feature_store(tmp_path / "store", X, labels, rows_per_part=250)
    budget = ["--memory-budget", "64MiB"]
    logreg = CliRunner().invoke(
        main, ["train", str(store), "-o", str(tmp_path / "logreg"), "--head", "logreg",
               "--C", "1", *budget],
    )  # fmt: skip
    assert logreg.exit_code == 0, logreg.output
    passes = progress_lines(logreg.output, "logreg: pass 1")
    assert passes and {line["unit"] for line in passes} == {"rows"}
    assert number(passes[0]["done"]) < number(passes[0]["total"])  # lines within the pass
    assert progress_lines(logreg.output, "standardizing the features")

    mlp = CliRunner().invoke(
        main, ["train", str(store), "-o", str(tmp_path / "mlp"), "--head", "mlp",
               "--epochs", "1", *budget],
    )  # fmt: skip
    assert mlp.exit_code == 0, mlp.output
    batches = progress_lines(mlp.output, "epoch 1/1")
    assert batches and {line["unit"] for line in batches} == {"batches"}

    out = tmp_path / "predictions.csv"
    predict = CliRunner().invoke(
        main, ["predict", str(tmp_path / "logreg"), str(store), "-o", str(out), *budget]
    )
    assert predict.exit_code == 0, predict.output
    assert {line["total"] for line in progress_lines(predict.output, "predict")} == {"3,000"}
