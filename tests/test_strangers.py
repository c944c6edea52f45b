"""Safe with what strangers hand you: the values a store, head or model folder declares are
checked before any work; names are shown as data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus import colour_images
from headstart.cli import main
from headstart.extractor.declared import MAX_DIM, check_classes, check_cnn_input, check_fingerprint
from headstart.extractor.settings import MAX_IMAGE_SIZE, MAX_VIEWS

IMAGE_SIZE = 75


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def last_error(result) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def made(tmp_path_factory, weights_file):
    """An images folder, its store and a head trained on it; tests copy them."""
    root = tmp_path_factory.mktemp("strangers")
    images = colour_images(root / "images", per_class=4)
    embed = ("embed", images, "-o", root / "store", "--weights", weights_file, "--image-size",
             IMAGE_SIZE)  # fmt: skip
    assert run(*embed).exit_code == 0
    assert run("train", root / "store", "-o", root / "head").exit_code == 0
    return root


# --- the validator, field by field ---------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


def is_int(value, low, high) -> bool:
    return type(value) is int and low <= value <= high


# What each field may hold, written out again here as the oracle
FIELD_ORACLES = {
    "backbone": lambda v: isinstance(v, str),
    "image_size": lambda v: is_int(v, 75, MAX_IMAGE_SIZE),  # 1 for others; 75 for inception
    "dim": lambda v: is_int(v, 1, MAX_DIM),
    "weights": lambda v: isinstance(v, str),
    "precision": lambda v: v in ("fp32", "fp16", "int8"),
    "decode": lambda v: v in ("exact", "fast"),
    "color_mode": lambda v: v in ("rgb", "grayscale"),
    "views": lambda v: (
        v is None
        or (
            isinstance(v, dict)
            and is_int(v.get("views"), 1, MAX_VIEWS)
            and is_int(v.get("seed"), 0, 2**32 - 1)
            and isinstance(v.get("augment"), list)
            and all(isinstance(step, str) for step in v["augment"])
        )
    ),
}


def a_fingerprint(made_dir: Path | None = None) -> dict:
    return {
        "backbone": "inception_v3",
        "weights": "random(seed=0)",
        "image_size": 299,
        "dim": 2048,
        "precision": "fp32",
        "decode": "exact",
        "views": {"views": 2, "augment": ["flip"], "seed": 0, "version": 1},
    }


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(sorted(FIELD_ORACLES)),
    value=JSON_VALUES
    | st.integers(-10, 5000)
    | st.sampled_from(["fp16", "int8", "fast", "grayscale", "rgb", "exact"]),
)
def test_every_fingerprint_field_is_checked_against_what_it_may_be(field, value):
    fingerprint = a_fingerprint() | {field: value}
    if FIELD_ORACLES[field](value):
        assert check_fingerprint(fingerprint, "x.json: fingerprint") is fingerprint
    else:
        with pytest.raises(ValueError) as refused:
            check_fingerprint(fingerprint, "x.json: fingerprint")
        assert str(refused.value).startswith(f"x.json: fingerprint.{field} must be ")


@given(value=JSON_VALUES)
def test_a_fingerprint_that_is_not_an_object_or_lacks_a_field_is_refused(value):
    if not isinstance(value, dict):
        with pytest.raises(ValueError, match="^f: fingerprint must be an object, got "):
            check_fingerprint(value, "f: fingerprint")
    for required in ("image_size", "dim"):
        lacking = {k: v for k, v in a_fingerprint().items() if k != required}
        with pytest.raises(ValueError, match=f"^f lacks {required}$"):
            check_fingerprint(lacking, "f")
    without_backbone = {k: v for k, v in a_fingerprint().items() if k != "backbone"}
    assert check_fingerprint(without_backbone, "f")["backbone"] == "inception_v3"


NAMES = st.text(max_size=3) | st.sampled_from(["c\ud800at", "x" * 1025, "x" * 1024])


@given(value=JSON_VALUES | st.lists(NAMES, max_size=4))
def test_classes_are_two_or_more_distinct_names(value):
    fine = (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(name, str) and 1 <= len(name) <= 1024 for name in value)
        and not any("\ud800" in name for name in value if isinstance(name, str))
        and len(set(value)) == len(value)
    )
    if fine:
        assert check_classes(value, "c") == value
    else:
        with pytest.raises(ValueError, match="^c must be a list of 2 to "):
            check_classes(value, "c")


@given(size=JSON_VALUES | st.integers(-5, 3000), mode=st.sampled_from(["rgb", "grayscale", "x"]))
def test_a_cnn_input_is_checked(size, mode):
    model_input = {"image_size": size, "color_mode": mode}
    if is_int(size, 1, MAX_IMAGE_SIZE) and mode != "x":
        assert check_cnn_input(model_input, "m") is model_input
    else:
        with pytest.raises(ValueError, match=r"^m\.(image_size|color_mode) must be "):
            check_cnn_input(model_input, "m")


# --- declared values through the commands --------------------------------------------------


def edited_head(made: Path, tmp_path: Path, edit) -> Path:
    head = tmp_path / "head"
    shutil.copytree(made / "head", head)
    description = json.loads((head / "head.json").read_text())
    edit(description)
    (head / "head.json").write_text(json.dumps(description))
    return head


HEAD_EDITS = [
    (lambda d: d.update(fingerprint="abc"), "fingerprint must be an object, got 'abc'"),
    (lambda d: d["fingerprint"].update(image_size=20000),
     "fingerprint.image_size must be an integer from 1 to 2048, got 20000"),
    (lambda d: d["fingerprint"].update(image_size="abc"),
     "fingerprint.image_size must be an integer from 1 to 2048, got 'abc'"),
    (lambda d: d["fingerprint"].update(image_size=20),
     "fingerprint.image_size must be at least 75 for inception_v3 (its smallest input), got 20"),
    (lambda d: d["fingerprint"].update(views={"views": 1000000, "augment": [], "seed": 0}),
     "fingerprint.views must be null or an object with views (1 to 64)"),
    (lambda d: d["fingerprint"].update(precision="fp8"),
     "fingerprint.precision must be one of fp32, fp16, int8, got 'fp8'"),
    (lambda d: d.update(classes=["only"]), "classes must be a list of 2 to 100000 distinct"),
    (lambda d: d.update(classes=["c\ud800at", "dog"]), "classes must be a list of 2 to 100000"),
    (lambda d: d.update(kind=7), "kind must be a string, got 7"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "said"), HEAD_EDITS)
def test_an_edited_head_is_refused_before_any_work_by_every_command(made, tmp_path, edit, said):
    head = edited_head(made, tmp_path, edit)
    (tmp_path / "p.csv").write_text("kept")
    for command in (
        ("predict", head, made / "images", "-o", tmp_path / "p.csv"),
        ("predict", head, made / "store", "-o", tmp_path / "p.csv"),
        ("export", head, "-o", tmp_path / "m.onnx"),
        ("info", head),
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert last_error(result).startswith(f"Error: {head / 'head.json'}: {said}"), command
        assert "Traceback" not in result.output
    assert (tmp_path / "p.csv").read_text() == "kept"
    assert not (tmp_path / "m.onnx").exists()


def test_an_edited_store_fingerprint_is_refused_by_every_reader(made, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(made / "store", store)
    summary = json.loads((store / "_headstart.json").read_text())
    summary["fingerprint"]["dim"] = -1
    (store / "_headstart.json").write_text(json.dumps(summary))
    said = f"Error: {store / '_headstart.json'}: fingerprint.dim must be an integer from 1 to "
    for command in (
        ("train", store, "-o", tmp_path / "h"),
        ("predict", made / "head", store, "-o", tmp_path / "p.csv"),
        ("info", store),
    ):
        result = run(*command)
        assert result.exit_code == 1 and last_error(result).startswith(said), result.output


def test_memory_follows_the_batch_size_whatever_the_views(tmp_path, weights_file, monkeypatch):
    """Views are made as batches need them: a model batch never exceeds --batch-size, and
    the rows are those of one view at a time (64 views at batch size 1 peaked at GBs)."""
    import pandas as pd

    from headstart.extractor import embed
    from headstart.extractor.runtime import BackboneSession

    batches = []
    real_run = BackboneSession.run

    def recorded(self, batch):
        batches.append(len(batch))
        return real_run(self, batch)

    monkeypatch.setattr(BackboneSession, "run", recorded)
    images = colour_images(tmp_path / "images", per_class=1)
    embed(images, tmp_path / "store", weights=str(weights_file), image_size=IMAGE_SIZE,
          views=MAX_VIEWS, batch_size=3)  # fmt: skip
    rows = pd.read_parquet(tmp_path / "store")
    images_count = rows["path"].nunique()
    assert len(rows) == images_count * (MAX_VIEWS + 1) == sum(batches)
    assert max(batches) == 3
    assert sorted(rows.groupby("path")["view"].apply(sorted).iloc[0]) == list(range(MAX_VIEWS + 1))


def memory_bomb(path: Path, dim: int, classes: int, side: int) -> None:
    """A valid classifier (N, dim) -> (N, classes) that also fills a
    side x side float32 tensor while it runs: side 28000 is 3 GB."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((dim, classes), np.float32), "weights")
    shape = numpy_helper.from_array(np.array([side, side], np.int64), "shape")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["features", "weights"], ["scores"]),
        helper.make_node("Add", ["scores", "nothing"], ["shifted"]),
        helper.make_node("Softmax", ["shifted"], ["probabilities"], axis=-1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "bomb",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])],
        initializer=[weights, shape, zero],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_model_that_would_take_the_machines_memory_is_refused_in_a_bounded_probe(
    made, tmp_path, monkeypatch
):
    """A head-sized model.onnx that fills 3 GB while running are run once in a child
    limited to 1 GB (HEADSTART_PROBE_MEMORY_MB), which fails; this process never runs them.
    Without the probe, this process would allocate the 3 GB and the commands would succeed."""
    head = tmp_path / "head"
    shutil.copytree(made / "head", head)
    description = json.loads((head / "head.json").read_text())
    dim, classes = description["fingerprint"]["dim"], len(description["classes"])
    memory_bomb(head / "model.onnx", dim, classes, side=28000)
    assert (head / "model.onnx").stat().st_size < 32_000  # the weights of a real head
    monkeypatch.setenv("HEADSTART_PROBE_MEMORY_MB", "1024")
    (tmp_path / "p.csv").write_text("kept")
    for command in (
        ("predict", head, made / "store", "-o", tmp_path / "p.csv"),
        ("predict", head, made / "images", "-o", tmp_path / "p.csv"),
        ("export", head, "-o", tmp_path / "m.onnx"),
        ("info", head, "--verify"),
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        said = last_error(result)
        assert said.startswith(f"Error: {head / 'model.onnx'} cannot run one batch of (2, {dim})")
        assert "more than 1024 MB" in said and "Traceback" not in result.output
    assert (tmp_path / "p.csv").read_text() == "kept"
    assert not (tmp_path / "m.onnx").exists()
    # the same folder with a model that fits is used: the verdict is per file content
    monkeypatch.setenv("HEADSTART_PROBE_MEMORY_MB", "8192")
    result = run("predict", head, made / "store", "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output


def test_a_head_made_here_is_not_probed_and_one_from_elsewhere_is_once(made, tmp_path, monkeypatch):
    """train records that its own model.onnx runs (no child process per predict); the same
    head on a machine whose cache has no verdict is probed once, then remembered."""
    import subprocess

    from headstart.extractor import onnx_probe

    children = []
    real_run = subprocess.run

    def counted(command, **options):
        children.append(command)
        return real_run(command, **options)

    monkeypatch.setattr(onnx_probe.subprocess, "run", counted)
    predict = ("predict", made / "head", made / "store", "-o", tmp_path / "p.csv")
    assert run(*predict).exit_code == 0
    assert children == []
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "elsewhere"))
    for _ in range(2):
        assert run(*predict).exit_code == 0
    assert len(children) == 1 and children[0][1:4] == ["-P", "-m", "headstart.extractor.onnx_probe"]


