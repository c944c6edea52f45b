"""Parity oracle: `headstart embed` gives the features of the plain Keras pipeline
(load_img bilinear -> preprocess_input -> model.predict) with the same weights."""

from __future__ import annotations

import numpy as np
import pandas as pd

import corpus

PARITY_SIZE = 139


def keras_features(model, paths, size):
    import keras
    from keras.applications.inception_v3 import preprocess_input

    batch = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(path, target_size=(size, size), interpolation="bilinear")
            )
            for path in paths
        ]
    )
    return model.predict(preprocess_input(batch), verbose=0)


def test_features_equal_the_keras_pipeline(keras_backbone, run_embed, tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_mixed_good_images(images, count=24)
    out = tmp_path / "features"

    result = run_embed(images, out, image_size=PARITY_SIZE)

    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out).set_index("path")
    relative = [p.relative_to(images).as_posix() for p in paths]
    assert sorted(frame.index) == sorted(relative)
    ours = np.stack(frame.loc[relative, "features"])
    reference = keras_features(keras_backbone, paths, PARITY_SIZE)
    assert ours.shape == reference.shape == (24, 2048)
    row_error = np.linalg.norm(ours - reference, axis=1) / np.linalg.norm(reference, axis=1)
    spread = np.linalg.norm(reference - reference.mean(axis=0), axis=1)
    assert spread.min() > 1e3 * np.linalg.norm(ours - reference, axis=1).max()  # not vacuous
    assert row_error.max() <= 1e-4, row_error
