"""What fits train's memory budget (--memory-budget): whether a store's features are read
into memory whole, and otherwise how many rows each streamed step may hold at once.

The budget is memory beyond what the process takes before it reads the store. A store
whose features fit it several times over trains in memory, exactly as it always has; a
bigger one streams (heads.streamed), and the heads that need every row at once (knn, rf,
kernel svm) train on a stratified subsample of the rows that fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SettingError

GiB = 1 << 30
DEFAULT_MEMORY_BUDGET = 1 * GiB
SMALLEST_BUDGET = 64 << 20
# A store read whole costs this many times its features at the peak: the array, the
# training rows' copy, the standardized copy, and scikit-learn's float64 copy (measured:
# logreg 4.8x, mlp 5.6x on a 400 k-row store)
IN_MEMORY_COPIES = 6
# What a streamed step holds, as shares of the budget left once the rows' metadata is in:
# a window of parts being trained on (two are in memory at once: the one being learned
# from while the next is read), and the validation rows early stopping scores after each
# pass (three copies: as read, standardized, and Keras' own)
WINDOW_SHARE, VALIDATION_SHARE = 0.2, 0.1
# The cross-validation's rows (heads.selection.CV_MAX_ROWS at most): a share of the budget,
# of which each row takes this many copies (folds side by side, scikit-learn's float64)
CV_SHARE, CV_COPIES = 0.25, 8
# Rows a head that holds every row at once may take, whatever the budget: kernel svm's
# training time grows with the square of the rows; knn keeps its rows inside model.onnx,
# which protobuf limits to 2 GB (about 250,000 rows of 2,048 features)
MAX_SUBSAMPLE_ROWS = {"svm": 20_000}
ONNX_LIMIT_BYTES = 1_900_000_000
# Copies of its training rows each such head holds while it trains
SUBSAMPLE_COPIES = {"knn": 3, "rf": 3, "svm": 4}

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
    "p": 1 << 50, "pib": 1 << 50, "pb": 10**15,
}  # fmt: skip


def parse_memory_budget(text: str | int) -> int:
    """'1GiB', '800MB', '1.5G', '1e9' (K, M, G: binary; KB, MB, GB: decimal; no unit:
    bytes) -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE]\+?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = match and _UNITS.get(match.group(2).lower())
        if not unit:
            raise SettingError(
                f"--memory-budget must be a size such as 512MB, 1GiB or 2G, got {text!r}"
            )
        value = int(float(match.group(1)) * unit)
    if value < SMALLEST_BUDGET:
        raise SettingError(
            f"--memory-budget must be at least {shown(SMALLEST_BUDGET)}, got {shown(value)}"
        )
    return value


def shown(size: int) -> str:
    """Bytes for people: 1.0 GiB, 512 MiB."""
    if size >= GiB:
        return f"{size / GiB:.1f} GiB"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.0f} MiB"
    return f"{size:,} bytes"


@dataclass(frozen=True)
class MemoryBudget:
    """The budget, less what the rows' metadata takes; shares of it in rows of `dim`
    float32 features."""

    total: int
    metadata: int
    dim: int

    @property
    def row_bytes(self) -> int:
        return 4 * self.dim

    @property
    def left(self) -> int:
        return max(self.total - self.metadata, SMALLEST_BUDGET // 2)

    def fits_in_memory(self, rows: int) -> bool:
        """Whether `rows` rows train in memory, all at once, within the budget."""
        return rows * self.row_bytes * IN_MEMORY_COPIES <= self.left

    def window_rows(self) -> int:
        return max(1, int(self.left * WINDOW_SHARE) // self.row_bytes)

    def validation_rows(self) -> int:
        return max(1, int(self.left * VALIDATION_SHARE) // self.row_bytes)

    def cv_rows(self, most: int) -> int:
        """The rows cross-validation may cover, at most `most`."""
        return max(1, min(most, int(self.left * CV_SHARE) // (self.row_bytes * CV_COPIES)))

    def subsample_rows(self, kind: str) -> int:
        """The training rows a head that holds them all (knn, rf, svm) may take."""
        rows = int(self.left * (1 - VALIDATION_SHARE)) // (self.row_bytes * SUBSAMPLE_COPIES[kind])
        if kind == "knn":
            rows = min(rows, ONNX_LIMIT_BYTES // self.row_bytes)
        return max(1, min(rows, MAX_SUBSAMPLE_ROWS.get(kind, rows)))
