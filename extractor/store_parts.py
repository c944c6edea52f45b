"""One part of a feature store, read and checked before its rows are trusted: its schema's
fingerprint, its rows' types and values (a part from someone else may lie), and the rows
a run killed mid-compaction left twice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .declared import MAX_NAME, check_fingerprint
from .errors import FingerprintMismatchError, StoreError
from .feature_rows import METADATA_KEY, store_schema
from .fingerprint import fingerprint_differences
from .json_input import parse_json


def part_fingerprint(part: Path) -> dict[str, Any]:
    try:
        schema = pq.read_schema(part)
    except (OSError, pa.ArrowException) as error:
        raise _corrupt(part, error) from None
    return _fingerprint_of(part, schema)


def _fingerprint_of(part: Path, schema: pa.Schema) -> dict[str, Any]:
    metadata = schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise StoreError(f"{part} has no headstart fingerprint; it was not written by headstart")
    try:
        fingerprint = parse_json(metadata[METADATA_KEY])
    except ValueError as error:
        raise StoreError(f"{part}: its fingerprint is not valid JSON ({error})") from None
    return checked_fingerprint(fingerprint, f"{part}: fingerprint")


def checked_fingerprint(fingerprint: Any, where: str) -> dict[str, Any]:
    try:
        return check_fingerprint(fingerprint, where)
    except ValueError as error:
        raise StoreError(f"{error}; the store is damaged or was edited") from None


def check_part_fingerprint(part: Path, schema: pa.Schema, expected: dict[str, Any]) -> None:
    differences = fingerprint_differences(_fingerprint_of(part, schema), expected, NAMES)
    if differences:
        raise FingerprintMismatchError(
            f"{part} holds features of another extractor than the store's "
            f"({'; '.join(differences)}); {_MOVE_OUT}"
        )


NAMES = ("part", "store")
_MOVE_OUT = "move it out of the store and run embed again, which embeds its images anew"


def check_part_rows(
    part: Path, table: pa.Table, fingerprint: dict[str, Any], columns: list[str] | None
) -> None:
    """A part from outside may lie about its rows: its columns must be the store's (types,
    `view` exactly when the store has views), its paths relative and inside the images
    folder, its features finite numbers."""
    import pyarrow.compute as pc  # here: a first embed never needs it (70 ms of start-up)

    expected = store_schema(fingerprint["dim"], fingerprint, views=bool(fingerprint.get("views")))
    expected = expected.remove_metadata()
    for name in columns or expected.names:
        if name not in expected.names:
            continue  # asked for in case a part has it: a part that does is refused below
        if name not in table.column_names:
            raise StoreError(f"{part} has no {name!r} column; {_MOVE_OUT}")
        if table.schema.field(name).type != expected.field(name).type:
            raise StoreError(
                f"{part}: column {name!r} holds {_type_shown(table.schema.field(name).type)}, "
                f"not {_type_shown(expected.field(name).type)}; {_MOVE_OUT}"
            )
        if not expected.field(name).nullable and table[name].null_count:
            raise StoreError(
                f"{part}: {table[name].null_count} rows have no {name!r} (null); {_MOVE_OUT}"
            )
    unexpected = sorted(set(table.column_names) - set(expected.names))
    if unexpected:
        raise StoreError(
            f"{part} has columns the store has not ({', '.join(unexpected)}); {_MOVE_OUT}"
        )
    for name in ("path", "label", "sha256"):
        if name in table.column_names:
            _check_text(part, table[name], name)
    for name in ("width", "height"):
        if name in table.column_names and table.num_rows and pc.min(table[name]).as_py() < 1:
            raise StoreError(f"{part}: column {name!r} holds sizes below 1 pixel; {_MOVE_OUT}")
    if "path" in table.column_names:
        outside = [p for p in table["path"].to_pylist() if p is not None and not is_inside_path(p)]
        if outside:
            raise StoreError(
                f"{part} holds paths that are not relative paths inside an images folder "
                f"({outside[0]!r}); {_MOVE_OUT}"
            )
    if "features" in table.column_names and table.num_rows:
        values = table["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        finite = np.isfinite(values.reshape(table.num_rows, -1)).all(axis=1)
        if not finite.all():
            raise StoreError(
                f"{part}: {int((~finite).sum())} rows hold features that are not finite numbers "
                f"(NaN or infinity); {_MOVE_OUT}"
            )


def _check_text(part: Path, column: pa.ChunkedArray, name: str) -> None:
    """Valid UTF-8, and no value longer than a name can be (a folder name: 255 bytes)."""
    import pyarrow.compute as pc

    try:
        column.validate(full=True)
    except pa.ArrowInvalid as error:
        raise StoreError(
            f"{part}: column {name!r} is not valid text ({error}); {_MOVE_OUT}"
        ) from None
    lengths = pc.utf8_length(column)
    if len(column) and (pc.max(lengths).as_py() or 0) > MAX_NAME:
        raise StoreError(
            f"{part}: column {name!r} holds values longer than {MAX_NAME} characters; {_MOVE_OUT}"
        )
    if name == "label" and len(column) and pc.any(pc.equal(lengths, 0)).as_py():
        raise StoreError(f"{part}: column 'label' holds empty class names; {_MOVE_OUT}")


def _type_shown(kind: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(kind):
        return f"lists of {kind.list_size} {kind.value_type}"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"lists of {kind.value_type}"
    return str(kind)


def is_inside_path(path: str) -> bool:
    """A stored path as embed writes it: relative, '/'-separated, no empty, '.' or '..'
    component, so it can only name a file under the images folder."""
    steps = path.split("/")
    return bool(path) and "\0" not in path and all(step not in ("", ".", "..") for step in steps)


def read_listed_part(part: Path, columns: list[str] | None) -> pa.Table | None:
    """A part's rows; None when the part is gone since it was listed (a writer's doing)."""
    try:
        return parquet_rows(part, columns)
    except (OSError, pa.ArrowException) as error:
        if not os.path.lexists(part):
            return None
        raise _corrupt(part, error) from None


def without_copies(table: pa.Table) -> pa.Table:
    """`table` with one row per (path, view, sha256): a run killed between writing a
    compacted part and removing the old one leaves the same rows twice until the next run."""
    keys = [name for name in ("path", "view", "sha256") if name in table.column_names]
    if len(keys) < 2:
        return table
    unique = table.select(keys).group_by(keys).aggregate([])
    if unique.num_rows == table.num_rows:
        return table
    seen, keep = set(), []
    for key in zip(*(table[name].to_pylist() for name in keys)):
        keep.append(key not in seen)
        seen.add(key)
    return table.filter(mask(keep))


def check_one_row_per_image_view(root: Path, table: pa.Table) -> None:
    """After copies are dropped, a path (and view) held twice holds two different contents:
    not something embed writes, so a part was edited or brought from elsewhere."""
    import pyarrow.compute as pc

    keys = [name for name in ("path", "view") if name in table.column_names]
    if "path" not in keys:
        return
    counts = table.group_by(keys).aggregate([("path", "count")])
    if counts.num_rows == len(table):
        return
    twice = counts.filter(pc.greater(counts["path_count"], 1))["path"][0].as_py()
    raise StoreError(
        f"{root}: {twice!r} is stored more than once with different contents (sha256), which "
        "embed never writes; a part was edited or added by hand: move the parts you did not "
        "make out of the store and run embed again"
    )


def parquet_rows(part: Path, columns: list[str] | None = None) -> pa.Table:
    """One part's rows, read as a single file (pq.read_table goes through pyarrow.dataset,
    which imports pandas: a quarter of a second of every run's start-up). `view` is read
    where the part has it (stores embedded without --views have none)."""
    with pq.ParquetFile(part) as parquet:
        if columns is not None and "view" not in parquet.schema_arrow.names:
            columns = [name for name in columns if name != "view"]
        return parquet.read(columns=columns)


def mask(keep: list[bool]) -> pa.Array:
    """`keep` as a boolean array for Table.filter, without pa.array (feature_rows says why)."""
    bits = pa.py_buffer(np.packbits(np.asarray(keep, dtype=bool), bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(keep), [None, bits])


def read_part(part: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return parquet_rows(part, columns)
    except (OSError, pa.ArrowException) as error:
        raise _corrupt(part, error) from None


def _corrupt(part: Path, error: Exception) -> StoreError:
    return StoreError(
        f"{part} is not a readable Parquet part ({error}); run embed again with --repair "
        "to re-embed its rows"
    )
