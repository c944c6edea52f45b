"""`headstart demo`: the whole workflow on built-in sample data, offline too. Labelled
sample images and held-out ones are made, the first embedded, a logreg head trained on
them, the held-out images predicted from their pixels and the fused model exported; each
step is told as it ends (`tour` yields the lines, the CLI prints them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..extractor.errors import WeightsUnavailableError

CLASSES, PER_CLASS, HELD_OUT = 3, 20, 8


def tour(out_dir: Path, weights: str = "imagenet", image_size: int = 299) -> Iterator[str]:
    """Run the demo into `out_dir`, yielding what each step did. Where ImageNet weights
    cannot be had (no network), it says so and goes on with random ones."""
    from ..extractor import embed
    from ..extractor.backbone import export_is_cached, parse_weights
    from ..extractor.samples import SHAPES, make_sample_images
    from ..extractor.tensorflow_needed import require_tensorflow
    from .export import export_model
    from .predict import predict
    from .train import train_head

    if not export_is_cached(parse_weights(weights)):
        require_tensorflow("the demo's first run (it exports InceptionV3 to ONNX, then caches it)")
    images = make_sample_images(out_dir / "images", CLASSES, PER_CLASS, seed=0)
    new_images = make_sample_images(out_dir / "new-images", CLASSES, HELD_OUT, seed=1)
    yield (
        f"1. made {CLASSES * PER_CLASS} labelled sample images ({', '.join(SHAPES[:CLASSES])}) "
        f"in {images}/, and {CLASSES * HELD_OUT} more, held out, in {new_images}/"
    )

    features = out_dir / "features"
    try:
        summary = embed(images, features, weights=weights, image_size=image_size, progress=True)
    except WeightsUnavailableError as error:
        if weights != "imagenet":
            raise
        yield f"   ImageNet weights could not be had: {error}"
        yield (
            "   -> using --weights random instead: the pipeline is the same, the "
            "features are not meaningful, and every output's fingerprint records it."
        )
        weights = "random"
        summary = embed(
            images, features, weights=weights, image_size=image_size, progress=True, overwrite=True
        )
    yield (
        f"2. embedded them with InceptionV3 ({weights} weights, {image_size} px, "
        f"on {summary.device}) in {summary.seconds:.1f} s: {summary.line()}"
    )
    yield f"   features: {features}/part-*.parquet (one row per image, 2048 floats),"
    yield f"   read them with pandas.read_parquet({str(features)!r})"

    trained = train_head(features, out_dir / "head", "logreg")
    yield (
        f"3. trained a logreg head on {trained.train_images} of them: validation accuracy "
        f"{trained.accuracy:.3f} on the other {trained.val_images}"
    )
    yield f"   head: {trained.head_dir}/ (model.onnx, head.json, report/)"

    predicted = predict(trained.head_dir, new_images, out_dir / "predictions.csv")
    yield (
        f"4. predicted the {predicted.rows} held-out images from their pixels: accuracy "
        f"{predicted.accuracy:.3f}"
    )
    yield f"   predictions: {predicted.out}; report: {predicted.report_dir}/"

    exported = export_model(trained.head_dir, out_dir / "model.onnx")
    yield (
        f"5. exported pixels -> probabilities as one ONNX model: {exported.path} "
        f"({exported.size_bytes / 1e6:.0f} MB; input float32 (N, {image_size}, {image_size}, "
        "3) in [0, 255], class names in its metadata)"
    )
    if weights == "random":
        yield (
            "Random weights make poor features, so expect accuracies near chance (1/3): the "
            "pipeline is the one ImageNet weights run through, and every output records "
            "random(seed=0) as its weights."
        )
    yield f"Next: headstart info {trained.head_dir}  |  headstart embed YOUR_IMAGES -o ..."