# --- names are data ------------------------------------------------------------------------

HOSTILE_CLASS = "red\x1b[2J\x1b]0;owned\x07"  # clear the screen, set the window title
FORGED_FILE = "bad\rError: forged\n.png"  # overwrite the line, start a forged one


def test_control_characters_in_names_are_escaped_on_the_terminal_and_kept_in_files(
    tmp_path, weights_file
):
    import pandas as pd

    images = colour_images(tmp_path / "images", per_class=4)
    hostile = images / HOSTILE_CLASS
    (images / "red").rename(hostile)
    (hostile / FORGED_FILE).write_text("not an image")
    (hostile / "000.png").rename(hostile / "tab\there\u202egnp.png")
    store, head = tmp_path / "store", tmp_path / "head"
    outputs = [
        run("embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE),
        run("train", store, "-o", head),
        run("predict", head, images, "-o", tmp_path / "p.csv"),
        run("info", store),
        run("info", head),
    ]
    for result in outputs:
        assert result.exit_code == 0, result.output
        shown = result.output
        assert not any(c in shown for c in "\x1b\r\x07\t\u202e"), repr(shown)
        assert not any(line.startswith("Error: forged") for line in shown.splitlines())
    said = "".join(result.output for result in outputs)
    assert "red\\x1b[2J\\x1b]0;owned\\x07" in said  # class names in train, info
    assert "bad\\rError: forged\\n.png" in outputs[0].output  # embed's skipped file
    # files keep the names as they are
    rows = pd.read_parquet(store)
    assert f"{HOSTILE_CLASS}/tab\there\u202egnp.png" in set(rows["path"])
    assert HOSTILE_CLASS in set(rows["label"])
    errors = pd.read_csv(store / "_errors.csv")
    assert f"{HOSTILE_CLASS}/{FORGED_FILE}" in set(errors["path"])
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert HOSTILE_CLASS in set(predictions["label"]) & set(predictions["prediction"])
    assert json.loads((head / "head.json").read_text())["classes"].count(HOSTILE_CLASS) == 1


def test_class_names_with_dollars_and_other_scripts_are_drawn_as_they_are(tmp_path, weights_file):
    """ "$5_to_$10" is a name, not TeX (it used to end every report after training); CJK the
    bundled font lacks is one warning per picture, not a line per glyph."""
    images = colour_images(tmp_path / "images", per_class=4)
    names = {"red": "$5_to_$10", "green": "猫", "blue": "שלום"}
    for colour, name in names.items():
        (images / colour).rename(images / name)
    store = tmp_path / "store"
    embed = ("embed", images, "-o", store, "--weights", weights_file, "--image-size", IMAGE_SIZE)
    assert run(*embed).exit_code == 0
    commands = {
        tmp_path / "head" / "report": ("train", store, "-o", tmp_path / "head", "--head", "mlp"),
        tmp_path / "p_report": ("predict", tmp_path / "head", images, "-o", tmp_path / "p.csv"),
        tmp_path / "cnn" / "report": ("train-cnn", images, "-o", tmp_path / "cnn",
                                      "--image-size", 32, "--epochs", 1),
    }  # fmt: skip
    for report, command in commands.items():
        result = run(*command)
        assert result.exit_code == 0, result.output
        assert "could not draw" not in result.output and "Glyph" not in result.output
        pictures = sorted(p.name for p in report.glob("*.png"))
        assert "confusion_matrix.png" in pictures, (command, pictures)
        lacks = [line for line in result.output.splitlines() if "font lacks" in line]
        assert len(lacks) == 1 and "confusion_matrix.png" in lacks[0], result.output
        metrics = json.loads((report / "metrics.json").read_text())
        assert sorted(metrics["confusion_matrix"]["classes"]) == sorted(names.values())
    assert (tmp_path / "head" / "report" / "curves.png").is_file()


# --- parts whose rows lie ------------------------------------------------------------------


def _lie(table: pa.Table, column: str, values, kind=None) -> pa.Table:
    array = pa.array(values, type=kind or table.schema.field(column).type)
    return table.set_column(table.column_names.index(column), pa.field(column, array.type), array)


def _features(table: pa.Table) -> np.ndarray:
    return np.stack(table["features"].to_numpy(zero_copy_only=False)).astype(np.float32)


def _with_nan(table: pa.Table) -> pa.Table:
    rows = _features(table)
    rows[0, 3] = np.nan
    return _lie(table, "features", list(rows))


def _sized(table: pa.Table, change: int) -> pa.DataType:
    return pa.list_(pa.float32(), table.schema.field("features").type.list_size + change)


def _invalid_utf8_labels(table: pa.Table) -> pa.Table:
    data = b"".join(b"\xff\xfe" for _ in range(table.num_rows))
    offsets = np.arange(0, 2 * table.num_rows + 1, 2, dtype=np.int32)
    labels = pa.Array.from_buffers(
        pa.string(), table.num_rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return table.set_column(table.column_names.index("label"), "label", labels)


def _twice(table: pa.Table) -> pa.Table:
    paths = table["path"].to_pylist()
    return _lie(table, "path", [paths[0], paths[0], *paths[2:]])


PART_LIES = {
    "short features": lambda t: _lie(t, "features", list(_features(t)[:, :-1]), _sized(t, -1)),
    "float64 features": lambda t: _lie(t, "features", list(_features(t)), pa.list_(pa.float64())),
    "no features": lambda t: t.drop_columns(["features"]),
    "integer labels": lambda t: _lie(t, "label", list(range(t.num_rows)), pa.int64()),
    "a view column": lambda t: t.append_column("view", pa.array([0] * t.num_rows, pa.int32())),
    "a path outside": lambda t: _lie(t, "path", ["../secret.png", *t["path"].to_pylist()[1:]]),
    "NaN features": _with_nan,
    "null features": lambda t: _lie(t, "features", [None, *_features(t)[1:]], _sized(t, 0)),
    "invalid UTF-8 labels": _invalid_utf8_labels,
    "a NUL in a path": lambda t: _lie(t, "path", ["red/0\x00.png", *t["path"].to_pylist()[1:]]),
    "a negative width": lambda t: _lie(t, "width", [-5, *t["width"].to_pylist()[1:]]),
    "an empty label": lambda t: _lie(t, "label", ["", *t["label"].to_pylist()[1:]]),
    "a huge label": lambda t: _lie(t, "label", ["x" * 5000, *t["label"].to_pylist()[1:]]),
    "a path twice": _twice,
}

PART_SAID = {
    "short features": "column 'features' holds lists of 2047 float, not lists of 2048 float;",
    "float64 features": "column 'features' holds lists of double, not lists of 2048 float;",
    "no features": "has no 'features' column",
    "integer labels": "column 'label' holds int64, not string",
    "a view column": "has columns the store has not (view)",
    "a path outside": "holds paths that are not relative paths inside an images folder "
    "('../secret.png')",
    "NaN features": "1 rows hold features that are not finite numbers (NaN or infinity)",
    "null features": "1 rows have no 'features' (null)",
    "invalid UTF-8 labels": "column 'label' is not valid text (",
    "a NUL in a path": "holds paths that are not relative paths inside an images folder",
    "a negative width": "column 'width' holds sizes below 1 pixel",
    "an empty label": "column 'label' holds empty class names",
    "a huge label": "column 'label' holds values longer than 1024 characters",
    "a path twice": "is stored more than once with different contents (sha256)",
}


@pytest.mark.parametrize("lie", PART_LIES)
def test_a_part_whose_rows_lie_is_refused_by_every_reader_naming_it(made, tmp_path, lie):
    """A part edited or made elsewhere: train, predict and info --verify name the part and
    what it holds; nothing is trained or predicted from it."""
    store = _lying_store(made, tmp_path, lie)
    part = sorted(store.glob("part-*.parquet"))[0]
    for command in (
        ("train", store, "-o", tmp_path / "h"),
        ("predict", made / "head", store, "-o", tmp_path / "p.csv"),
        ("info", store, "--verify"),
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        said = last_error(result)
        assert said.startswith(f"Error: {store if lie == 'a path twice' else part}"), said
        assert PART_SAID[lie] in said, (command, said)
        assert said.endswith("run embed again, which embeds its images anew"
                             if lie != "a path twice" else "run embed again")  # fmt: skip
    assert not (tmp_path / "h").exists() and not (tmp_path / "p.csv").exists()
    plain = run("info", store)  # reads key columns only: a lie in them is found there too
    assert plain.exit_code == 0 or last_error(plain).startswith("Error: "), plain.output
    assert "Traceback" not in plain.output


def test_an_empty_cache_takes_the_backbone_as_an_onnx_file(
    made, tmp_path, monkeypatch, model_cache
):
    """Features from a weights file, predicted on a machine whose cache lacks the backbone:
    the error says how to give it; the cached model.onnx from the first machine, given with
    --backbone FILE.onnx, is checked by sha256 and used."""
    import pandas as pd

    fingerprint = json.loads((made / "head" / "head.json").read_text())["fingerprint"]
    backbone = next(p for p in model_cache.glob("models/*/model.onnx")
                    if json.loads((p.parent / "manifest.json").read_text()).get("onnx_sha256")
                    == fingerprint["onnx_sha256"])  # fmt: skip
    predict = ("predict", made / "head", made / "images", "-o", tmp_path / "p.csv")
    assert run(*predict).exit_code == 0
    expected = pd.read_csv(tmp_path / "p.csv")
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "empty"))
    missing = run(*predict)
    assert missing.exit_code == 1
    assert "is not in the cache" in missing.stderr and "--backbone FILE.onnx" in missing.stderr
    assert "Traceback" not in missing.output
    result = run(*predict, "--backbone", backbone)
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), expected)
    assert run(*predict).exit_code == 0  # cached now
    assert run("export", made / "head", "-o", tmp_path / "m.onnx").exit_code == 0


