"""`--shard K/N`: the part of IMAGES_DIR one job of an array embeds (Slurm arrays,
Kubernetes indexed Jobs). Membership is a stable hash of the relative path, so adding or
removing files never moves the others between shards, and every file is in exactly one."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import SettingError


@dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count-1, as SLURM_ARRAY_TASK_ID (--array=0-N) or JOB_COMPLETION_INDEX
    count: int

    def holds(self, path: str) -> bool:
        digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @property
    def name(self) -> str:
        return f"{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str | None) -> Shard | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise SettingError(
            f"--shard {value}: give K/N with 0 <= K < N, e.g. --shard 0/4 for the first of 4 "
            "jobs ($SLURM_ARRAY_TASK_ID/N or $JOB_COMPLETION_INDEX/N)"
        )
    return Shard(int(match.group(1)), int(match.group(2)))
