"""Stores bigger than memory: train streams them under --memory-budget, predict streams any
store, info reads no features, and embed --store-dtype float16 halves a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from headstart.cli import main
from headstart.heads.artifact import predict_with_onnx
from headstart.heads.dataset import load_labelled_features, split_by_image
from headstart.heads.memory import parse_memory_budget
from headstart.heads.train import train_head
from helpers import write_feature_store

SMALL_BUDGET = 64 << 20  # the smallest --memory-budget


def learnable(rows: int, dim: int = 2048, classes: int = 4, signal: float = 0.06, seed=0):
    """Features drawn around a centre per class, class after class (as embed writes a
    folder): a linear head reaches about 0.9, not 1."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    y = np.arange(rows) * classes // rows
    X = np.maximum(signal * centres[y] + rng.standard_normal((rows, dim), dtype=np.float32), 0)
    return X, [f"class{label}" for label in y]


@pytest.fixture(scope="module")
def store_3000(tmp_path_factory):
    """3,000 rows of 2,048 features (24 MB) in parts of 250: in memory at the default
    budget, streamed at the smallest."""
    X, labels = learnable(3000)
    return write_feature_store(tmp_path_factory.mktemp("big") / "store", X, labels, 250)


@pytest.fixture(scope="module")
def store_8000(tmp_path_factory):
    """8,000 rows of 512 features (16 MB) in parts of 500: many more rows than features, as
    in the stores that stream (stochastic gradient descent needs them)."""
    X, labels = learnable(8000, dim=512, signal=0.12)
    return write_feature_store(tmp_path_factory.mktemp("big") / "store", X, labels, 500)


def head_json(folder: Path) -> dict:
    return json.loads((folder / "head.json").read_text())


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_streamed_heads_match_in_memory_accuracy(kind, store_8000, tmp_path, caplog):
    """The same store, read whole and streamed a window of parts at a time: the streamed
    head learns from every training row and its validation accuracy is within a point
    (C given: the cross-validation's subsample is another test's)."""
    options = {"epochs": 30} if kind == "mlp" else {"given": {"C": 0.01}}
    in_memory = train_head(store_8000, tmp_path / "memory", kind, **options)
    with caplog.at_level("INFO", logger="headstart"):
        streamed = train_head(
            store_8000, tmp_path / "streamed", kind, memory_budget=SMALL_BUDGET, **options
        )
    assert "streaming them from the store" in caplog.text
    assert not head_json(tmp_path / "memory")["training"]["streamed"]
    training = head_json(tmp_path / "streamed")["training"]
    assert training["streamed"] and training["train_rows_used"] == training["train_rows"] == 6400
    assert streamed.val_images == in_memory.val_images == 1600  # the same split
    assert 0.75 < in_memory.accuracy < 0.95
    assert abs(streamed.accuracy - in_memory.accuracy) <= 0.01, (in_memory, streamed)
    if kind == "logreg":  # early stopping on the validation rows, a line per pass
        assert "logreg: pass 2: validation log-loss" in caplog.text
    # the saved head gives what was scored
    data = load_labelled_features(store_8000)
    _, val = split_by_image(data, 0.2, seed=0)
    probabilities = predict_with_onnx(tmp_path / "streamed", data.X[val])
    correct = int(np.sum(probabilities.argmax(1) == data.y[val]))
    assert abs(correct - round(streamed.accuracy * 1600)) <= 1


def test_heads_that_hold_every_row_train_on_a_subsample_that_fits(tmp_path, caplog):
    X, labels = learnable(5000, signal=0.1)
    store = write_feature_store(tmp_path / "store", X, labels, 500)
    with caplog.at_level("INFO", logger="headstart"):
        result = train_head(
            store, tmp_path / "knn", "knn", given={"neighbors": 5}, memory_budget=SMALL_BUDGET
        )
    training = head_json(tmp_path / "knn")["training"]
    assert training["train_rows"] == 4000
    assert 1000 < training["train_rows_used"] < 4000
    used = f"{training['train_rows_used']:,}"
    assert f"knn: trained on a stratified subsample of {used} of the 4,000 training rows" in (
        caplog.text
    )
    assert result.accuracy > 0.5  # above chance (0.25)
    metrics = json.loads((tmp_path / "knn/report/metrics.json").read_text())
    confusion = metrics["confusion_matrix"]["matrix"]
    assert np.sum(confusion) == result.val_images == 1000  # every validation image, streamed


