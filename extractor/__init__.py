"""Images -> features: scan, decode, ONNX backbone, Parquet feature store (see DESIGN.md).

from headstart.extractor import embed
summary = embed("images/", "features/", weights="random", image_size=139)
"""

from .. import __version__  # one version for the whole package

__all__ = ["EmbedSummary", "embed", "__version__"]


def __getattr__(name: str):
    """`embed` and `EmbedSummary` are loaded on first use: importing one light module of
    the package (the CLI's settings) does not load numpy, pyarrow and Pillow."""
    if name in ("embed", "EmbedSummary"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
