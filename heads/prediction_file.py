"""The predictions file: CSV or Parquet, written batch by batch under a temporary name and
renamed when complete, so a killed run never leaves a file that looks finished.
OUT is the path the user gave; a link there is followed on purpose (the file it points to
is replaced), while the names derived from it (OUT_errors.csv, OUT_report/) never are.

Columns: path, label (when the input has labels), prediction, probability, and for
--top-k K > 1: prediction_2, probability_2, ... prediction_K, probability_K.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..extractor.errors import UnsafeOutputError
from ..extractor.errors_csv import CsvWriter, is_errors_csv
from ..extractor.json_input import parse_json
from ..extractor.safe_files import OutputFolder, user_path
from .artifact import check_output_outside_artifacts
from .errors import SettingError
from .report import is_report_file

FORMATS = (".csv", ".parquet")
METRICS_READ_LIMIT = 256 << 20  # a report's metrics.json, read to tell it is ours


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before any work on an output that cannot be written as asked; returns the path
    to write (a link given as OUT is followed, on purpose)."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise SettingError(
            f"-o {out}: the output must end in {' or '.join(FORMATS)} (the format is chosen "
            "from the name)"
        )
    if out.is_dir():
        raise SettingError(f"-o {out}: is a folder; give a file name ending in .csv or .parquet")
    out = user_path(out)
    check_output_outside_artifacts(out)
    _check_derived_names(out)
    return out


def errors_name(out: Path) -> str:
    return f"{out.stem}_errors.csv"


def report_name(out: Path) -> str:
    return f"{out.stem}_report"


def _check_derived_names(out: Path) -> None:
    """OUT_errors.csv and OUT_report/ are replaced by predict: refused before any work when
    they are links or special files, or hold files headstart did not write. OUT itself must
    be a regular file if it exists (a link to /dev/null, say, is not a place to write)."""
    if out.exists() and not out.is_file():
        raise SettingError(f"-o {out}: exists and is not a file; give a file name")
    if not out.parent.is_dir():
        return
    with OutputFolder(out.parent, create=False) as folder:
        errors = errors_name(out)
        if folder.check_file_name(errors):
            with folder.open_existing(errors) as handle:
                if not is_errors_csv(handle.read(64)):
                    raise _not_ours(folder / errors)
        check_report_is_ours(folder, report_name(out))


def check_report_is_ours(folder: OutputFolder, name: str) -> None:
    """The report folder `name`, if there is one, holds only a report headstart wrote (else
    an error naming what it holds): predict may replace or remove it."""
    if folder.entry(name) is None:
        return
    with folder.subfolder(name, create=False) as report:
        names = report.names()
        for entry in filter(is_report_file, names):
            report.check_file_name(entry)  # a link or a special file: refused as such
        foreign = [entry for entry in names if not is_report_file(entry)]
        if foreign:  # a head folder, say, or the user's own files
            raise _not_ours(report / foreign[0])
        if names and not _is_our_metrics(report):
            raise _not_ours(report / names[0])


def _is_our_metrics(report: OutputFolder) -> bool:
    if not report.check_file_name("metrics.json"):
        return False
    with report.open_existing("metrics.json") as handle:
        try:  # its confusion matrix grows with the classes squared: 11 MB at 1,000
            metrics = parse_json(handle.read(METRICS_READ_LIMIT))
        except ValueError:
            return False
    return isinstance(metrics, dict) and {"accuracy", "confusion_matrix"} <= set(metrics)


def _not_ours(path: Path) -> UnsafeOutputError:
    return UnsafeOutputError(
        f"{path} was not written by headstart, and predict would replace it; move it away "
        "or choose another -o"
    )


def column_names(top_k: int, labelled: bool) -> list[str]:
    names = ["path"] + (["label"] if labelled else []) + ["prediction", "probability"]
    for rank in range(2, top_k + 1):
        names += [f"prediction_{rank}", f"probability_{rank}"]
    return names


class PredictionWriter:
    """Append rows with `write`, then `commit` (rename into place) or `discard`."""

    def __init__(self, out: Path, classes: list[str], top_k: int, labelled: bool):
        self.out, self.classes, self.top_k, self.labelled = out, classes, top_k, labelled
        self.columns = column_names(top_k, labelled)
        self.rows = 0
        self._folder = OutputFolder(out.parent)
        self._folder.remove_leftovers(out.name)  # what a killed predict left
        self._file = self._folder.pending(out.name, "wb")
        self._parquet = out.suffix.lower() == ".parquet"
        if self._parquet:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._file.handle, self._schema())
        else:
            self._text = io.TextIOWrapper(self._file.handle, encoding="utf-8", newline="")
            self._csv = CsvWriter(self._text)
            self._csv.writerow(self.columns)

    def write(self, paths: list[str], labels: list[str | None], probabilities: np.ndarray) -> None:
        """One row per path: the top-K classes by probability (ties: the first class)."""
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.top_k]
        top = np.take_along_axis(probabilities, ranked, axis=1)
        names = np.asarray(self.classes, dtype=object)[ranked]
        columns: list[list] = [list(paths)] + ([list(labels)] if self.labelled else [])
        for rank in range(self.top_k):
            columns += [names[:, rank].tolist(), top[:, rank].astype(np.float32)]
        if self._parquet:
            import pyarrow as pa

            self._writer.write_table(pa.Table.from_arrays(columns, schema=self._schema()))
        else:
            for row in zip(*columns):  # 9 significant digits: float32 values round-trip
                self._csv.writerow(v if isinstance(v, str | None) else f"{v:.9g}" for v in row)
        self.rows += len(paths)

    def commit(self) -> Path:
        self._finish_format()  # a full disk raises here: the caller discards
        self._file.commit()
        self._folder.close()
        return self.out

    def discard(self) -> None:
        try:
            self._finish_format()
        except (OSError, ValueError):
            pass  # a full disk, say: the temporary goes anyway
        self._file.discard()
        self._folder.close(failed=True)

    def _finish_format(self) -> None:
        if self._parquet:
            self._writer.close()
        else:
            self._text.flush()
            self._text.detach()  # the pending file keeps its handle until commit

    def _schema(self):
        import pyarrow as pa

        types = {"path": pa.string(), "label": pa.string()}
        return pa.schema(
            [
                (name, types.get(name, pa.float32() if "probability" in name else pa.string()))
                for name in self.columns
            ]
        )
