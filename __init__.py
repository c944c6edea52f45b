"""headstart: embed image folders once with a frozen ImageNet backbone (ONNX Runtime) into
Parquet, train small heads on the features in seconds, predict (see DESIGN.md).

The repository's top-level folders are this package: `headstart.extractor` (images ->
features), `headstart.heads` (features -> labels), `headstart.cli` (the `headstart` command).
Importing it loads nothing else, so the command starts fast.
"""

__version__ = "0.1.0"
