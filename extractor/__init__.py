"""Images -> features: scan, decode, ONNX backbone, Parquet feature store (see DESIGN.md).

from extractor import embed
summary = embed("images/", "features/", weights="random", image_size=139)
"""

__version__ = "0.1.0"

from .pipeline import EmbedSummary, embed  # noqa: E402

__all__ = ["EmbedSummary", "embed", "__version__"]