def test_cross_validation_on_a_streamed_store_covers_what_the_budget_allows(
    store_3000, tmp_path, caplog
):
    with caplog.at_level("INFO", logger="headstart"):
        train_head(store_3000, tmp_path / "head", "logreg", memory_budget=SMALL_BUDGET)
    selection = head_json(tmp_path / "head")["selection"]
    images = int(selection["method"].split(" on ")[1].split()[0])
    assert 100 < images < 2000  # the budget's share, not the 2,000 rows of a store in memory
    assert "on a stratified subsample of" in caplog.text


def test_the_kinds_of_head_auto_share_one_standardizing_pass_and_validation_read(
    store_3000, monkeypatch
):
    """logreg and mlp both stream: the standardizing pass over the training rows and the
    validation subsample are made once for every kind (not once per kind)."""
    from headstart.heads.store_rows import StoreRows
    from headstart.heads.streamed import standardization, validation_subsample

    data = load_labelled_features(store_3000, SMALL_BUDGET)
    assert data.streamed
    train, val = split_by_image(data, 0.2, 0)
    reads = []
    features = StoreRows.features
    monkeypatch.setattr(
        StoreRows, "features", lambda self, rows: reads.append(len(rows)) or features(self, rows)
    )
    first = standardization(data, train, 500)
    read_once = sum(reads)
    assert read_once == len(train)
    assert standardization(data, train, 500) is first and sum(reads) == read_once
    assert standardization(data, val, 500) is not first  # other rows: another pass
    reads.clear()
    X, y = validation_subsample(data, val, data.budget, 0)
    again = validation_subsample(data, val, data.budget, 0)
    assert again[0] is X and sum(reads) == len(X)


def test_val_split_0_on_a_streamed_store(store_3000, tmp_path):
    result = train_head(
        store_3000, tmp_path / "head", "logreg", val_split=0, memory_budget=SMALL_BUDGET
    )
    assert result.accuracy is None and result.train_images == 3000
    report = json.loads((tmp_path / "head/report/metrics.json").read_text())
    assert "out-of-fold" in report["scored_on"]
    misclassified = (tmp_path / "head/report/misclassified.csv").read_text().splitlines()
    stored = set(load_labelled_features(store_3000).paths)
    assert all(line.split(",")[0] in stored for line in misclassified[1:])


RSS_SCRIPT = """
import resource, sys
from headstart.heads.train import train_head
train_head(sys.argv[1], sys.argv[2], "logreg", memory_budget=int(sys.argv[3]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss_of_training(store: Path, out: Path, budget: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(store), str(out), str(budget)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


def test_a_store_bigger_than_the_budget_trains_within_it(tmp_path):
    """20,000 rows of 2,048 features (160 MB; about 1 GB to train in memory) under the
    smallest budget: the peak grows by less than the budget over a 40-row store's."""
    X, labels = learnable(20_000, classes=4, signal=0.1, seed=1)
    big = write_feature_store(tmp_path / "big", X, labels, 1000)
    del X
    tiny = write_feature_store(tmp_path / "tiny", *learnable(40, classes=4, seed=2))
    baseline = peak_rss_of_training(tiny, tmp_path / "tiny-head", SMALL_BUDGET)
    peak = peak_rss_of_training(big, tmp_path / "big-head", SMALL_BUDGET)
    assert head_json(tmp_path / "big-head")["training"]["streamed"]
    assert peak - baseline < SMALL_BUDGET, (peak - baseline) / 2**20


