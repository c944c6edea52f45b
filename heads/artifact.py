"""Reading trained artifacts back, checked before any use: a head (HEAD_DIR/head.json +
model.onnx, features in) or a train-cnn model (MODEL_DIR/model.json + model.onnx, pixels in).
Only ONNX and JSON are read: nothing in these folders can run code.

Both kinds answer one interface, so predict and export never ask which they hold: `what`
they are called, their `classes`, their `extractor` (how images reach them), whether they
`takes_features` from a store, and `image_classifier(device, ...)`: the ONNX Runtime
session that runs on image batches and the function from its outputs to probabilities."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..extractor.backbone import CachedBackbone, cache_root
from ..extractor.declared import check_classes, check_cnn_input, check_fingerprint
from ..extractor.fingerprint import fingerprint_differences
from ..extractor.json_input import parse_json
from ..extractor.onnx_probe import PROBE_ROWS, probe
from ..extractor.runtime import BackboneSession, open_session
from ..extractor.spec import ExtractorSpec
from .errors import FingerprintMismatchError, HeadError, SettingError

HEAD_FILE, MODEL_FILE, CNN_FILE = "head.json", "model.onnx", "model.json"
REQUIRED_KEYS = ("kind", "classes", "fingerprint")


class OnnxClassifier:
    """An ONNX classifier on CPU: float32 features (N, D) -> class probabilities (N, K)."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise HeadError(f"{self.path} is not a loadable ONNX model ({error})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self.input_name = inputs[0].name
        self.input_dim = inputs[0].shape[-1] if len(inputs[0].shape) == 2 else None
        names = [o.name for o in outputs if "prob" in o.name] or [outputs[-1].name]
        self.output_name = names[0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(X, dtype=np.float32)}
        return self._session.run([self.output_name], feed)[0]


@dataclass
class Head:
    folder: Path
    kind: str
    classes: list[str]
    fingerprint: dict[str, Any]
    description: dict[str, Any] = field(repr=False)
    _classifier: OnnxClassifier | None = field(default=None, repr=False)

    what = "head"
    takes_features = True  # from a feature store, or from images through its backbone

    def image_classifier(
        self, device: str, weights: str | None = None, given: str | None = None
    ) -> tuple[BackboneSession, Callable[[list[np.ndarray]], np.ndarray]]:
        """The backbone's session (it makes the head's features from image batches) and
        the head, from those features to probabilities."""
        network = self.backbone(weights, given)
        session = open_session(network.onnx_path, device, self.extractor.precision)
        return session, lambda features: self.predict_proba(np.stack(features))

    def check_given_backbone(self, given: str | None) -> None:
        """--backbone: a head takes the network its features were made with."""

    def pixels_model(self, weights: str | None = None, given: str | None = None):
        """One ONNX model from float32 pixels to probabilities: the backbone and the head,
        fused (the head's model.onnx checked against head.json first)."""
        from .fuse import fused_pixels_model

        self.classifier  # noqa: B018 -- opens model.onnx and checks it against head.json
        return fused_pixels_model(self, self.backbone(weights, given).onnx_path)

    def about(self) -> dict[str, Any]:
        """What an exported model's metadata says of where it came from."""
        return {
            "kind": f"{self.kind} head",
            "weights": str(self.fingerprint.get("weights")),
            "fingerprint": self.fingerprint,
        }

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def classifier(self) -> OnnxClassifier:
        if self._classifier is None:
            self._classifier = _checked_classifier(self)
        return self._classifier

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        probabilities = self.classifier.predict_proba(X)
        if not np.isfinite(probabilities).all():
            largest = float(np.abs(X).max()) if np.size(X) else 0.0
            raise HeadError(
                f"{self.model_path} gives probabilities that are not finite numbers (NaN or "
                f"infinity) for features up to {largest:.3g} in size; either the features are "
                "not what the backbone gives (check the store with info --verify and where it "
                "came from) or the head folder is damaged (train it again)"
            )
        return probabilities

    @property
    def extractor(self) -> ExtractorSpec:
        """The extractor that made the head's training features."""
        return ExtractorSpec.of_features(self.fingerprint)

    def check_features(self, fingerprint: dict[str, Any], what: str, whose: str) -> None:
        """Refuse features made by another extractor than the head's, naming differences."""
        # Augmented views are rows a store adds, not another extractor: the plain
        # features are the same with or without them; so is how a store keeps them
        # (float16 features are read back as float32).
        storage = ("views", "store_dtype")
        plain = {k: v for k, v in fingerprint.items() if k not in storage}
        head = {k: v for k, v in self.fingerprint.items() if k not in storage}
        differences = fingerprint_differences(plain, head, (whose, "head"))
        if differences:
            raise FingerprintMismatchError(
                f"{what} with another extractor than the one the head in {self.folder} was "
                f"trained on ({'; '.join(differences)}); use images, or features embedded "
                "with the head's settings"
            )

    def backbone(self, weights: str | None = None, given: str | None = None) -> CachedBackbone:
        """The ONNX backbone that makes this head's features (see find_backbone); `given`:
        --backbone MODEL_DIR|FILE.onnx."""
        network = self.extractor.network(weights, given)
        ours = self.extractor.fingerprint(network)
        self.check_features(ours, "this headstart embeds", "this headstart")
        return network


