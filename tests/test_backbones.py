"""`embed --backbone NAME`: the Keras applications beside InceptionV3. For one model of each
preprocessing family, headstart's features equal the plain Keras pipeline's with the same
(random, seeded) weights: load_img bilinear -> the application's own preprocess_input ->
predict. (InceptionV3, of the inception family, is test_parity's; that every listed model's
prepended preprocessing is its own preprocess_input is test_applications'.)"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import corpus
from headstart.cli import main
from headstart.extractor.applications import APPLICATIONS

SIZE = 64  # at least every family's smallest (32), small enough to be quick
FAMILIES = {"caffe": "vgg16", "torch": "densenet121", "inside": "mobilenet_v3_small"}


def cli(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def keras_features(name, paths, size):
    import keras

    from headstart.extractor.backbone import WeightsSpec, build_keras_backbone

    app = APPLICATIONS[name]
    model = build_keras_backbone(WeightsSpec("random", seed=0), backbone=name)
    preprocess_input = importlib.import_module(f"keras.applications.{app.module}").preprocess_input
    batch = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(path, target_size=(size, size), interpolation="bilinear")
            )
            for path in paths
        ]
    )
    return model.predict(preprocess_input(batch), verbose=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_features_equal_the_keras_pipeline_in_every_preprocessing_family(
    tmp_path, family, monkeypatch
):
    from headstart.extractor import backbone

    monkeypatch.setattr(backbone, "available_memory_gb", lambda: 0.5)  # a small machine
    name = FAMILIES[family]
    assert APPLICATIONS[name].preprocessing == family
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=6)
    store = tmp_path / "features"

    result = cli(
        "embed", images, "-o", store, "--backbone", name, "--weights", "random",
        "--image-size", SIZE,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    # the export (its first, in this session's cache) said what memory it takes, and that
    # this machine may have too little, before it began
    app = APPLICATIONS[name]
    constructor, peak, seconds = app.constructor, app.export_peak_gb, app.export_seconds
    said = [line for line in result.output.splitlines() if constructor in line]
    assert (
        f"to ONNX (it took {seconds} s and {peak:g} GB of memory on 2 cores when measured), once"
    ) in said[0]
    assert said[1].startswith(
        f"this machine has 0.5 GB of memory free, and exporting {constructor} may need more "
        f"(it took {peak:g} GB of memory when measured). If it is killed, export it once"
    )
    frame = pd.read_parquet(store).set_index("path")
    ours = np.stack(frame.loc[[p.relative_to(images).as_posix() for p in paths], "features"])
    reference = keras_features(name, paths, SIZE)
    assert ours.shape == reference.shape == (6, APPLICATIONS[name].dim)
    error = np.linalg.norm(ours - reference, axis=1)
    spread = np.linalg.norm(reference - reference.mean(axis=0), axis=1)
    assert spread.min() > 1e3 * error.max()  # not vacuous: the images' features differ
    assert (error / np.linalg.norm(reference, axis=1)).max() <= 1e-4
    fingerprint = json.loads(cli("info", store, "--json").output)["extractor"]
    assert fingerprint["backbone"] == name
    assert fingerprint["dim"] == APPLICATIONS[name].dim
    assert fingerprint["preprocessing"].endswith(
        {"caffe": "minus the ImageNet mean", "torch": "standard deviation"}.get(
            family, "inside the network"
        )
    )


def test_backbones_lists_every_application_with_its_facts_and_cache(weights_file, monkeypatch):
    from headstart.extractor import applications

    monkeypatch.setitem(applications.UNSUPPORTED, "vgg19", "its export computes something else")
    listed = cli("backbones")
    rows = {row["name"]: row for row in json.loads(cli("backbones", "--json").output)}

    assert listed.exit_code == 0, listed.output
    assert list(rows) == list(APPLICATIONS)
    assert rows["inception_v3"]["dim"] == 2048 and rows["inception_v3"]["size"] == 299
    assert rows["convnext_tiny"]["top1"] == 82.1
    assert rows["nasnet_large"]["fixed_size"] and rows["nasnet_large"]["min_size"] == 331
    assert rows["mobilenet_v3_small"]["export_peak_gb"] == 1.0
    assert rows["mobilenet_v3_small"]["export_seconds"] == 19
    assert rows["convnext_xlarge"]["export_peak_gb"] is None  # killed at 23 GB
    assert rows["vgg19"]["unsupported"] == "its export computes something else"
    assert not rows["resnet50"]["unsupported"]
    assert "vgg19" in listed.output and "unsupported: its export computes" in listed.output
    # the session's test backbone (InceptionV3 from a weights file) is in the cache
    assert weights_file.name in rows["inception_v3"]["cached"]
    line = next(line for line in listed.output.splitlines() if line.startswith("efficientnet_v2_s"))
    assert line.split()[1:8] == ["1280", "384", "32", "20.3M", "83.9", "2.3G", "38s"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--backbone", "resnet51"], "unknown backbone 'resnet51'; choose one of inception_v3,"),
        (["--backbone", "resnet50", "--image-size", "31"], "ResNet50 needs at least 32"),
        (["--backbone", "nasnet_mobile", "--image-size", "200"], "takes 224 px images only"),
        (["--backbone", "resnet50", "--weights", "nope.h5"], "--weights nope.h5: no such file"),
        (["--backbone", "vgg19"], "--backbone vgg19 is not supported: its export computes"),
    ],
    ids=["unknown", "too-small", "fixed-size", "weights", "unsupported"],
)
def test_settings_a_backbone_cannot_take_are_refused_before_any_work(
    tmp_path, options, said, monkeypatch
):
    from headstart.extractor import applications

    monkeypatch.setitem(applications.UNSUPPORTED, "vgg19", "its export computes something else")
    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=1)

    result = cli("embed", images, "-o", tmp_path / "features", *options)

    assert result.exit_code == 1
    assert said in result.output
    assert not (tmp_path / "features").exists()


def test_a_store_of_another_backbone_is_refused_before_the_export(tmp_path, run_embed):
    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=2)
    store = tmp_path / "features"
    assert run_embed(images, store).exit_code == 0

    options = ["--backbone", "convnext_xlarge", "--weights", "random"]
    result = cli("embed", images, "-o", store, *options)

    assert result.exit_code == 1
    assert "backbone: inception_v3 (store) vs convnext_xlarge (this run)" in result.output
    assert "exporting" not in result.output  # a 350M-parameter export was not begun


def test_each_family_has_its_words_and_inception_keeps_those_of_every_store_before():
    from headstart.extractor.fingerprint import PREPROCESSING
    from headstart.extractor.preprocess import PREPROCESSING as FAMILIES
    from headstart.extractor.preprocess import describe_preprocessing

    said = {family: describe_preprocessing(family) for family in FAMILIES}

    assert (
        PREPROCESSING
        == said["inception"]
        == ("rgb; bilinear resize as keras load_img; exif orientation; x/127.5-1")
    )  # so stores and heads of any version compare equal
    assert len(set(said.values())) == len(FAMILIES)


def test_an_int8_copy_that_strays_from_fp32_is_named_with_its_cosine(tmp_path, caplog):
    """Each int8 copy records its feature cosine to fp32 when it is made (test_throughput
    checks the measure); every run on a copy below 0.99 is told so. (MobileNetV3 Large's
    copy measured 0.83 in bench/backbones.py, ConvNeXt Tiny's 0.57.)"""
    from headstart.extractor.model_cache import (
        MANIFEST_FILE,
        MODEL_FILE,
        CachedBackbone,
        sha256_of_file,
    )
    from headstart.extractor.spec import in_precision

    fp32 = tmp_path / "mobilenet_v3_large-0123"
    (fp32 / "int8").mkdir(parents=True)
    (fp32 / MODEL_FILE).write_bytes(b"fp32")
    (fp32 / "int8" / MODEL_FILE).write_bytes(b"int8")
    manifest = {"backbone": "mobilenet_v3_large", "onnx_sha256": "x"}
    copy = {**manifest, "precision": "int8", "int8_cosine": 0.826,
            "onnx_sha256": sha256_of_file(fp32 / "int8" / MODEL_FILE)}  # fmt: skip
    (fp32 / "int8" / MANIFEST_FILE).write_text(json.dumps(copy))

    with caplog.at_level("WARNING", logger="headstart"):
        found = in_precision(CachedBackbone(fp32 / MODEL_FILE, manifest), "int8")

    assert found.manifest["int8_cosine"] == 0.826  # the cached copy, not made again
    assert caplog.messages == [
        "warning: the int8 copy of mobilenet_v3_large gives features with cosine 0.826 to its "
        "fp32 ones (below 0.99): heads will see a different network; --precision fp32 keeps it"
    ]


def test_grouped_convolutions_and_exact_gelu_export_as_keras_computes_them():
    """ConvNeXt's two layers tf2onnx cannot convert as they are (a grouped 7x7 convolution,
    one group per channel; the exact GELU's Erfc), in a small model: the ONNX graph has no
    node a runtime does not know, and computes what Keras does."""
    import keras
    import onnx
    import onnxruntime as ort

    from headstart.extractor.keras_export import keras_to_onnx

    keras.utils.set_random_seed(0)
    pixels = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(pixels)
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8, name="grouped")(x)
    x = keras.layers.Activation("gelu")(x)
    model = keras.Model(pixels, keras.layers.GlobalAveragePooling2D()(x))
    assert model.get_layer("grouped").get_weights()[0].shape == (7, 7, 1, 8)

    proto = keras_to_onnx(model, "x", None, 17)

    onnx.checker.check_model(proto)
    assert {"StatefulPartitionedCall", "Erfc"}.isdisjoint(n.op_type for n in proto.graph.node)
    images = np.random.default_rng(0).uniform(-2, 2, (2, 20, 24, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours, keras_own = session.run(None, {"x": images})[0], model.predict(images, verbose=0)
    assert np.abs(keras_own).max() > 0.01  # not vacuous
    np.testing.assert_allclose(ours, keras_own, rtol=1e-5, atol=1e-6)


def test_heads_on_another_backbone_train_predict_and_export_as_on_inception(tmp_path):
    """MobileNetV3 Small features (with a view each): a head trains on them, predicts from
    images with the same network, and its fused export gives predict's probabilities."""
    import onnxruntime as ort

    from headstart.extractor.decode import load_image
    from headstart.extractor.samples import make_sample_images

    images = tmp_path / "images"
    make_sample_images(images, classes=2, per_class=6, size_range=(60, 140))
    store, head, fused = tmp_path / "features", tmp_path / "head", tmp_path / "fused.onnx"
    options = ["--backbone", "mobilenet_v3_small", "--weights", "random", "--image-size", SIZE]

    assert cli("embed", images, "-o", store, *options, "--views", 1).exit_code == 0
    assert cli("train", store, "-o", head).exit_code == 0
    predicted = cli("predict", head, images, "-o", tmp_path / "p.csv", "--top-k", 2)
    exported = cli("export", head, "-o", fused)

    assert predicted.exit_code == 0, predicted.output
    assert exported.exit_code == 0, exported.output
    frame = pd.read_csv(tmp_path / "p.csv")
    paths = [images / path for path in frame["path"]]
    pixels = np.stack([load_image(path, SIZE, ()).pixels for path in paths]).astype(np.float32)
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"pixels": pixels})
    classes = sorted(frame["label"].unique())
    ours = np.array([[row[f"probability{'' if row['prediction'] == name else '_2'}"]
                      for name in classes] for _, row in frame.iterrows()])  # fmt: skip
    theirs = next(p for p in probabilities if np.ndim(p) == 2 and np.shape(p)[1] == 2)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    described = json.loads(cli("info", head, "--json").output)
    assert described["extractor"]["backbone"] == "mobilenet_v3_small"


