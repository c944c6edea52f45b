"""Issue 19's first step: the Keras applications headstart is to embed with, and the
preprocessing it prepends to each one's ONNX graph, checked against that application's own
`preprocess_input` on random pixels (random weights could not show a wrong preprocessing)."""

from __future__ import annotations

import importlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from headstart.extractor.applications import APPLICATIONS
from headstart.extractor.preprocess import PIXELS_INPUT, prepend_preprocessing


def _preprocessed_by_onnx(preprocessing: str, pixels: np.ndarray) -> np.ndarray:
    """An Identity network with headstart's preprocessing in front, run by ONNX Runtime."""
    shape = [None, None, None, 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["preprocessed"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("preprocessed", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model = prepend_preprocessing(model, "preprocessed", preprocessing)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {PIXELS_INPUT: pixels})[0]


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_the_prepended_preprocessing_is_the_applications_own(name):
    import keras

    application = APPLICATIONS[name]
    assert callable(getattr(keras.applications, application.constructor))
    module = importlib.import_module(f"keras.applications.{application.module}")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = np.asarray(module.preprocess_input(pixels.astype(np.float32)), np.float32)
    got = _preprocessed_by_onnx(application.preprocessing, pixels)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    if application.preprocessing == "inside":  # the network preprocesses by itself
        assert np.array_equal(expected, pixels.astype(np.float32))


def test_an_unknown_preprocessing_is_refused():
    with pytest.raises(ValueError, match="inception"):
        _preprocessed_by_onnx("imagenet", np.zeros((1, 2, 2, 3), np.uint8))
