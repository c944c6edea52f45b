"""The rows of a feature store: their Parquet schema, and the rows an embed run collects
before a part is written (`FeatureRows`, one float32 (D,) vector per row)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import StoreError
from .settings import STORE_DTYPES

METADATA_KEY = b"headstart"  # the parts' schema metadata key holding the fingerprint


_ARROW_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


def store_dtype(fingerprint: dict[str, Any] | None) -> str:
    """How a store with this fingerprint keeps its features: "float32" where it is left out."""
    return (fingerprint or {}).get("store_dtype", STORE_DTYPES[0])


def store_schema(
    dim: int, fingerprint: dict[str, Any] | None = None, views: bool = False
) -> pa.Schema:
    """The parts' schema; `view` (0 = the plain image, 1..K augmented) only in stores made
    with --views: a store without it has plain views only. The features are float32, or
    float16 in a store embedded with --store-dtype float16 (readers get float32 back)."""
    value_type = _ARROW_TYPES[store_dtype(fingerprint)]
    metadata = {METADATA_KEY: json.dumps(fingerprint).encode()} if fingerprint else None
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
    if views:
        fields.append(pa.field("view", pa.int32(), nullable=False))
    fields.append(pa.field("features", pa.list_(value_type, dim), nullable=False))
    return pa.schema(fields, metadata=metadata)


@dataclass
class FeatureRows:
    """Rows waiting to be written; `features` holds one float32 (D,) vector per row."""

    paths: list[str]
    labels: list[str | None]
    sha256s: list[str]
    widths: list[int]
    heights: list[int]
    features: list[np.ndarray]
    views: list[int] = field(default_factory=list)  # empty: every row is a plain view

    @classmethod
    def empty(cls) -> FeatureRows:
        return cls([], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.paths)

    def concat(self, other: FeatureRows) -> FeatureRows:
        return FeatureRows(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))

    def select(self, keep: Iterable[bool]) -> FeatureRows:
        """The rows where `keep` is true."""
        keep = list(keep)
        return FeatureRows(*(list(compress(c, keep)) for c in vars(self).values()))

    def split(self, count: int) -> tuple[FeatureRows, FeatureRows]:
        """The first `count` rows and the rest."""
        columns = list(vars(self).values())
        return FeatureRows(*(c[:count] for c in columns)), FeatureRows(
            *(c[count:] for c in columns)
        )

    def to_table(self, schema: pa.Schema) -> pa.Table:
        kind = schema.field("features").type
        flat = np.concatenate(self.features).astype(np.float32, copy=False).reshape(-1)
        if kind.value_type == pa.float16():
            flat = _as_float16(flat)
        features = pa.FixedSizeListArray.from_arrays(
            number_array(flat, kind.value_type), kind.list_size
        )
        columns = {
            "path": self.paths,
            "label": self.labels,
            "sha256": self.sha256s,
            "width": self.widths,
            "height": self.heights,
            "view": self.views or [0] * len(self.paths),
        }
        arrays = [
            features
            if column.name == "features"
            else string_array(columns[column.name])
            if column.type == pa.string()
            else number_array(columns[column.name], column.type)
            for column in schema
        ]
        return pa.Table.from_arrays(arrays, schema=schema)


def _as_float16(values: np.ndarray) -> np.ndarray:
    """float32 features as float16, refusing those beyond its range (65,504) rather than
    storing infinities."""
    largest, limit = float(np.abs(values).max(initial=0.0)), float(np.finfo(np.float16).max)
    if largest > limit:
        raise StoreError(
            f"features up to {largest:.4g} do not fit --store-dtype float16 (largest "
            f"{limit:.0f}); embed into a float32 store"
        )
    return values.astype(np.float16)


# Arrays built from their buffers: pa.array() imports pandas to look for pandas types, a
# quarter of a second of every embed's start-up.
def number_array(values, kind: pa.DataType) -> pa.Array:
    """`values` as an Arrow array of `kind` from their buffer: pa.array would import pandas
    (a quarter of a second of a run's start-up) to ask whether they are a pandas object."""
    data = np.ascontiguousarray(values, dtype=kind.to_pandas_dtype())
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(data)])


def numbers_of(values: pa.Array | pa.ChunkedArray, null: int = 0) -> np.ndarray:
    """A numeric Arrow array as numpy, nulls as `null`, from its buffers: to_numpy and
    fill_null would import pandas (see number_array)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    dtype = np.dtype(values.type.to_pandas_dtype())
    start, end = values.offset, values.offset + len(values)
    data = np.frombuffer(values.buffers()[1], dtype=dtype, count=end)[start:]
    if values.null_count:
        bits = np.frombuffer(values.buffers()[0], dtype=np.uint8)
        valid = np.unpackbits(bits, bitorder="little")[start:end].astype(bool)
        data = np.where(valid, data, null)
    return data


def string_array(values: list[str | None]) -> pa.Array:
    """`values` (None: null) as an Arrow string array, without pa.array (see number_array)."""
    encoded = [b"" if value is None else value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    valid = None
    if any(value is None for value in values):
        present = [value is not None for value in values]
        valid = pa.py_buffer(np.packbits(present, bitorder="little"))
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)
