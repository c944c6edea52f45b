"""The full CNNs of `headstart train-cnn`, as Keras models that take float32 pixels in
[0, 255] (N, S, S, C) and return class probabilities. Everything a model needs at inference
(rescaling, the backbone's preprocessing) is inside it; augmentation layers are too, and Keras
runs them only in training.

simple     the course's INPUT -> [[CONV -> RELU]*N -> POOL]*M -> [FC -> RELU]*K -> FC
NAME       any ImageNet network `embed --backbone NAME` offers (inception: InceptionV3), frozen
           and in inference mode, after its family's preprocessing as fixed Keras layers ->
           GlobalAveragePooling -> Dropout -> FC; its top layers can later be unfrozen for
           fine-tuning (BatchNorm stays frozen)

The penultimate layer is named `features`: `headstart embed --backbone MODEL_DIR` stores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...extractor.applications import APPLICATIONS, application
from ...extractor.preprocess import CAFFE_MEAN_BGR, TORCH_MEAN, TORCH_STD
from ...extractor.tensorflow_needed import import_keras

ARCH_ALIASES = {"inception": "inception_v3"}  # train-cnn's name for it before any backbone
ARCHS = ("simple", *ARCH_ALIASES, *APPLICATIONS)
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
    # On by default: it added 0.3-9 points of test accuracy on the three data sets
    # bench/cnn_defaults.py measures over 3 seeds (momentum 0.9, below); it cost 1.9 on
    # 96 px photo crops, one seed
    batchnorm: bool = True
    l2: float = 0.0


CNN_PURPOSE = "train-cnn (training a Keras network)"


def _keras():
    return import_keras(CNN_PURPOSE)


AUGMENTATIONS = ("full", "geometric", "light", "none")  # what --augment takes, besides auto


def augmentation(seed: int, level: str = "full"):
    """Random image changes, active in training only (Keras' preprocessing layers pass
    images through unchanged at inference), None for "none". light: small zooms and shifts;
    geometric: those and horizontal flips; full: those, rotations of up to 36 degrees,
    contrast and brightness."""
    if level == "none":
        return None
    keras = _keras()
    layers = keras.layers
    flip = [layers.RandomFlip("horizontal", seed=seed)]
    rotation = [layers.RandomRotation(0.1, fill_mode="reflect", seed=seed)]
    jitter = [
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
    ]
    colour = [
        layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
    ]
    chosen = {
        "light": jitter,
        "geometric": flip + jitter,
        "full": flip + rotation + jitter + colour,
    }[level]
    return keras.Sequential(chosen, name="augmentation")


def _augmented(inputs, augment: str, seed: int):
    layer = augmentation(seed, augment)
    return inputs if layer is None else layer(inputs)


def build_simple_cnn(
    input_shape: tuple[int, int, int],
    classes: int,
    spec: SimpleCNN = SimpleCNN(),
    augment: str = "full",
    seed: int = 0,
):
    keras = _keras()
    layers = keras.layers
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 else None
    inputs = keras.Input(input_shape, name=INPUT_NAME)
    x = _augmented(inputs, augment, seed)
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
                # momentum 0.9 (PyTorch's default): with Keras' 0.99 the moving statistics
                # lag the weights on small data sets, and validation stays at chance while
                # training accuracy climbs (1,200 digits: 0.10 against 0.98 after 12 epochs)
                x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
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


def build_backbone_classifier(
    backbone: str,
    image_size: int,
    classes: int,
    weights,
    dropout: float = 0.2,
    augment: str = "full",
    seed: int = 0,
):
    """The application `backbone` with `weights` (a WeightsSpec), frozen and always run in
    inference mode, under a new head. Returns (model, base) so the base can be unfrozen for
    fine-tuning."""
    from ...extractor.backbone import build_keras_backbone

    keras = _keras()
    layers = keras.layers
    app = application(backbone)
    shape = (image_size, image_size, 3)
    base = build_keras_backbone(weights, pooling=None, input_shape=shape, backbone=app.name)
    base.trainable = False
    inputs = keras.Input(shape, name=INPUT_NAME)
    x = family_preprocessing(_augmented(inputs, augment, seed), app.preprocessing)
    x = base(x, training=False)  # BatchNorm keeps its ImageNet statistics, even when unfrozen
    x = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"{app.name}_classifier"), base


def family_preprocessing(x, family: str):
    """`x` preprocessed as Keras' preprocess_input does for a family (preprocess.PREPROCESSING),
    by built-in layers, so the saved model loads with safe_mode and its ONNX export does the
    same arithmetic: inception x/127.5 - 1; caffe RGB -> BGR minus the ImageNet mean, as a
    fixed 1x1 convolution (a channel permutation, the mean as its bias); torch x/255, then
    minus the mean over the standard deviation, per channel; inside: nothing, the network
    does it. (Keras' Normalization layer would do torch's, but tf2onnx turns its constants
    into extra graph inputs.)"""
    layers = _keras().layers
    if family == "inception":  # per channel: tf2onnx's transpose optimizer fails on a
        # scalar offset after InceptionResNetV2 is traced through a tf.function
        return layers.Rescaling([1 / 127.5] * 3, offset=[-1.0] * 3, name="preprocess")(x)
    if family == "caffe":
        swap = layers.Conv2D(3, 1, trainable=False, name="preprocess")
        swapped = swap(x)
        swap.set_weights(_caffe_weights())  # built by the call above
        return swapped
    if family == "torch":  # (x/255 - mean)/std per channel, as one multiply-add
        scale = [1 / (255 * std) for std in TORCH_STD]
        offset = [-mean / std for mean, std in zip(TORCH_MEAN, TORCH_STD, strict=True)]
        return layers.Rescaling(scale, offset=offset, name="preprocess")(x)
    return x


def _caffe_weights() -> list:
    import numpy as np

    swap = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):  # output BGR channel c is input RGB channel 2 - c
        swap[0, 0, 2 - channel, channel] = 1
    return [swap, -np.array(CAFFE_MEAN_BGR, np.float32)]


def unfreeze_top_layers(base, count: int) -> list[str]:
    """Make the top `count` layers of `base` that hold weights trainable, BatchNorm layers
    excepted (they keep their statistics and scales); every other layer stays frozen.
    Returns the names of the layers made trainable, top first."""
    keras = _keras()
    base.trainable = True
    chosen: list[str] = []
    for layer in reversed(base.layers):
        batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        weighted = any(weight.trainable for weight in layer.weights) and not batchnorm
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
