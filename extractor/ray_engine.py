"""`embed --engine ray`: the same embed, with decoding and inference spread over a Ray
cluster by Ray Data, and the same feature store written by the driver.

    file list (driver) -> decode tasks on CPUs -> an actor pool of ONNX Runtime sessions
    (one per GPU with num_gpus=1 where there are GPUs, one CPU actor per node elsewhere)
    -> rows streamed back to the driver -> parts, summary and _errors.csv as in the local
    engine, incremental skipping included.

Ray is optional (`pip install 'headstart[ray]'`); this module imports it only when used.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .decode import DecodedImage, DecodeError, UnchangedImage
from .errors import SettingError
from .feature_rows import FeatureRows
from .model_cache import CachedBackbone
from .scan import ImageFile
from .settings import ENGINES
from .spec import ExtractorSpec
from .stream import Stream, default_batch_size

log = logging.getLogger("headstart")

_PLACEHOLDER = np.zeros((0, 0, 0), np.uint8)  # the pixels of a row that was not decoded


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise SettingError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise SettingError(
            "--engine ray needs Ray, which is not installed: pip install 'headstart[ray]' "
            "(or pip install 'ray[data]')"
        )


def _decode_batch(batch: dict, decode: Callable) -> dict:
    """A Ray Data task: decode one batch of files (hashing each; known ones are skipped)
    with the spec's decoder."""
    statuses, errors, sha256s, widths, heights, pixels = [], [], [], [], [], []
    for location, known in zip(batch["location"], batch["known"]):
        outcome = decode(Path(location), known_sha256=set(known))
        if isinstance(outcome, DecodeError):
            statuses.append("error"), errors.append(str(outcome)), sha256s.append("")
            widths.append(0), heights.append(0), pixels.append(_PLACEHOLDER)
        elif isinstance(outcome, UnchangedImage):
            statuses.append("unchanged"), errors.append(""), sha256s.append(outcome.sha256)
            widths.append(0), heights.append(0), pixels.append(_PLACEHOLDER)
        else:
            statuses.append("decoded"), errors.append(""), sha256s.append(outcome.sha256)
            widths.append(outcome.width), heights.append(outcome.height)
            pixels.append(outcome.pixels)
    return {
        "path": batch["path"],
        "label": batch["label"],
        "status": np.array(statuses),
        "error": np.array(errors),
        "sha256": np.array(sha256s),
        "width": np.array(widths, np.int32),
        "height": np.array(heights, np.int32),
        "pixels": _column(pixels),
    }


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """An object column of arrays (Ray stores it as a variable-shaped tensor column)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


class _EmbedActor:
    """A Ray actor holding one ONNX Runtime session for its whole life."""

    def __init__(self, onnx_path: str, device: str, fp16: bool, dim: int):
        from .runtime import BackboneSession

        self.session = BackboneSession(Path(onnx_path), device, fp16=fp16)
        self.dim = dim

    def __call__(self, batch: dict) -> dict:
        decoded = np.asarray(batch["status"]) == "decoded"
        features = np.zeros((len(decoded), self.dim), np.float32)
        if decoded.any():
            pixels = np.stack([batch["pixels"][i] for i in np.flatnonzero(decoded)])
            features[decoded] = self.session.run(pixels)
        rows = {key: value for key, value in batch.items() if key != "pixels"}
        return rows | {"features": features, "device": np.full(len(decoded), self.session.device)}


class RayFeatureStream(Stream):
    """The Ray engine's stream: decode tasks and network actors spread over a cluster."""

    def __init__(
        self,
        network: CachedBackbone,
        spec: ExtractorSpec,
        batch_size: int | None,
        stored: dict[str, set[str]],
        device: str = "auto",
        address: str | None = None,
    ):
        super().__init__(stored)
        self.network, self.spec = network, spec
        self.batch_size = batch_size or default_batch_size("cpu", spec.image_size)
        self.device_asked, self.address = device, address
        self.device = device

    def batches(
        self, images: list[ImageFile], on_image: Callable[[int], object] = lambda n: None
    ) -> Iterator[FeatureRows]:
        if not images:
            return  # nothing to read (a no-op re-run): no cluster to start or join
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            yield from self._run(ray, images, on_image)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, images, on_image) -> Iterator[FeatureRows]:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        for name in ("ray", "ray.data"):  # their per-run INFO lines and progress notices
            logging.getLogger(name).setLevel(logging.ERROR)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        device = self.device_asked if gpus else "cpu"
        actors = gpus or nodes  # one session per GPU, else one (all-cores) session per node
        log.info("Ray: %d %s actor(s) on %d node(s)", actors, "GPU" if gpus else "CPU", nodes)
        items = [
            {
                "path": image.path,
                "label": image.label,
                "location": str(image.location),
                "known": sorted(self.stored.get(image.path, ())),
            }
            for image in images
        ]
        if not items:
            return
        dataset = ray.data.from_items(items).map_batches(
            _decode_batch,
            batch_size=self.batch_size,
            num_cpus=1,  # one decode task per CPU, anywhere in the cluster
            fn_kwargs={"decode": self.spec.decoder()},
        )
        dataset = dataset.map_batches(
            _EmbedActor,
            batch_size=self.batch_size,
            concurrency=actors,
            num_gpus=1 if gpus else 0,
            # Not the decode tasks' 1 CPU: Ray would fuse decoding into the actors, and one
            # process per node would decode everything.
            num_cpus=0.5,
            fn_constructor_kwargs={
                "onnx_path": str(self.network.onnx_path),
                "device": device,
                "fp16": self.spec.precision == "fp16",
                "dim": self.network.manifest["dim"],
            },
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = FeatureRows.empty()
            for index, path in enumerate(batch["path"]):
                to_embed = self._to_embed(str(path), _outcome(batch, index))
                on_image(1)
                if not to_embed:
                    continue
                label = batch["label"][index]
                rows.paths.append(str(path))
                rows.labels.append(None if label is None else str(label))
                rows.sha256s.append(str(batch["sha256"][index]))
                rows.widths.append(int(batch["width"][index]))
                rows.heights.append(int(batch["height"][index]))
                rows.features.append(np.asarray(batch["features"][index], np.float32))
                self.device = str(batch["device"][index])
            if len(rows):
                yield self._finite_only(rows)


def _outcome(batch: dict, index: int) -> DecodeError | UnchangedImage | DecodedImage:
    """What a decode task made of one image, as the local engine's decoder says it."""
    status, sha256 = batch["status"][index], str(batch["sha256"][index])
    if status == "error":
        return DecodeError(str(batch["error"][index]))
    if status == "unchanged":
        return UnchangedImage(sha256)
    return DecodedImage(
        sha256, int(batch["width"][index]), int(batch["height"][index]), _PLACEHOLDER
    )
