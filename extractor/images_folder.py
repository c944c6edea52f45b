"""The images folder a store holds: a store records it (`images_dir` in _headstart.json)
and refuses another folder, which would silently replace all its rows, while the same files
at another path (a Docker or Slurm mount, another machine) are recognised and adopted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .decode import DecodeError, file_sha256

log = logging.getLogger("headstart")


@dataclass
class ImagesFolder:
    """The images folder a run embeds, for the store to check it holds that folder's rows."""

    path: str  # absolute, links resolved
    files: dict[str, Path]  # relative path -> location of every image file found
    moved: bool = False  # --images-moved: the store's folder, moved; adopt its new path
    unlistable: tuple[str, ...] = ()  # folders there that could not be listed ("a/b/")
    sample: int = 16  # stored files hashed to tell the same files at another path

    def refusal(
        self, store: Path, recorded: str | None, stored: Callable[[], dict[str, set[str]]]
    ) -> str | None:
        """Why `store`, which holds the images of `recorded` (its `stored()` index: path ->
        sha256s), may not take this folder's; None when it may (the same folder, the same
        files elsewhere, --images-moved, nothing stored, or no folder recorded yet)."""
        if recorded is None or recorded == self.path or self.moved:
            return None  # a store from before the images folder was recorded adopts it
        index = stored()
        if not index:
            return None  # no rows to lose
        missing = [
            path
            for path in index
            if path not in self.files and not path.startswith(self.unlistable)
        ]
        if not missing and self.hold_stored_files(index):
            log.info("%s: the images of %s are now at %s (same files); recorded the new "
                     "path", store, recorded, self.path)  # fmt: skip
            return None
        what = (
            f"{len(missing)} of its {len(index)} images are not there, e.g. {missing[0]}"
            if missing
            else "files there have its images' names but other bytes"
        )
        return (
            f"{store} holds the images of {recorded}, not of {self.path} ({what}). "
            f"Use --overwrite to replace its rows with those of {self.path}, "
            "--images-moved if it is the same folder moved elsewhere, or choose another "
            "output folder"
        )

    def hold_stored_files(self, stored: dict[str, set[str]]) -> bool:
        """Whether files here have the stored bytes: a sample spread over the stored paths
        is hashed (streamed) and compared."""
        paths = sorted(path for path in stored if path in self.files)
        step = max(1, len(paths) // self.sample)
        for path in paths[::step][: self.sample]:
            try:
                if file_sha256(self.files[path]) not in stored[path]:
                    return False
            except DecodeError:
                return False
        return True