def test_predict_from_a_store_streams_it_and_equals_the_head_on_every_row(store_3000, tmp_path):
    """Parts whose paths are out of order (a later run added images): the rows come out in
    path order, each with the head's output on its features."""
    X, labels = learnable(1200, dim=2048, seed=3)
    order = np.r_[600:1200, 0:600]  # the second half of the paths in the first parts
    store = write_feature_store(tmp_path / "store", X[order], [labels[i] for i in order], 100)
    train_head(store_3000, tmp_path / "head", "logreg", given={"C": 0.01})
    runner = CliRunner()
    result = runner.invoke(
        main, ["predict", str(tmp_path / "head"), str(store), "-o", str(tmp_path / "p.csv")]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()[1:]
    paths = [line.split(",")[0] for line in lines]
    assert paths == sorted(paths) and len(paths) == 1200
    stored = pq.read_table(list(store.glob("part-*.parquet"))).sort_by("path")
    features = np.asarray(stored["features"].combine_chunks().flatten(), np.float32)
    expected = predict_with_onnx(tmp_path / "head", features.reshape(1200, 2048))
    classes = head_json(tmp_path / "head")["classes"]
    predicted = [line.split(",")[2] for line in lines]
    assert predicted == [classes[i] for i in expected.argmax(axis=1)]
    probability = np.array([float(line.split(",")[3]) for line in lines])
    np.testing.assert_allclose(probability, expected.max(axis=1), atol=1e-6)
    # a window of parts at a time (at 64 MiB, 3,000 rows take two), or all at once: the same
    for name, budget in (("small", "64MiB"), ("large", "1GiB")):
        result = runner.invoke(
            main,
            ["predict", str(tmp_path / "head"), str(store_3000), "-o",
             str(tmp_path / f"{name}.csv"), "--memory-budget", budget],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert (tmp_path / "small.csv").read_text() == (tmp_path / "large.csv").read_text()


def test_probabilities_too_big_for_the_budget_wait_in_a_file_and_come_out_the_same(
    store_3000, tmp_path, monkeypatch
):
    """A million rows of a thousand classes would hold 4 GB of probabilities until they are
    written in path order: past a share of the budget they wait in a file without a name
    beside the output. The predictions and the report are the same; nothing is left."""
    import errno

    from headstart.heads import predict as predicting

    X, labels = learnable(1200, dim=2048, seed=3)
    order = np.r_[600:1200, 0:600]  # parts out of path order: writes all over the file
    store = write_feature_store(tmp_path / "store", X[order], [labels[i] for i in order], 100)
    train_head(store_3000, tmp_path / "head", "logreg", given={"C": 0.01})
    runs = tmp_path / "runs"
    for name, share in (("memory", 1.0), ("file", 0.0)):
        monkeypatch.setattr(predicting, "PROBABILITIES_SHARE", share)
        (runs / name).mkdir(parents=True)
        result = CliRunner().invoke(
            main, ["predict", str(tmp_path / "head"), str(store), "-o",
                   str(runs / name / "p.csv"), "--top-k", "2"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert (runs / "file" / "p.csv").read_text() == (runs / "memory" / "p.csv").read_text()
    metrics = [
        (runs / name / "p_report" / "metrics.json").read_text() for name in ("file", "memory")
    ]
    assert metrics[0] == metrics[1]
    assert sorted(p.name for p in (runs / "file").iterdir()) == ["p.csv", "p_report"]

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    # -o in a folder still to be made: the file waits in the nearest folder there is
    made_later = runs / "new" / "deeper" / "p.csv"
    args = ["predict", str(tmp_path / "head"), str(store), "-o", str(made_later)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert len(made_later.read_text().splitlines()) == 1 + 1200

    monkeypatch.setattr(predicting.os, "posix_fallocate", no_space)
    full = CliRunner().invoke(
        main, ["predict", str(tmp_path / "head"), str(store), "-o", str(runs / "full.csv")]
    )
    assert full.exit_code == 1
    assert f"Error: cannot write in {runs}: No space left on device (the probabilities of " in (
        full.stderr
    )
    assert not (runs / "full.csv").exists()


def test_info_reads_the_label_column_not_the_features(store_3000, tmp_path):
    """A part whose features are damaged: info counts its labels all the same; --verify
    reads every row and names the part."""
    X, labels = learnable(40, seed=4)
    X[3, 5] = np.nan
    store = write_feature_store(tmp_path / "store", X, labels, 20)
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(store)])
    assert result.exit_code == 0, result.output
    assert "rows: 40" in result.output and "class0: 10" in result.output
    verified = runner.invoke(main, ["info", str(store), "--verify"])
    assert verified.exit_code == 1
    assert "part-00001.parquet: 1 rows hold features that are not finite" in verified.output


@pytest.mark.parametrize(
    "given, message",
    [
        ("lots", "--memory-budget must be a size such as 512MB, 1GiB or 2G, got 'lots'"),
        ("1 parsec", "--memory-budget must be a size such as"),
        ("-1G", "--memory-budget must be a size such as"),
        ("10MB", "--memory-budget must be at least 64 MiB, got 10 MiB"),
        ("0", "--memory-budget must be at least 64 MiB, got 0 bytes"),
    ],
)
def test_a_memory_budget_that_cannot_work_fails_before_any_work(
    given, message, store_3000, tmp_path
):
    result = CliRunner().invoke(
        main, ["train", str(store_3000), "-o", str(tmp_path / "head"), "--memory-budget", given]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "head").exists()


def test_memory_budget_sizes():
    assert parse_memory_budget("1GiB") == parse_memory_budget("1G") == 1 << 30
    assert parse_memory_budget("800MB") == 800_000_000
    assert parse_memory_budget("1.5g") == 3 << 29
    assert parse_memory_budget(" 2 GB ") == parse_memory_budget("2e9") == 2_000_000_000


def test_a_part_replaced_while_a_store_streams_is_an_error_naming_it(store_3000, tmp_path):
    import shutil

    from headstart.extractor.errors import StoreError

    copy = tmp_path / "store"
    shutil.copytree(store_3000, copy)
    data = load_labelled_features(copy, SMALL_BUDGET)
    assert data.streamed
    part = copy / "part-00002.parquet"
    table = pq.read_table(part)
    part.unlink()
    pq.write_table(table, part)  # the same rows, another file: what a compaction does
    with pytest.raises(
        StoreError, match="part-00002.parquet changed or went while it was being read"
    ):
        data.features(np.arange(3000))


def test_float16_stores_round_trip_and_refuse_mixing(run_embed, sample_images, tmp_path):
    full = tmp_path / "float32"
    half = tmp_path / "float16"
    assert run_embed(sample_images, full).exit_code == 0
    result = run_embed(sample_images, half, "--store-dtype", "float16")
    assert result.exit_code == 0, result.output
    part = next(half.glob("part-*.parquet"))
    assert (
        str(pq.read_schema(part).field("features").type)
        == "fixed_size_list<element: halffloat>[2048]"
    )
    assert part.stat().st_size < 0.7 * next(full.glob("part-*.parquet")).stat().st_size
    a, b = load_labelled_features(full), load_labelled_features(half)
    assert b.X.dtype == np.float32 and a.paths == b.paths
    cosine = (a.X * b.X).sum(1) / np.linalg.norm(a.X, axis=1) / np.linalg.norm(b.X, axis=1)
    assert cosine.min() > 0.9999
    assert b.fingerprint["store_dtype"] == "float16" and "store_dtype" not in a.fingerprint
    # a re-run keeps the store's dtype; asking for the other one is refused
    again = run_embed(sample_images, half)
    assert again.exit_code == 0 and "already present 12" in again.output
    mixed = run_embed(sample_images, half, "--store-dtype", "float32")
    assert mixed.exit_code == 1
    assert "store_dtype: float16 (store) vs float32 (this run)" in mixed.output
    mixed = run_embed(sample_images, full, "--store-dtype", "float16")
    assert "store_dtype: float32 (store) vs float16 (this run)" in mixed.output
    # a head trained on one predicts from the other
    train_head(half, tmp_path / "head", "logreg", given={"C": 1.0}, val_split=0.5)
    runner = CliRunner()
    result = runner.invoke(
        main, ["predict", str(tmp_path / "head"), str(full), "-o", str(tmp_path / "p.csv")]
    )
    assert result.exit_code == 0, result.output
    info = runner.invoke(main, ["info", str(half)])
    assert "store_dtype: float16" in info.output


def test_features_beyond_float16_are_refused_not_stored_as_infinity():
    from headstart.extractor.errors import StoreError
    from headstart.extractor.feature_rows import FeatureRows, store_schema

    rows = FeatureRows(["a/1.png"], ["a"], ["0" * 64], [8], [8], [np.full(4, 1e5, np.float32)])
    schema = store_schema(4, {"store_dtype": "float16"})
    with pytest.raises(StoreError, match="do not fit --store-dtype float16"):
        rows.to_table(schema)
    assert rows.to_table(store_schema(4, {})).num_rows == 1


def test_unknown_store_dtype_is_refused(sample_images, tmp_path):
    result = CliRunner().invoke(
        main, ["embed", str(sample_images), "-o", str(tmp_path / "s"), "--store-dtype", "int8"]
    )
    assert result.exit_code == 2 and "'int8' is not one of 'float32', 'float16'" in result.output
    assert not (tmp_path / "s").exists()
    assert os.path.isdir(sample_images)


def test_windows_cover_every_row_once_in_a_seeded_shuffled_order(store_3000, caplog):
    from headstart.extractor.store import FeatureStore
    from headstart.heads.store_rows import StoreRows

    store = FeatureStore(store_3000)
    rows = StoreRows.read(store, store.fingerprint())
    everything = load_labelled_features(store_3000).X
    wanted = np.arange(0, 3000, 3)  # a third of the rows, from every part
    windows = list(rows.windows(wanted, 300, seed=7))
    assert len(windows) >= 3
    seen = np.concatenate([chosen for chosen, _ in windows])
    assert sorted(seen.tolist()) == wanted.tolist()  # each once
    assert not np.array_equal(seen, wanted)  # shuffled
    for chosen, X in windows:
        np.testing.assert_array_equal(X, everything[chosen])  # each row its own features
    again = np.concatenate([chosen for chosen, _ in rows.windows(wanted, 300, seed=7)])
    np.testing.assert_array_equal(seen, again)  # reproducible
    in_order = np.concatenate([chosen for chosen, _ in rows.windows(wanted, 300)])
    np.testing.assert_array_equal(in_order, wanted)  # no seed: store order
    assert "more than the" not in caplog.text
    with caplog.at_level("WARNING", logger="headstart"):
        list(rows.windows(np.arange(3000), 100))  # parts of 250 rows: read whole, said once
        list(rows.windows(np.arange(3000), 100))
    assert caplog.text.count("holds parts of up to 250 rows, more than the 100 rows") == 1


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_a_part_that_goes_while_a_head_streams_is_one_error(
    kind, store_8000, tmp_path, monkeypatch
):
    """Inside TensorFlow's pipeline too: the store's own message, no traceback, no head."""
    from headstart.extractor.errors import StoreError
    from headstart.heads.store_rows import StoreRows

    reads = []
    original = StoreRows._part_features

    def flaky(self, number):
        reads.append(number)
        if len(reads) > 40:  # after the standardizing pass and the cross-validation
            raise StoreError(f"{self.parts[number].path} changed or went while it was being read")
        return original(self, number)

    monkeypatch.setattr(StoreRows, "_part_features", flaky)
    result = CliRunner().invoke(
        main,
        ["train", str(store_8000), "-o", str(tmp_path / "head"), "--head", kind,
         "--memory-budget", "64MiB", *(["--epochs", "5"] if kind == "mlp" else [])],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "changed or went while it was being read" in last
    assert "Traceback" not in result.output
    assert not (tmp_path / "head").exists()
