"""`embed --backbone FILE.onnx`: a network exported elsewhere, as the backbone. The models
are small ONNX graphs made here (a convolution and a pooling), so the features they should
give are known independently of headstart: ONNX Runtime runs the file on Keras' load_img
pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import corpus
from headstart.cli import main

SIZE = 48  # any: these models take any size at least their kernel's


def save_graph(graph, path, opset=17):
    """`graph` as a model file at `path`. IR 8: onnx 1.23 writes IR 14 by default, which
    this ONNX Runtime does not read yet."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_model(
    path,
    *,
    size=None,
    dtype="float32",
    layout="NHWC",
    pooled="4d",
    extra_output=False,
    features=8,
    opset=17,
):
    """A small backbone: NHWC pixels -> transpose -> 3x3 conv (seeded) -> relu -> pooling.
    `pooled`: "4d" gives (N, D, 1, 1), "2d" (N, D), "none" the unpooled (N, D, h, w).
    `layout` "NCHW" makes it take channels first (breaking the contract)."""
    from onnx import TensorProto, helper, numpy_helper

    side = size or "side"
    shape = ["N", side, side, 3] if layout == "NHWC" else ["N", 3, side, side]
    element = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}[dtype]
    weights = np.random.default_rng(0).normal(0, 0.05, (features, 3, 3, 3)).astype(np.float32)
    nodes = []
    source = "pixels_in"
    if dtype == "uint8":
        nodes.append(helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("Conv", [source, "kernel"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
    ]
    if pooled == "4d":
        nodes.append(helper.make_node("GlobalAveragePool", ["relu"], ["embedding"]))
        out_shape = ["N", features, 1, 1]
    elif pooled == "2d":
        nodes.append(helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]))
        nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"]))
        out_shape = ["N", features]
    else:
        nodes.append(helper.make_node("Identity", ["relu"], ["embedding"]))
        out_shape = ["N", features, "h", "w"]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, out_shape)]
    if extra_output:
        nodes.append(helper.make_node("ReduceMax", ["relu"], ["logits"], keepdims=0))
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", features, "h"])
        outputs.append(logits)
    graph = helper.make_graph(
        nodes,
        "small_backbone",
        [helper.make_tensor_value_info("pixels_in", element, shape)],
        outputs,
        [numpy_helper.from_array(weights, "kernel")],
    )
    return save_graph(graph, path, opset)


def reference_features(model_path, image_paths, size, output="embedding"):
    """The file run by ONNX Runtime on Keras' load_img pixels (bilinear), pooled to (N, D)."""
    import keras
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    pixels = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(path, target_size=(size, size), interpolation="bilinear")
            )
            for path in image_paths
        ]
    )
    dtype = np.uint8 if model_input.type == "tensor(uint8)" else np.float32
    (features,) = session.run([output], {model_input.name: pixels.astype(dtype)})
    return features.reshape(len(image_paths), -1)


def cli(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def stored_features(store, images, paths):
    frame = pd.read_parquet(store).set_index("path")
    relative = [p.relative_to(images).as_posix() for p in paths]
    return np.stack(frame.loc[relative, "features"])


@pytest.mark.parametrize("pooled", ["4d", "2d"])
def test_an_onnx_file_of_any_size_embeds_what_it_computes(tmp_path, pooled):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=8)
    model = make_model(tmp_path / "small.onnx", pooled=pooled)
    store = tmp_path / "features"

    result = cli("embed", images, "-o", store, "--backbone", model, "--image-size", SIZE)

    assert result.exit_code == 0, result.output
    ours = stored_features(store, images, paths)
    reference = reference_features(model, paths, SIZE)
    assert ours.shape == reference.shape == (8, 8)
    assert np.abs(reference).max() > 0.1  # not vacuous: the relu leaves features
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    described = cli("info", store, "--json")
    assert '"backbone": "onnx-file"' in described.output
    assert "inside the ONNX file" in described.output


def test_a_static_uint8_model_gives_its_own_size_and_refuses_another(tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=4)
    model = make_model(tmp_path / "static.onnx", size=40, dtype="uint8")

    refused = cli("embed", images, "-o", tmp_path / "a", "--backbone", model, "--image-size", 64)
    result = cli("embed", images, "-o", tmp_path / "b", "--backbone", model)

    assert refused.exit_code == 1
    assert "takes 40 px images only" in refused.output
    assert not (tmp_path / "a").exists()
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        stored_features(tmp_path / "b", images, paths),
        reference_features(model, paths, 40),
        rtol=1e-5,
        atol=1e-6,
    )


