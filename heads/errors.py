"""Named exceptions of the heads; the CLI turns them into `Error: <message>`."""

from ..extractor.errors import FingerprintMismatchError, HeadstartError, SettingError

__all__ = [
    "FingerprintMismatchError",
    "HeadError",
    "HeadstartError",
    "SettingError",
    "TrainingDataError",
]


class TrainingDataError(HeadstartError):
    """The feature store cannot train a head: no labels, too few classes or images..."""


class HeadError(HeadstartError):
    """A head folder is missing, incomplete, malformed, or its files disagree."""
