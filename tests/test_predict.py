"""`headstart predict`, `export` and `info`, end to end through the CLI: generated images ->
embed -> train (every head kind) -> predictions from images and from features, and the fused
model checked in a fresh Python that never imports headstart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from click.testing import CliRunner

from corpus import colour_images
from headstart.cli import main
from headstart.extractor import embed
from headstart.extractor.decode import load_image
from headstart.heads.train import HEAD_KINDS
from helpers import IMAGE_SIZE, run_cli_in_subprocess

CLASSES = ["blue", "green", "red"]


@dataclass
class Trained:
    root: Path
    new: Path  # labelled images, plus one unreadable and one unlabelled
    new_features: Path
    readable: list[str]  # the paths predict must return, sorted
    heads: dict[str, Path]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, weights_file) -> Trained:
    root = tmp_path_factory.mktemp("predict")
    images = colour_images(root / "images", per_class=16)
    embed(images, root / "features", weights=str(weights_file), image_size=IMAGE_SIZE)
    new = colour_images(root / "new", per_class=5, seed=1)
    (new / "red" / "bad.jpg").write_text("not an image")
    shutil.copy(new / "green" / "000.png", new / "loose.png")
    readable = sorted(p.relative_to(new).as_posix() for p in new.rglob("*.png"))
    embed(new, root / "new-features", weights=str(weights_file), image_size=IMAGE_SIZE)
    heads = {}
    for kind in HEAD_KINDS:
        heads[kind] = root / f"head-{kind}"
        epochs = ("--epochs", 40) if kind == "mlp" else ()
        result = run("train", root / "features", "-o", heads[kind], "--head", kind, *epochs)
        assert result.exit_code == 0, result.output
    return Trained(root, new, root / "new-features", readable, heads)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_predictions(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False)  # an empty label stays ""


def probability_matrix(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Every class's probability, from predictions made with --top-k = number of classes."""
    matrix = np.full((len(frame), len(classes)), np.nan)
    for rank in range(1, len(classes) + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        for row, (name, p) in enumerate(
            zip(frame["prediction" + suffix], frame["probability" + suffix])
        ):
            matrix[row, classes.index(name)] = p
    assert not np.isnan(matrix).any()
    return matrix


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_images_and_their_features_give_identical_predictions(kind, trained, tmp_path):
    head = trained.heads[kind]
    from_images = run("predict", head, trained.new, "-o", tmp_path / "a.csv", "--top-k", 3)
    from_features = run(
        "predict", head, trained.new_features, "-o", tmp_path / "b.csv", "--top-k", 3
    )
    assert from_images.exit_code == 0, from_images.output
    assert from_features.exit_code == 0, from_features.output

    a, b = read_predictions(tmp_path / "a.csv"), read_predictions(tmp_path / "b.csv")
    assert a["path"].tolist() == b["path"].tolist() == trained.readable  # sorted, bad one out
    for column in ("label", "prediction", "prediction_2", "prediction_3"):
        assert a[column].tolist() == b[column].tolist(), column
    np.testing.assert_allclose(
        probability_matrix(a, CLASSES), probability_matrix(b, CLASSES), atol=1e-6
    )
    labelled = a[a["label"] != ""]
    accuracy = (labelled["label"] == labelled["prediction"]).mean()
    assert len(labelled) == 15 and accuracy >= 0.8  # colours are easy even for random weights
    for result in (from_images, from_features):
        assert f"accuracy {accuracy:.3f} on 15 labelled images" in result.output


def test_bad_images_are_skipped_and_listed_and_labels_reported(trained, tmp_path):
    out = tmp_path / "out" / "predictions.csv"
    result = run("predict", trained.heads["logreg"], trained.new, "-o", out)
    assert result.exit_code == 0, result.output
    assert "skipped red/bad.jpg: not an image Pillow can read" in result.stderr
    errors = pd.read_csv(tmp_path / "out" / "predictions_errors.csv")
    assert errors["path"].tolist() == ["red/bad.jpg"]

    frame = read_predictions(out)
    assert frame.columns.tolist() == ["path", "label", "prediction", "probability"]
    assert frame.set_index("path").loc["loose.png", "label"] == ""  # no class folder
    metrics = json.loads((tmp_path / "out" / "predictions_report" / "metrics.json").read_text())
    assert metrics["images"] == 15
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == 15
    assert (tmp_path / "out" / "predictions_report" / "confusion_matrix.png").is_file()
    assert not list((tmp_path / "out").glob("_tmp-*"))


def test_labels_the_head_never_saw_count_as_wrong(trained, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(trained.new / "red", images / "red")
    (images / "purple").mkdir()
    shutil.copy(trained.new / "red" / "000.png", images / "purple" / "000.png")

    result = run("predict", trained.heads["logreg"], images, "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "labels the head was not trained on (counted as wrong): purple" in result.stderr
    metrics = json.loads((tmp_path / "p_report" / "metrics.json").read_text())
    assert metrics["per_class"]["purple"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
    frame = read_predictions(tmp_path / "p.csv")
    assert metrics["accuracy"] == pytest.approx((frame["label"] == frame["prediction"]).mean())
    assert metrics["accuracy"] <= 5 / 6


def test_unlabelled_images_get_no_label_column_nor_accuracy(trained, tmp_path):
    images = tmp_path / "loose"
    images.mkdir()
    for name in ("b.png", "a.png", "c.png"):
        shutil.copy(trained.new / "blue" / "001.png", images / name)

    result = run("predict", trained.heads["knn"], images, "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    frame = read_predictions(tmp_path / "p.csv")
    assert frame.columns.tolist() == ["path", "prediction", "probability"]
    assert frame["path"].tolist() == ["a.png", "b.png", "c.png"]
    assert "accuracy" not in result.output
    assert not (tmp_path / "p_report").exists()


def test_parquet_output_with_top_k(trained, tmp_path):
    out = tmp_path / "p.parquet"
    result = run("predict", trained.heads["mlp"], trained.new_features, "-o", out, "--top-k", 2)
    assert result.exit_code == 0, result.output
    frame = read_predictions(out)
    assert frame.columns.tolist() == [
        "path",
        "label",
        "prediction",
        "probability",
        "prediction_2",
        "probability_2",
    ]
    assert frame["probability"].dtype == np.float32
    assert (frame["probability"] >= frame["probability_2"]).all()
    assert (frame["prediction"] != frame["prediction_2"]).all()
    assert set(frame["prediction"]) <= set(CLASSES)


def test_features_from_another_extractor_are_refused(trained, weights_file, tmp_path):
    other = tmp_path / "features-80"
    embed(trained.new, other, weights=str(weights_file), image_size=80)
    out = tmp_path / "p.csv"
    result = run("predict", trained.heads["logreg"], other, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {other} was embedded with another extractor than")
    assert "(image_size: 80 (features) vs 75 (head))" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{head}", "{new}", "-o", "{tmp}/p.txt"], "-o {tmp}/p.txt: the output must end in .csv"),
        (
            ["{head}", "{new}", "-o", "{tmp}/p.csv", "--top-k", "0"],
            "--top-k must be between 1 and the head's 3 classes, got 0",
        ),
        (
            ["{head}", "{new}", "-o", "{tmp}/p.csv", "--top-k", "4"],
            "--top-k must be between 1 and the head's 3 classes, got 4",
        ),
        (
            ["{head}", "{new}", "-o", "{tmp}/p.csv", "--workers", "0"],
            "--workers must be from 1 to 256, got 0",
        ),
        (
            ["{tmp}/missing", "{new}", "-o", "{tmp}/p.csv"],
            "{tmp}/missing does not exist or is not a folder",
        ),
        (
            ["{tmp}/images", "{new}", "-o", "{tmp}/p.csv"],
            "{tmp}/images is not a head folder (no head.json); make one with",
        ),
        (["{head}", "{tmp}/nowhere", "-o", "{tmp}/p.csv"], "{tmp}/nowhere does not exist"),
    ],
)
def test_settings_that_cannot_work_fail_before_any_work(trained, tmp_path, args, message):
    (tmp_path / "images").mkdir()
    places = {"head": trained.heads["logreg"], "new": trained.new, "tmp": tmp_path}
    result = run("predict", *(arg.format(**places) for arg in args))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: " + message.format(tmp=tmp_path)), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_malformed_head_folders_are_refused(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained.heads["logreg"], broken)
    (broken / "head.json").write_text("{not json")
    result = run("predict", broken, trained.new_features, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {broken}/head.json is not valid JSON (")

    description = json.loads((trained.heads["logreg"] / "head.json").read_text())
    description["classes"] = ["blue", "red"]  # model.onnx still returns 3 probabilities
    (broken / "head.json").write_text(json.dumps(description))
    result = run("predict", broken, trained.new_features, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {broken}/model.onnx returns 3 probabilities but head.json names 2 classes; "
        "the folder's files do not belong together\n"
    )
    assert not (tmp_path / "p.csv").exists()


def test_predict_from_images_leaves_them_untouched_and_never_imports_tensorflow(trained, tmp_path):
    before = sorted((p, p.stat().st_mtime_ns) for p in trained.new.rglob("*"))
    done = run_cli_in_subprocess(
        "predict", trained.heads["mlp"], trained.new, "-o", tmp_path / "p.csv"
    )
    assert done.returncode == 0, done.stderr
    imported = done.stdout.splitlines()[-1]
    assert imported.startswith("heavy modules imported:")
    assert "tensorflow" not in imported and "keras" not in imported, imported
    assert sorted((p, p.stat().st_mtime_ns) for p in trained.new.rglob("*")) == before


def test_a_backbone_missing_from_the_cache_is_rebuilt_from_its_weights_file(
    trained, weights_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "empty-cache"))
    head = trained.heads["logreg"]
    missing = run("predict", head, trained.new, "-o", tmp_path / "p.csv")
    assert missing.exit_code == 1
    assert missing.stderr == (
        f"Error: the backbone these features were made with ({weights_file.name} weights) is "
        f"not in the cache {tmp_path / 'empty-cache' / 'models'}; give its weights file with "
        "--weights PATH, or its ONNX file (models/*/model.onnx in the cache where it was made) "
        "with --backbone FILE.onnx\n"
    )
    rebuilt = run("predict", head, trained.new, "-o", tmp_path / "p.csv", "--weights", weights_file)
    assert rebuilt.exit_code == 0, rebuilt.output
    reference = run("predict", head, trained.new_features, "-o", tmp_path / "r.csv")
    assert reference.exit_code == 0, reference.output
    got, expected = read_predictions(tmp_path / "p.csv"), read_predictions(tmp_path / "r.csv")
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=1e-6)


# --- export --------------------------------------------------------------------------------

FRESH_RUNTIME = """
import json, sys
import numpy as np
import onnxruntime as ort

pixels = np.load(sys.argv[1]).astype(np.float32)
results = {}
for model in sys.argv[2:]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"pixels": pixels})
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    results[model] = {"classes": classes, "probabilities": probabilities.tolist()}
ours = ("headstart", "cli", "extractor", "heads")
results["imported"] = sorted(m for m in ours if m in sys.modules)
print(json.dumps(results))
"""


def test_fused_model_gives_predicts_probabilities_in_a_fresh_runtime(trained, tmp_path):
    expected, models = {}, []
    for kind, head in trained.heads.items():
        model = tmp_path / f"{kind}.onnx"
        result = run("export", head, "-o", model)
        assert result.exit_code == 0, result.output
        assert f"exported {model} (" in result.output
        onnx.checker.check_model(str(model))
        predicted = tmp_path / f"{kind}.csv"
        assert run("predict", head, trained.new, "-o", predicted, "--top-k", 3).exit_code == 0
        expected[str(model)] = probability_matrix(read_predictions(predicted), CLASSES)
        models.append(str(model))

    # The user's side: pixels resized to the recorded size, as float32 in [0, 255].
    locations = [trained.new / path for path in trained.readable]
    pixels = np.stack([load_image(p, IMAGE_SIZE, ()).pixels for p in locations])
    np.save(tmp_path / "pixels.npy", pixels)
    done = subprocess.run(
        [sys.executable, "-c", FRESH_RUNTIME, str(tmp_path / "pixels.npy"), *models],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results.pop("imported") == []
    for model, result in results.items():
        assert result["classes"] == CLASSES
        difference = np.abs(np.array(result["probabilities"]) - expected[model]).max()
        assert difference <= 1e-5, (model, difference)


def test_exported_model_describes_itself(trained, tmp_path):
    model = tmp_path / "model.onnx"
    assert run("export", trained.heads["rf"], "-o", model).exit_code == 0
    loaded = onnx.load(str(model), load_external_data=False)
    metadata = {entry.key: entry.value for entry in loaded.metadata_props}
    head = json.loads((trained.heads["rf"] / "head.json").read_text())
    assert json.loads(metadata["classes"]) == CLASSES
    assert metadata["image_size"] == str(IMAGE_SIZE)
    assert json.loads(metadata["fingerprint"]) == head["fingerprint"]
    (pixels,) = loaded.graph.input
    assert pixels.name == "pixels" and pixels.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["N", IMAGE_SIZE, IMAGE_SIZE, 3]
    assert [o.name for o in loaded.graph.output] == ["probabilities"]


def test_export_refuses_a_folder_as_output_and_a_non_head(trained, tmp_path):
    result = run("export", trained.heads["logreg"], "-o", tmp_path)
    assert result.stderr == (
        f"Error: -o {tmp_path}: is a folder; give a file name such as model.onnx\n"
    )
    result = run("export", trained.new, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1 and "is not a head folder (no head.json)" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


# --- info ----------------------------------------------------------------------------------


def test_info_describes_stores_heads_and_exported_models(trained, tmp_path):
    store = run("info", trained.root / "features")
    assert store.exit_code == 0, store.output
    assert "what: feature store\n" in store.output and "rows: 48\n" in store.output
    assert "  blue: 16\n" in store.output and "  image_size: 75\n" in store.output

    head = run("info", trained.heads["svm"], "--json")
    assert head.exit_code == 0, head.output
    described = json.loads(head.output)
    recorded = json.loads((trained.heads["svm"] / "head.json").read_text())
    assert described["what"] == "svm head" and described["classes"] == CLASSES
    assert described["metrics"]["val_accuracy"] == recorded["metrics"]["val_accuracy"]
    assert described["extractor"]["weights"] == recorded["fingerprint"]["weights"]

    model = tmp_path / "m.onnx"
    assert run("export", trained.heads["knn"], "-o", model).exit_code == 0
    exported = run("info", model)
    assert "what: exported model\n" in exported.output
    assert "classes: blue, green, red\n" in exported.output
    assert "pixels: N, 75, 75, 3\n" in exported.output

    images = run("info", trained.new)
    assert images.exit_code == 1
    assert images.stderr.startswith(f"Error: {trained.new} is neither a feature store")


def test_a_report_with_a_big_confusion_matrix_is_still_known_as_ours(tmp_path):
    """metrics.json grows with the classes squared (11 MB at 1,000): a second predict must
    still tell its own report and replace it."""
    from headstart.extractor.safe_files import OutputFolder
    from headstart.heads.prediction_file import check_report_is_ours

    classes = 400
    metrics = {"accuracy": 0.5, "confusion_matrix": [[0] * classes for _ in range(classes)]}
    report = tmp_path / "p_report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    assert (report / "metrics.json").stat().st_size > 1 << 20
    with OutputFolder(tmp_path) as folder:
        check_report_is_ours(folder, "p_report")  # no error


def test_a_predict_stopped_while_writing_its_report_leaves_no_half_report(
    trained, tmp_path, monkeypatch
):
    from headstart.heads import predict as predicting

    def stopped(report, *args, **kwargs):
        report.write_text("metrics.json", "{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(predicting, "write_report", stopped)
    result = run("predict", trained.heads["logreg"], trained.root / "features", "-o",
                 tmp_path / "p.csv")  # fmt: skip
    assert result.exit_code == 130
    assert "interrupted: the predictions file is written whole or not at all, and a report " in (
        result.output
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