def test_heads_on_onnx_file_features_predict_and_export_with_the_file_found_again(
    tmp_path, monkeypatch
):
    """train, predict and export find the file by its identity: in the cache, then at the
    path recorded; moved, it is refused until given again with --backbone. (Opset 11, whose
    Squeeze differs from later ones': the export joins it to a newer head.)"""
    import shutil

    from headstart.extractor.samples import make_sample_images

    cache = tmp_path / "cache"  # emptied below: not the session's, whose exports others use
    monkeypatch.setenv("HEADSTART_CACHE", str(cache))

    images = tmp_path / "images"
    make_sample_images(images, classes=2, per_class=6, size_range=(60, 140))
    model = make_model(tmp_path / "small.onnx", opset=11)
    store, head = tmp_path / "features", tmp_path / "head"
    embedded = cli("embed", images, "-o", store, "--backbone", model, "--image-size", SIZE)
    assert embedded.exit_code == 0, embedded.output
    assert cli("train", store, "-o", head).exit_code == 0
    first = cli("predict", head, images, "-o", tmp_path / "first.csv")
    assert first.exit_code == 0, first.output

    shutil.rmtree(cache / "models")  # another machine, say
    again = cli("predict", head, images, "-o", tmp_path / "again.csv")
    moved = tmp_path / "moved.onnx"
    model.rename(moved)
    shutil.rmtree(cache / "models")
    refused = cli("predict", head, images, "-o", tmp_path / "refused.csv")
    given = cli("predict", head, images, "-o", tmp_path / "given.csv", "--backbone", moved)
    exported = cli("export", head, "-o", tmp_path / "fused.onnx")

    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "first.csv").read_text()
    assert refused.exit_code == 1
    assert "give that file with --backbone FILE.onnx" in refused.output
    assert given.exit_code == 0, given.output
    assert (tmp_path / "given.csv").read_text() == (tmp_path / "first.csv").read_text()
    assert exported.exit_code == 0, exported.output  # the cache holds it again


@pytest.mark.parametrize(
    ("made", "extra", "said"),
    [
        (dict(layout="NCHW"), ["--image-size", SIZE], "(channels first, NCHW?)"),
        (dict(extra_output=True), ["--image-size", SIZE], "say which holds the features with"),
        (dict(), [], "takes images of any size: say which with --image-size"),
        (dict(pooled="none"), ["--image-size", SIZE], "pool the features inside the model"),
        (dict(), ["--image-size", SIZE, "--backbone-output", "nope"], "has no such output"),
    ],
    ids=["nchw", "two-outputs", "no-size", "unpooled", "unknown-output"],
)
def test_a_file_that_breaks_the_contract_is_refused_saying_why(tmp_path, made, extra, said):
    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=2)
    model = make_model(tmp_path / "model.onnx", **made)

    result = cli("embed", images, "-o", tmp_path / "features", "--backbone", model, *extra)

    assert result.exit_code == 1, result.output
    assert said in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "features").exists()


def test_a_rank_three_input_and_a_file_that_is_not_onnx_are_refused(tmp_path):
    from onnx import TensorProto, helper

    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=2)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    rank3 = save_graph(graph, tmp_path / "rank3.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model\xff" * 10)

    wrong_rank = cli("embed", images, "-o", tmp_path / "a", "--backbone", rank3)
    not_onnx = cli("embed", images, "-o", tmp_path / "b", "--backbone", garbage)
    with_output = cli("embed", images, "-o", tmp_path / "c", "--backbone-output", "y")
    with_weights = cli("embed", images, "-o", tmp_path / "d", "--backbone", rank3, "--weights",
                       "random")  # fmt: skip

    assert wrong_rank.exit_code == 1 and "has shape (?, 10, 3)" in wrong_rank.output
    assert not_onnx.exit_code == 1 and "is not an ONNX model" in not_onnx.output
    assert with_output.exit_code == 1
    assert "--backbone-output applies to --backbone FILE.onnx only" in with_output.output
    assert with_weights.exit_code == 1
    assert f"--weights applies to backbones given by name; --backbone {rank3} brings its own" in (
        with_weights.output
    )