# --- the same, as a process with a memory limit ----------------------------------------------


def _bomb_head(made: Path, tmp_path: Path) -> Path:
    head = edited_head(made, tmp_path, lambda description: None)
    description = json.loads((head / "head.json").read_text())
    memory_bomb(head / "model.onnx", description["fingerprint"]["dim"], 2, side=28000)
    return head


def _lying_store(made: Path, tmp_path: Path, lie: str) -> Path:
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    shutil.copytree(made / "store", store)
    part = sorted(store.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(PART_LIES[lie](table).replace_schema_metadata(table.schema.metadata), part)
    return store


LIMITED_CASES = {
    "huge image size": (
        lambda made, tmp: ("predict", edited_head(made, tmp, HEAD_EDITS[1][0]), made / "images"),
        "fingerprint.image_size must be an integer from 1 to 2048, got 20000",
    ),
    "huge views": (
        lambda made, tmp: ("predict", edited_head(made, tmp, HEAD_EDITS[4][0]), made / "images",
                           "--tta"),
        "fingerprint.views must be null or an object with views (1 to 64)",
    ),
    "ONNX bomb": (
        lambda made, tmp: ("predict", _bomb_head(made, tmp), made / "store"),
        "cannot run one batch of (2, 2048)",
    ),
    "lying schema": (
        lambda made, tmp: ("predict", made / "head", _lying_store(made, tmp, "short features")),
        "column 'features' holds lists of 2047 float",
    ),
    "NaN features": (
        lambda made, tmp: ("train", _lying_store(made, tmp, "NaN features")),
        "hold features that are not finite numbers",
    ),
}  # fmt: skip

MEMORY_LIMIT_MB = 2000  # a predict or train of these folders needs under 1.5 GB


@pytest.mark.parametrize("case", LIMITED_CASES)
def test_a_strangers_folder_is_one_error_in_a_process_with_bounded_memory(made, tmp_path, case):
    """The command as users run it, under a 2 GB address-space limit: the folder is refused
    with one Error line, never a MemoryError, a traceback or a killed process."""
    import subprocess
    import sys

    prepare, said = LIMITED_CASES[case]
    command = [str(part) for part in prepare(made, tmp_path)]
    out = tmp_path / ("out.csv" if command[0] == "predict" else "out")
    command += ["-o", str(out)]
    launcher = (
        "import resource, sys\n"
        f"limit = {MEMORY_LIMIT_MB} << 20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "sys.argv = ['headstart', *sys.argv[1:]]\n"
        "from headstart.launch import run; run()\n"
    )
    repository = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", launcher, *command], capture_output=True,
                          text=True, timeout=300, cwd=repository)  # fmt: skip
    assert done.returncode == 1, (done.returncode, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and said in last, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert not out.exists()


def test_info_on_an_onnx_file_with_malformed_metadata_says_so(tmp_path):
    """An exported model's metadata is read as data: a class list that is not JSON and an
    image size that is not a number are shown as malformed; the file is never run."""
    import onnx

    path = tmp_path / "MODEL.ONNX"
    memory_bomb(path, dim=4, classes=2, side=28000)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"classes": "[not json", "image_size": "big"})
    onnx.save(model, str(path))
    result = run("info", path)
    assert result.exit_code == 0, result.output
    assert "classes: malformed (JSONDecodeError" in result.output
    assert "image size: malformed (ValueError" in result.output


