"""The backbone's graph without its weights, to carry to a GPU machine that cannot export it
(no TensorFlow there) and where a call carries 64 MiB at most (model.onnx is 87 MB).

    python bench/gpu_graph.py strip DIR     # here: DIR/skeleton.onnx (~0.2 MB) + manifest.json
    python bench/gpu_graph.py refill DIR    # there: seeded random weights into the cache

`strip` empties every initializer larger than KEPT_ELEMENTS (the convolution kernels and the
dense weights; biases, shapes and the preprocessing constants stay as they are). `refill`
fills them again with seeded He-normal values (finite features, like InceptionV3 with
random weights) and puts the network into HEADSTART_CACHE through the cache's own
`cached_export`, under the key `--weights random` looks for and with a manifest naming the
new file's sha256, so `headstart embed --weights random` and bench/embed.py use it without
exporting. The features are not the ones made here: this is for timing only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

KEPT_ELEMENTS = 4096
SKELETON, MANIFEST = "skeleton.onnx", "manifest.json"
STRIPPED = "headstart_stripped"  # metadata key: the emptied initializers' names


def strip(folder: Path, weights: str = "random") -> None:
    from headstart.extractor.backbone import ensure_backbone, parse_weights

    cached = ensure_backbone(parse_weights(weights))
    model = onnx.load(str(cached.onnx_path))
    emptied = []
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims)) > KEPT_ELEMENTS:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            emptied.append(tensor.name)
    model.metadata_props.add(key=STRIPPED, value=json.dumps(emptied))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / SKELETON))
    (folder / MANIFEST).write_text(json.dumps(cached.manifest, indent=2))
    size = (folder / SKELETON).stat().st_size
    print(f"{folder / SKELETON}: {len(emptied)} initializers emptied, {size / 1e6:.2f} MB")


def refill(folder: Path, weights: str = "random", seed: int = 0) -> Path:
    from headstart.extractor.backbone import model_cache_dir, parse_weights
    from headstart.extractor.model_cache import cached_export, sha256_of_file

    def export(onnx_path: Path) -> dict:
        model = onnx.load(str(folder / SKELETON))
        props = {p.key: p.value for p in model.metadata_props}
        emptied = set(json.loads(props[STRIPPED]))
        rng = np.random.default_rng(seed)
        for tensor in model.graph.initializer:
            if tensor.name in emptied:
                shape = tuple(tensor.dims)
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                values = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        onnx.save(model, str(onnx_path))
        manifest = json.loads((folder / MANIFEST).read_text())
        return {**manifest, "onnx_sha256": sha256_of_file(onnx_path)}

    entry = model_cache_dir(parse_weights(weights))
    cached = cached_export(entry, export, "refilling the backbone")
    print(f"backbone with refilled weights cached at {cached.onnx_path}")
    return cached.onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["strip", "refill"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    strip(args.folder) if args.verb == "strip" else refill(args.folder)


if __name__ == "__main__":
    main()