def load_head(head_dir: str | os.PathLike) -> Head:
    """The head in `head_dir`, or a HeadError saying what is missing or malformed."""
    folder = Path(head_dir)
    if not folder.is_dir():
        raise HeadError(f"{folder} does not exist or is not a folder")
    description_path = folder / HEAD_FILE
    if not description_path.is_file():
        raise HeadError(
            f"{folder} is not a head folder (no {HEAD_FILE}); make one with: "
            f"headstart train FEATURES_DIR -o {folder}"
        )
    try:
        description = parse_json(description_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HeadError(f"{description_path} is not valid JSON ({error})") from None
    if not isinstance(description, dict):
        raise HeadError(f"{description_path} is not a head description (not a JSON object)")
    missing = [key for key in REQUIRED_KEYS if key not in description]
    if missing:
        raise HeadError(f"{description_path} lacks {', '.join(missing)}")
    try:
        kind = description["kind"]
        if not isinstance(kind, str):
            raise ValueError(f"{description_path}: kind must be a string, got {kind!r}")
        classes = check_classes(description["classes"], f"{description_path}: classes")
        fingerprint = check_fingerprint(
            description["fingerprint"], f"{description_path}: fingerprint"
        )
    except ValueError as error:
        raise HeadError(f"{error}; the head folder is damaged or was edited") from None
    if not (folder / MODEL_FILE).is_file():
        raise HeadError(f"{folder} has no {MODEL_FILE}; train the head again")
    return Head(folder, kind, classes, fingerprint, description)


def _checked_classifier(head: Head) -> OnnxClassifier:
    """Open model.onnx and check that it takes the fingerprint's features and returns one
    probability per class named in head.json."""
    dim = head.fingerprint["dim"]
    probe(head.model_path, (dim,), "float32", cache_root())
    classifier = OnnxClassifier(head.model_path)
    if isinstance(classifier.input_dim, int) and classifier.input_dim != dim:
        raise HeadError(
            f"{head.model_path} takes {classifier.input_dim} features but {HEAD_FILE} "
            f"records {dim}; the folder's files do not belong together"
        )
    rows = np.zeros((PROBE_ROWS, dim), np.float32)
    check_probabilities(head.model_path, classifier.predict_proba(rows), head.classes, HEAD_FILE)
    return classifier


def check_probabilities(path: Path, output, classes: list[str], described_in: str) -> None:
    """`output`, what `path` gave for PROBE_ROWS inputs, must be one probability per class
    that `described_in` names for each input: floats in [0, 1] summing to 1 per row."""
    output = np.asarray(output)
    mismatch = "the folder's files do not belong together"
    if output.dtype.kind != "f":
        raise HeadError(f"{path} returns {output.dtype} values, not probabilities; {mismatch}")
    if output.ndim == 2 and output.shape[0] == PROBE_ROWS and output.shape[1] != len(classes):
        raise HeadError(
            f"{path} returns {output.shape[1]} probabilities but {described_in} names "
            f"{len(classes)} classes; {mismatch}"
        )
    if output.shape != (PROBE_ROWS, len(classes)):
        raise HeadError(
            f"{path} returns an output of shape {output.shape} for {PROBE_ROWS} inputs, not "
            f"({PROBE_ROWS}, {len(classes)}): one probability per class {described_in} "
            f"names; {mismatch}"
        )
    with np.errstate(invalid="ignore"):
        sums = output.sum(axis=1)
        valid = np.isfinite(output).all() and (output >= -1e-4).all() and (output <= 1 + 1e-4).all()
    if not valid or not np.allclose(sums, 1, atol=1e-3):
        raise HeadError(
            f"{path} returns values that are not probabilities (each in [0, 1], summing to 1 "
            f"per input; got {output[0].tolist()[:5]} for the first); {mismatch}"
        )


def predict_with_onnx(head_dir: str | os.PathLike, X: np.ndarray) -> np.ndarray:
    """Class probabilities from HEAD_DIR/model.onnx alone (no head.json needed)."""
    return OnnxClassifier(Path(head_dir) / MODEL_FILE).predict_proba(X)


@dataclass
class CnnModel:
    """A train-cnn MODEL_DIR: model.onnx takes float32 pixels (N, S, S, C) in [0, 255]."""

    folder: Path
    arch: str
    classes: list[str]
    image_size: int
    color_mode: str
    description: dict[str, Any] = field(repr=False)

    kind = "cnn"
    what = "model"
    takes_features = False  # pixels only: model.onnx is its own network

    def image_classifier(
        self, device: str, weights: str | None = None, given: str | None = None
    ) -> tuple[BackboneSession, Callable[[list[np.ndarray]], np.ndarray]]:
        """A session on model.onnx (pixels to probabilities) once it has run a small batch
        within bounded memory (see onnx_probe) and given one probability per class that
        model.json names. `weights` and `given` are for heads: a model is its own network."""
        self.probe()
        session = open_session(self.model_path, device)
        output = session.run(np.zeros((PROBE_ROWS, *self.image_shape), np.uint8))
        check_probabilities(self.model_path, output, self.classes, CNN_FILE)
        return session, np.stack

    def pixels_model(self, weights: str | None = None, given: str | None = None):
        """model.onnx itself (float32 pixels to probabilities), once probed."""
        from .fuse import load_onnx

        self.check_given_backbone(given)
        self.probe()
        return load_onnx(self.model_path)

    def check_given_backbone(self, given: str | None) -> None:
        """--backbone is refused: a model is its own network."""
        if given:
            raise SettingError(
                f"--backbone is for heads; {self.folder} is a CNN from train-cnn, its own network"
            )

    def about(self) -> dict[str, Any]:
        settings = self.description.get("settings") or {}
        used = "trained from scratch" if self.arch == "simple" else settings.get("weights")
        return {"kind": f"{self.arch} CNN", "weights": str(used), "fingerprint": None}

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def extractor(self) -> ExtractorSpec:
        """How images reach model.onnx, which takes pixels and is its own network."""
        return ExtractorSpec.of_pixels(self.image_size, self.color_mode)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image as model.onnx takes it."""
        return (self.image_size, self.image_size, self.extractor.channels)

    def probe(self) -> None:
        """model.onnx runs a small batch within bounded memory (see extractor.onnx_probe)."""
        probe(self.model_path, self.image_shape, "float32", cache_root())


Artifact = Head | CnnModel  # what load_artifact reads: both answer the interface above


def load_artifact(folder: str | os.PathLike) -> Artifact:
    """The head or the train-cnn model in `folder` (a HeadError says what is wrong)."""
    folder = Path(folder)
    if (folder / CNN_FILE).is_file():
        return load_cnn_model(folder)
    return load_head(folder)


def load_cnn_model(folder: Path) -> CnnModel:
    path = folder / CNN_FILE
    try:
        description = parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HeadError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(description, dict):
        raise HeadError(f"{path} is not a train-cnn model description (not a JSON object)")
    try:
        missing = [key for key in ("arch", "classes", "input") if key not in description]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        arch = description["arch"]
        if not isinstance(arch, str):
            raise ValueError(f"{path}: arch must be a string, got {arch!r}")
        classes = check_classes(description["classes"], f"{path}: classes")
        model_input = check_cnn_input(description["input"], f"{path}: input")
    except ValueError as error:
        raise HeadError(f"{error}; the model folder is damaged or was edited") from None
    image_size, color_mode = model_input["image_size"], model_input["color_mode"]
    if not (folder / MODEL_FILE).is_file():
        raise HeadError(f"{folder} has no {MODEL_FILE}; train the model again")
    return CnnModel(folder, arch, classes, image_size, color_mode, description)


def check_output_outside_artifacts(out: Path) -> None:
    """A file that predict or export writes may not land inside a head or model folder (it
    would replace or sit among the artifact's own files), nor take a name a feature store
    uses for its own files in that store (it would wedge the store)."""
    from ..extractor.safe_folders import check_outside_artifacts
    from ..extractor.store import is_feature_store, is_store_name

    check_outside_artifacts(out, stores_too=False)  # predictions may sit beside a store's parts
    if is_store_name(out.name) and is_feature_store(out.parent):
        raise SettingError(
            f"-o {out}: {out.name} is a name of the feature store {out.parent}'s own files; "
            "choose another name"
        )