def test_a_conversion_runs_without_tf2onnxs_copies_and_again_with_them_where_it_fails(
    monkeypatch,
):
    import os

    from headstart.extractor.keras_export import converted

    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    seen = []

    def convert(fails: int):
        seen.append(os.environ.get("TF2ONNX_CATCH_ERRORS"))
        if len(seen) <= fails:
            raise ValueError("an optimizer failed")
        return "graph"

    assert converted(lambda: convert(0)) == "graph" and seen == ["FALSE"]
    seen.clear()
    assert converted(lambda: convert(1)) == "graph" and seen == ["FALSE", None]
    seen.clear()
    with pytest.raises(ValueError, match="an optimizer failed"):
        converted(lambda: convert(2))  # the conversion's own error, as before
    assert seen == ["FALSE", None] and "TF2ONNX_CATCH_ERRORS" not in os.environ


def test_renewing_tf2onnxs_node_protos_changes_no_byte_of_the_graph():
    """keras_export.converted renews each node's protos after tf2onnx rewrites them (so
    that the rewritten copies do not pile up in protobuf arenas): the ONNX graph is the
    same, byte for byte, and tf2onnx is left as it was."""
    import keras
    import tensorflow as tf
    import tf2onnx
    from tf2onnx.graph import Node

    from headstart.extractor.keras_export import converted

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(inputs, outputs)
    signature = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="x"),)
    update_proto = Node.update_proto

    def convert():
        return tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)[0]

    theirs, ours = convert(), converted(convert)
    assert _nameless(ours) == _nameless(theirs)
    assert {node.op_type for node in ours.graph.node} >= {"Conv", "Relu"}  # optimized
    assert Node.update_proto is update_proto


def _nameless(model) -> bytes:
    """The graph's bytes with each name it makes up replaced by its order of appearance
    (tf2onnx numbers the names it makes with a counter that runs on across conversions)."""
    names: dict[str, str] = {}

    def renamed(name: str) -> str:
        return names.setdefault(name, f"n{len(names)}") if name else name

    graph = model.graph
    for node in graph.node:
        node.name = renamed(node.name)
        node.input[:] = [renamed(name) for name in node.input]
        node.output[:] = [renamed(name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = renamed(tensor.name)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renamed(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:  # unk__N: an unknown size, named by the same counter
                dim.dim_param = renamed(dim.dim_param)
    return model.SerializeToString()
