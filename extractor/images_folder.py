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
    unreadable: tuple[str, ...] = ()  # files and folders ("a/b/") there but unreadable
    sample: int = 16  # stored files hashed to tell the same files at another path

    def refusal(
        self,
        store: Path,
        recorded: str | None,
        stored: Callable[[], dict[str, set[str]]],
        shard: bool = False,
    ) -> str | None:
        """Why `store`, which holds the images of `recorded` (its `stored()` index: path ->
        sha256s), may not take this folder's; None when it may (the same folder, the same
        files elsewhere, --images-moved, nothing stored, or no folder recorded yet). A
        `shard` may not take another folder even when nothing is stored yet: the shard that
        recorded it is filling the store."""
        if recorded is None or recorded == self.path or self.moved:
            return None  # a store from before the images folder was recorded adopts it
        index = stored()
        if not index and shard:
            return (
                f"{store} is being filled with the images of {recorded} by other shards, "
                f"not those of {self.path}; give every shard the same IMAGES_DIR"
            )
        if not index:
            return None  # no rows to lose
        missing = [
            path
            for path in index
            if path not in self.files and not path.startswith(self.unreadable)
        ]
        what = (
            f"{len(missing)} of its {len(index)} images are not there, e.g. {missing[0]}"
            if missing
            else self._other_bytes(index)
        )
        if what is None:
            log.info("%s: the images of %s are now at %s (same files); recorded the new "
                     "path", store, recorded, self.path)  # fmt: skip
            return None
        return (
            f"{store} holds the images of {recorded}, not of {self.path} ({what}). "
            f"Use --overwrite to replace its rows with those of {self.path}, "
            "--images-moved if it is the same folder moved elsewhere, or choose another "
            "output folder"
        )

    def _other_bytes(self, stored: dict[str, set[str]]) -> str | None:
        """None when the files here have the stored bytes (a sample spread over the stored
        paths is hashed, streamed, and compared), else why they may not."""
        paths = sorted(path for path in stored if path in self.files)
        step = max(1, len(paths) // self.sample)
        compared = 0
        for path in paths[::step][: self.sample]:
            try:
                digest = file_sha256(self.files[path])
            except DecodeError:
                continue  # unreadable here: neither the same nor other bytes
            if digest not in stored[path]:
                return f"files there have its images' names but other bytes, e.g. {path}"
            compared += 1
        return None if compared else "its images could not be read there to compare them"
