"""The full CNNs of `headstart train-cnn`, as Keras models that take float32 pixels in
[0, 255] (N, S, S, C) and return class probabilities. Everything a model needs at inference
(rescaling, the backbone's preprocessing) is inside it; augmentation layers are too, and Keras
runs them only in training.

simple     the course's INPUT -> [[CONV -> RELU]*N -> POOL]*M -> [FC -> RELU]*K -> FC
inception  InceptionV3 (frozen, inference mode) -> GlobalAveragePooling -> Dropout -> FC,
           whose top layers can later be unfrozen for fine-tuning (BatchNorm stays frozen)

The penultimate layer is named `features`: `headstart embed --backbone MODEL_DIR` stores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...extractor.tensorflow_needed import import_keras

ARCHS = ("simple", "inception")
INPUT_NAME = "pixels"
FEATURES_LAYER = "features"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class SimpleCNN:
    """Settings of the `simple` ConvNet. Block b has `filters * 2**b` filters."""

    blocks: int = 3
    filters: int = 32
    convs_per_block: int = 1
    dense: tuple[int, ...] = (128,)
    dropout: float = 0.5
    batchnorm: bool = False
    l2: float = 0.0


CNN_PURPOSE = "train-cnn (training a Keras network)"


def _keras():
    return import_keras(CNN_PURPOSE)


def augmentation(seed: int):
    """Random flips, rotations, zooms, shifts, contrast and brightness: active in training
    only (Keras' preprocessing layers pass images through unchanged at inference)."""
    keras = _keras()
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
            layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
        ],
        name="augmentation",
    )


def build_simple_cnn(
    input_shape: tuple[int, int, int],
    classes: int,
    spec: SimpleCNN = SimpleCNN(),
    augment: bool = True,
    seed: int = 0,
):
    keras = _keras()
    layers = keras.layers
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 else None
    inputs = keras.Input(input_shape, name=INPUT_NAME)
    x = augmentation(seed)(inputs) if augment else inputs
    x = layers.Rescaling(1 / 255, name="rescale")(x)
    for block in range(spec.blocks):
        filters = spec.filters * 2**block
        for conv in range(spec.convs_per_block):
            name = f"block{block + 1}_conv{conv + 1}"
            if spec.batchnorm:  # conv -> BN -> relu; the BN's shift replaces the bias
                x = layers.Conv2D(
                    filters,
                    3,
                    padding="same",
                    use_bias=False,
                    kernel_regularizer=regularizer,
                    name=name,
                )(x)
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
                x = layers.ReLU(name=f"{name}_relu")(x)
            else:
                x = layers.Conv2D(
                    filters,
                    3,
                    padding="same",
                    activation="relu",
                    kernel_regularizer=regularizer,
                    name=name,
                )(x)
        x = layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
    x = layers.Flatten(name="flatten" if spec.dense else FEATURES_LAYER)(x)
    for index, units in enumerate(spec.dense):
        last = index == len(spec.dense) - 1
        x = layers.Dense(
            units,
            activation="relu",
            kernel_regularizer=regularizer,
            name=FEATURES_LAYER if last else f"dense{index + 1}",
        )(x)
        x = layers.Dropout(spec.dropout, seed=seed, name=f"dropout{index + 1}")(x)
    outputs = layers.Dense(classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="simple_cnn")


def build_inception_classifier(
    image_size: int,
    classes: int,
    weights,
    dropout: float = 0.2,
    augment: bool = True,
    seed: int = 0,
):
    """InceptionV3 with `weights` (a WeightsSpec), frozen and always run in inference mode,
    under a new head. Returns (model, base) so the base can be unfrozen for fine-tuning."""
    from ...extractor.backbone import build_keras_backbone

    keras = _keras()
    layers = keras.layers
    base = build_keras_backbone(weights, pooling=None, input_shape=(image_size, image_size, 3))
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = augmentation(seed)(inputs) if augment else inputs
    x = layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(x)  # Inception's [-1, 1]
    x = base(x, training=False)  # BatchNorm keeps its ImageNet statistics, even when unfrozen
    x = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="inception_classifier"), base


def unfreeze_top_layers(base, count: int) -> list[str]:
    """Make the top `count` layers of `base` that hold weights trainable, BatchNorm layers
    excepted (they keep their statistics and scales); every other layer stays frozen.
    Returns the names of the layers made trainable, top first."""
    keras = _keras()
    base.trainable = True
    chosen: list[str] = []
    for layer in reversed(base.layers):
        weighted = bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = weighted and len(chosen) < count
        if layer.trainable:
            chosen.append(layer.name)
    return chosen


def layer_table(model) -> list[dict]:
    """One row per layer: name, type, output shape, parameters (nested models flattened
    one level, as model.summary() shows them)."""
    rows = []
    for layer in model.layers:
        output = getattr(layer, "output", None)
        shape = tuple(output.shape) if output is not None and hasattr(output, "shape") else None
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": list(shape) if shape else None,
                "params": int(layer.count_params()),
                "trainable": bool(layer.trainable),
            }
        )
    return rows