def test_embed_never_writes_features_that_are_not_finite(tmp_path, weights_file, monkeypatch):
    """A network that overflows: an image whose plain view gives NaN is an error with that
    reason and has no row (nor rows of its augmented views); an augmented view that gives
    infinity is left out with a warning, the image's other rows kept."""
    import pandas as pd

    from headstart.extractor import embed
    from headstart.extractor.runtime import BackboneSession

    real_run = BackboneSession.run
    calls = []

    def overflowing(self, batch):
        features = real_run(self, batch)
        calls.append(len(batch))
        if len(calls) == 1:
            features[0, 5] = np.nan  # the first image's plain view
        if len(calls) == 2:
            features[1, 0] = np.inf  # the second image's first augmented view
        return features

    monkeypatch.setattr(BackboneSession, "run", overflowing)
    images = colour_images(tmp_path / "images", per_class=2)
    summary = embed(images, tmp_path / "store", weights=str(weights_file), image_size=IMAGE_SIZE,
                    views=2, batch_size=3, workers=1)  # fmt: skip
    rows = pd.read_parquet(tmp_path / "store")
    first, second = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))[:2]
    assert summary.errors == [(first, "the network gave features that are not finite numbers "
                                      "(NaN or infinity)")]  # fmt: skip
    assert first not in set(rows["path"])
    assert sorted(rows[rows["path"] == second]["view"]) == [0, 2]
    assert summary.embedded == 5 and rows["path"].nunique() == 5
    assert np.isfinite(np.stack(rows["features"])).all()
    errors = pd.read_csv(tmp_path / "store" / "_errors.csv")
    assert errors["path"].tolist() == [first]


