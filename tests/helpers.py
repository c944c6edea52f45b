"""What tests share besides fixtures (conftest.py holds those): the image size every test
embeds at, and running the CLI in a fresh Python. The tests folder is on sys.path (pytest's
rootdir-less layout, no __init__.py), so tests import this as `helpers`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

IMAGE_SIZE = 75  # InceptionV3's minimum: the fastest size that still runs the real network

_CLI_THEN_MODULES = """
import sys
from headstart import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as end:
    assert end.code in (0, None), end.code
print("heavy modules imported:", sorted({"tensorflow", "keras", "pandas"} & set(sys.modules)))
"""


def run_cli_in_subprocess(*args):
    """Run `headstart ARGS` in a fresh Python; its stdout ends with the line
    `heavy modules imported: [...]` naming TensorFlow, Keras and pandas if the command
    imported them (pandas costs a quarter of a second of start-up)."""
    return subprocess.run(
        [sys.executable, "-c", _CLI_THEN_MODULES, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


STORE_WRITTEN_BEFORE = Path(__file__).parent / "data" / "previous_main" / "store"


def write_feature_store(folder: Path, X, labels, rows_per_part: int | None = None) -> Path:
    """A feature store holding the rows X (N, D) with `labels`, under the fingerprint of
    the store in tests/data with D as its dim (features only: no images, no backbone
    needed); in parts of `rows_per_part` rows (one part if None), in the rows' order."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    template = pq.read_schema(next(STORE_WRITTEN_BEFORE.glob("part-*.parquet")))
    X = np.asarray(X, dtype=np.float32)
    fingerprint = json.loads(template.metadata[b"headstart"])
    fingerprint["dim"] = X.shape[1]
    features = pa.field("features", pa.list_(pa.float32(), X.shape[1]), nullable=False)
    template = template.set(template.get_field_index("features"), features)
    template = template.with_metadata({b"headstart": json.dumps(fingerprint).encode()})
    paths = [f"{label}/{index:05d}.png" for index, label in enumerate(labels)]
    columns = {
        "path": paths,
        "label": list(labels),
        "sha256": [f"{index:064x}" for index in range(len(paths))],
        "width": np.full(len(paths), 75, np.int32),
        "height": np.full(len(paths), 75, np.int32),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]),
    }
    table = pa.table(columns, schema=template)
    folder.mkdir(parents=True)
    size = rows_per_part or max(1, len(paths))
    for number, start in enumerate(range(0, len(paths), size), 1):
        pq.write_table(table.slice(start, size), folder / f"part-{number:05d}.parquet")
    description = json.loads((STORE_WRITTEN_BEFORE / "_headstart.json").read_text())
    description.pop("last_run", None)
    description["fingerprint"] = fingerprint
    (folder / "_headstart.json").write_text(json.dumps(description))
    return folder
