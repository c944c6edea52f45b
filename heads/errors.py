"""Named exceptions of the heads; the CLI turns them into `Error: <message>`."""

from extractor.errors import HeadstartError, SettingError

__all__ = ["HeadstartError", "SettingError", "TrainingDataError"]


class TrainingDataError(HeadstartError):
    """The feature store cannot train a head: no labels, too few classes or images..."""