def test_info_counts_images_not_view_rows_and_verify_reads_every_row(tmp_path, weights_file):
    from PIL import Image

    images = colour_images(tmp_path / "images", per_class=2)
    Image.new("RGB", (80, 80), "white").save(images / "loose.png")
    store = tmp_path / "store"
    result = run("embed", images, "-o", store, "--weights", weights_file, "--image-size",
                 IMAGE_SIZE, "--views", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    plain = json.loads(run("info", store, "--json").output)
    assert (plain["images"], plain["rows"]) == (7, 21)
    assert plain["images per class"] == {"blue": 2, "green": 2, "red": 2}
    assert plain["unlabelled images"] == 1
    extractor = plain["extractor"]
    assert extractor["views"].startswith("2 per image (")
    assert (extractor["precision"], extractor["decode"]) == ("fp32", "exact")
    assert "verified" not in plain
    verified = json.loads(run("info", store, "--json", "--verify").output)
    assert verified["verified"].startswith("every row read") and "(21 rows)" in verified["verified"]


def crafted_head(path: Path, dim: int, tail) -> None:
    """A model.onnx taking (N, dim) features whose last nodes are `tail(scores)`: a list of
    nodes from 'scores' (N, 3) to an output named 'probabilities' and its value info."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((dim, 3), 0.01, np.float32), "weights")
    nodes, output, initializers = tail()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["scores"]), *nodes], "crafted",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, dim])], [output],
        initializer=[weights, *initializers],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _output(kind, shape):
    from onnx import helper

    return helper.make_tensor_value_info("probabilities", kind, shape)


def _tails():
    from onnx import TensorProto, helper, numpy_helper

    starts, ends = (numpy_helper.from_array(np.array([v], np.int64), n)
                    for v, n in ((0, "starts"), (1, "ends")))  # fmt: skip
    softmax = helper.make_node("Softmax", ["scores"], ["soft"], axis=-1)
    return {
        "strings": lambda: ([softmax, helper.make_node("Cast", ["soft"], ["probabilities"],
                                                        to=TensorProto.STRING)],
                            _output(TensorProto.STRING, [None, 3]), []),
        "one row only": lambda: ([softmax, helper.make_node("Slice", ["soft", "starts", "ends"],
                                                             ["probabilities"])],
                                 _output(TensorProto.FLOAT, [1, 3]), [starts, ends]),
        "not probabilities": lambda: ([helper.make_node("Neg", ["scores"], ["probabilities"])],
                                      _output(TensorProto.FLOAT, [None, 3]), []),
        "integers": lambda: ([softmax, helper.make_node("Cast", ["soft"], ["probabilities"],
                                                         to=TensorProto.INT64)],
                             _output(TensorProto.INT64, [None, 3]), []),
        "three dimensions": lambda: ([softmax, helper.make_node(
            "Unsqueeze", ["soft", "axis"], ["probabilities"])],
            _output(TensorProto.FLOAT, [None, 1, 3]),
            [numpy_helper.from_array(np.array([1], np.int64), "axis")]),
    }  # fmt: skip


CRAFTED_SAID = {
    "strings": "returns object values, not probabilities",
    "one row only": "returns an output of shape (1, 3) for 2 inputs, not (2, 3)",
    "not probabilities": "returns values that are not probabilities (each in [0, 1]",
    "integers": "returns int64 values, not probabilities",
    "three dimensions": "returns an output of shape (2, 1, 3) for 2 inputs, not (2, 3)",
}


@pytest.mark.parametrize("tail", CRAFTED_SAID)
def test_a_head_whose_output_is_not_probabilities_is_refused(made, tmp_path, tail):
    """A model.onnx that runs but does not give one probability per class and image:
    predict, export and info --verify refuse it before any output."""
    head = edited_head(made, tmp_path, lambda d: d.update(classes=["blue", "green", "red"]))
    dim = json.loads((head / "head.json").read_text())["fingerprint"]["dim"]
    crafted_head(head / "model.onnx", dim, _tails()[tail])
    for command in (
        ("predict", head, made / "store", "-o", tmp_path / "p.csv"),
        ("export", head, "-o", tmp_path / "m.onnx"),
        ("info", head, "--verify"),
    ):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        said = last_error(result)
        assert said.startswith(f"Error: {head / 'model.onnx'} ") and CRAFTED_SAID[tail] in said
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()


def test_a_head_given_by_a_relative_path_is_probed_where_it_is(made, tmp_path, monkeypatch):
    head = tmp_path / "colleagues" / "head"
    shutil.copytree(made / "head", head)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # never seen here
    monkeypatch.chdir(tmp_path)
    result = run("predict", "colleagues/head", made / "store", "-o", "p.csv")
    assert result.exit_code == 0, result.output


DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_too_deeply_or_odd_summaries_are_errors_or_shown(made, tmp_path):
    head = edited_head(made, tmp_path, lambda d: None)
    text = (head / "head.json").read_text()
    (head / "head.json").write_text(text.replace('"kind"', f'"deep": {DEEP}, "kind"', 1))
    result = run("info", head)
    assert result.exit_code == 1 and "is not valid JSON (nested too deeply)" in result.output
    store = tmp_path / "store"
    shutil.copytree(made / "store", store)
    summary = json.loads((store / "_headstart.json").read_text())
    summary["last_run"] = [1, 2]
    (store / "_headstart.json").write_text(json.dumps(summary))
    assert run("train", store, "-o", tmp_path / "h").exit_code == 0
    assert run("predict", made / "head", store, "-o", tmp_path / "p.csv").exit_code == 0
    metrics = tmp_path / "h" / "report" / "metrics.json"
    metrics.write_text(DEEP)
    shown = run("info", tmp_path / "h")
    assert shown.exit_code == 0 and "malformed (ValueError: nested too deeply)" in shown.output


def test_huge_but_finite_features_are_blamed_not_the_head(made, tmp_path):
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    shutil.copytree(made / "store", store)
    for part in store.glob("part-*.parquet"):
        table = pq.read_table(part)
        rows = _features(table)
        rows[:, 0] = 3e38
        lying = _lie(table, "features", list(rows)).replace_schema_metadata(table.schema.metadata)
        pq.write_table(lying, part)
    result = run("predict", made / "head", store, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    said = last_error(result)
    assert "for features up to 3e+38 in size; either the features are not what" in said, said


def test_a_part_of_another_extractor_is_named_against_the_store(made, tmp_path):
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    shutil.copytree(made / "store", store)
    part = sorted(store.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    metadata = dict(table.schema.metadata)
    fingerprint = json.loads(metadata[b"headstart"])
    fingerprint["image_size"] = 139
    metadata[b"headstart"] = json.dumps(fingerprint).encode()
    pq.write_table(table.replace_schema_metadata(metadata), part)
    result = run("info", store, "--verify")
    assert result.exit_code == 1
    assert last_error(result) == (
        f"Error: {part} holds features of another extractor than the store's (image_size: 139 "
        f"(part) vs {IMAGE_SIZE} (store)); move it out of the store and run embed again, which "
        "embeds its images anew"
    )