def test_two_outputs_embed_the_one_named(tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=3)
    model = make_model(tmp_path / "two.onnx", extra_output=True)
    store = tmp_path / "features"

    result = cli(
        "embed", images, "-o", store, "--backbone", model, "--image-size", SIZE,
        "--backbone-output", "embedding",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        stored_features(store, images, paths),
        reference_features(model, paths, SIZE),
        rtol=1e-5,
        atol=1e-6,
    )


def test_the_readme_wraps_a_channels_first_model_into_one_headstart_takes(tmp_path, monkeypatch):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"<!-- wrap-snippet[^>]*-->\n```python\n(.*?)```", readme, re.S).group(1)
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=3)
    theirs = make_model(tmp_path / "theirs.onnx", layout="NCHW")
    monkeypatch.chdir(tmp_path)
    refused = cli("embed", images, "-o", tmp_path / "refused", "--backbone", theirs)

    exec(compile(snippet, "README snippet", "exec"), {})
    result = cli("embed", images, "-o", tmp_path / "f", "--backbone=ours.onnx", "--image-size=40")

    assert refused.exit_code == 1 and "NCHW" in refused.output
    assert result.exit_code == 0, result.output
    import keras
    import onnxruntime as ort

    pixels = np.stack([keras.utils.img_to_array(keras.utils.load_img(
        path, target_size=(40, 40), interpolation="bilinear")) for path in paths])  # fmt: skip
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    standardised = ((pixels / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    session = ort.InferenceSession(str(theirs), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"pixels_in": standardised})[0].reshape(3, -1)
    np.testing.assert_allclose(stored_features(tmp_path / "f", images, paths), reference,
                               rtol=1e-4, atol=1e-6)  # fmt: skip


def mean_then_matmul(path, weights, *, input_name="x", middle="mean", batch="N"):
    """(N, H, W, 3) -> mean over the image -> @ weights: (N, D) features, D = weights' width."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [input_name], [middle], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", [middle, "w"], ["features"])],
        "mean_matmul",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, "s", "s", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    return save_graph(graph, path)


def test_a_value_named_like_headstarts_input_is_renamed_not_refused(tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=2)
    weights = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    model = mean_then_matmul(tmp_path / "m.onnx", weights, middle="pixels")

    result = cli("embed", images, "-o", tmp_path / "f", "--backbone", model, "--image-size", 32)

    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        stored_features(tmp_path / "f", images, paths),
        reference_features(model, paths, 32, output="features"),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("no-features", "D from 1 to 65536"),
        ("fixed-batch", "a fixed batch of 1; headstart sends batches of any size"),
        ("constant-outside", "keeps some of its tensors in separate files"),
        ("empty", "is not an ONNX model"),
        ("folder", "not a regular file"),
    ],
)
def test_more_files_that_break_the_contract_are_refused_saying_why(tmp_path, case, said):
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=2)
    model = tmp_path / "model.onnx"
    weights = np.ones((3, 4), np.float32)
    if case == "no-features":
        mean_then_matmul(model, np.zeros((3, 0), np.float32))
    elif case == "fixed-batch":
        mean_then_matmul(model, weights, batch=1)
    elif case == "constant-outside":  # its weights in a Constant node, kept in another file
        mean_then_matmul(model, weights)
        loaded = onnx.load(str(model))
        (tmp_path / "w.data").write_bytes(weights.tobytes())
        tensor = numpy_helper.from_array(weights, "w_value")
        set_external_data(tensor, "w.data")
        tensor.ClearField("raw_data")
        del loaded.graph.initializer[:]
        loaded.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=tensor))
        onnx.save(loaded, str(model))
    elif case == "empty":
        model.write_bytes(b"")
    else:
        model.mkdir()

    result = cli("embed", images, "-o", tmp_path / "f", "--backbone", model, "--image-size", 32)

    assert result.exit_code == 1
    assert said in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "f").exists()


def test_a_network_that_fails_on_a_full_batch_is_one_error(tmp_path):
    """The probe runs 2 images; this model's memory grows with the batch to the fourth power
    (a few hundred MB for 2, hundreds of GB for 12): the run's first batch fails, in one
    line, under an address-space limit so that nothing is really taken."""
    import resource
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=12)
    ints = lambda values, name: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
         helper.make_node("Concat", ["n", "n", "n", "n", "many"], ["big_shape"], axis=0),
         helper.make_node("ConstantOfShape", ["big_shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("Add", ["mean", "total"], ["features"])],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "s", "s", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
        [ints([0], "zero"), ints([1], "one"), ints([3_000_000], "many")],
    )  # fmt: skip
    model = save_graph(graph, tmp_path / "bomb.onnx")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "headstart", "embed", str(images), "-o", str(tmp_path / "f"),
         "--backbone", str(model), "--image-size", "32"],
        capture_output=True, text=True, preexec_fn=limit,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert "failed on a batch of 12" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "f").exists()  # a first run that wrote no part leaves no folder


def flatten_at_the_end(path):
    """A network of any size whose D depends on it: an 8x8 average pool, then Flatten."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[8, 8],
                          strides=[8, 8]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1)],
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "s", "s", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", "D"])],
    )  # fmt: skip
    return save_graph(graph, path)


