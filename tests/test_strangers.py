"""Safe with what strangers hand you: the values a store, head or model folder declares are
checked before any work; names are shown as data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import main
from extractor.declared import MAX_DIM, check_classes, check_cnn_input, check_fingerprint
from extractor.settings import MAX_IMAGE_SIZE, MAX_VIEWS
from tests.corpus import colour_images

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
    "image_size": lambda v: is_int(v, 1, MAX_IMAGE_SIZE),
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
    for required in ("backbone", "image_size", "dim"):
        lacking = {k: v for k, v in a_fingerprint().items() if k != required}
        with pytest.raises(ValueError, match=f"^f lacks {required}$"):
            check_fingerprint(lacking, "f")


@given(value=JSON_VALUES | st.lists(st.text(max_size=3), max_size=4))
def test_classes_are_two_or_more_distinct_names(value):
    fine = (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(name, str) for name in value)
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
    (lambda d: d["fingerprint"].update(views={"views": 1000000, "augment": [], "seed": 0}),
     "fingerprint.views must be null or an object with views (1 to 64)"),
    (lambda d: d["fingerprint"].update(precision="fp8"),
     "fingerprint.precision must be one of fp32, fp16, int8, got 'fp8'"),
    (lambda d: d.update(classes=["only"]), "classes must be a list of 2 to 100000 distinct"),
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
