"""The `path,error` lists of skipped files (a store's _errors.csv, predict's
OUT_errors.csv): written atomically, and readable by every CSV reader whatever the names."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from .safe_files import OutputFolder, read_own_file


class CsvWriter:
    """csv.writer with "\n" line ends that also quotes a field holding a carriage return:
    the csv module leaves a lone "\r" bare, and a file name with one then breaks the row
    for every reader. Values are written as they are (no spreadsheet formula escaping)."""

    def __init__(self, handle):
        self._plain = csv.writer(handle, lineterminator="\n")
        self._quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row) -> None:
        row = list(row)
        bare_return = any(isinstance(value, str) and "\r" in value for value in row)
        (self._quoted if bare_return else self._plain).writerow(row)


ERRORS_HEADER = ["path", "error"]


def write_errors_csv(folder: OutputFolder, name: str, errors: Iterable[tuple[str, str]]) -> Path:
    """`path,error` rows into folder/name, written atomically."""
    buffer = io.StringIO()
    writer = CsvWriter(buffer)
    writer.writerow(ERRORS_HEADER)
    for row in errors:
        writer.writerow(row)
    return folder.write_text(name, buffer.getvalue())


def is_errors_csv(data: bytes) -> bool:
    """Whether `data` starts like an errors list headstart wrote."""
    return data.startswith(",".join(ERRORS_HEADER).encode() + b"\n")


def read_errors(path: Path) -> list[tuple[str, str]]:
    try:
        text = read_own_file(path).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return [(row[0], row[1]) for row in rows[1:] if len(row) >= 2]