def test_a_network_whose_dim_follows_the_image_size_is_wrapped_per_size(tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=2)
    model = flatten_at_the_end(tmp_path / "flat.onnx")

    small = cli("embed", images, "-o", tmp_path / "s", "--backbone", model, "--image-size", 16)
    large = cli("embed", images, "-o", tmp_path / "l", "--backbone", model, "--image-size", 32)

    assert small.exit_code == 0 and large.exit_code == 0, small.output + large.output
    assert stored_features(tmp_path / "s", images, paths).shape == (2, 3 * 2 * 2)
    assert stored_features(tmp_path / "l", images, paths).shape == (2, 3 * 4 * 4)
    np.testing.assert_allclose(
        stored_features(tmp_path / "l", images, paths),
        reference_features(model, paths, 32, output="features"),
        rtol=1e-5,
    )


def test_more_features_than_a_store_holds_are_refused(tmp_path):
    images = tmp_path / "images"
    corpus.write_mixed_good_images(images, count=1)
    model = mean_then_matmul(tmp_path / "wide.onnx", np.ones((3, (1 << 16) + 1), np.float32))

    result = cli("embed", images, "-o", tmp_path / "f", "--backbone", model, "--image-size", 16)

    assert result.exit_code == 1
    assert "D from 1 to 65536" in result.output
    assert not (tmp_path / "f").exists()


def test_int8_features_of_an_onnx_file_and_heads_that_ask_for_weights(tmp_path, monkeypatch):
    """An int8 copy of a file's network is made at the run's size (it has no size of its
    own); predict --weights is refused for such features (they bring their own network);
    the wrapped file from another machine's cache is taken by predict --backbone."""
    import shutil

    from headstart.extractor.samples import make_sample_images

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # emptied below

    images = tmp_path / "images"
    make_sample_images(images, classes=2, per_class=4, size_range=(60, 100))
    model = make_model(tmp_path / "small.onnx")
    store, head = tmp_path / "features", tmp_path / "head"
    embedded = cli("embed", images, "-o", store, "--backbone", model, "--image-size", SIZE,
                   "--precision", "int8")  # fmt: skip
    assert embedded.exit_code == 0, embedded.output
    assert cli("train", store, "-o", head).exit_code == 0
    fp32_store = tmp_path / "fp32"
    assert cli("embed", images, "-o", fp32_store, "--backbone", model, "--image-size",
               SIZE).exit_code == 0  # fmt: skip
    assert cli("train", fp32_store, "-o", tmp_path / "fp32-head").exit_code == 0
    cache = tmp_path / "cache" / "models"
    import json

    from headstart.extractor.model_cache import sha256_of_file

    wanted = json.loads((tmp_path / "fp32-head" / "head.json").read_text())["fingerprint"]
    wrapped = next(
        p for p in cache.glob("onnx-*/model.onnx") if sha256_of_file(p) == wanted["onnx_sha256"]
    )
    shutil.copy(wrapped, tmp_path / "from-their-cache.onnx")
    shutil.rmtree(cache)
    model.unlink()  # neither the cache nor the file: only what a colleague sent

    with_weights = cli("predict", head, images, "-o", tmp_path / "w.csv", "--weights", "random")
    given = cli("predict", tmp_path / "fp32-head", images, "-o", tmp_path / "g.csv",
                "--backbone", tmp_path / "from-their-cache.onnx")  # fmt: skip

    assert with_weights.exit_code == 1
    assert "--weights applies to features of a Keras application" in with_weights.output
    assert given.exit_code == 0, given.output
