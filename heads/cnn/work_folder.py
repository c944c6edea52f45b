"""train-cnn's work folder, `_headstart-resume-NAME` beside MODEL_DIR: made and locked for
one run, or a killed run's, resumed after its last completed epoch when the settings and
the images are the same (run.json holds the run's key and state). A folder of that name
that headstart did not make, or that holds a symbolic link, is refused."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...extractor.errors import OutputError, UnsafeOutputError
from ...extractor.json_input import parse_json
from ...extractor.safe_files import OutputFolder
from ...extractor.safe_folders import refuse_links_inside
from .data import DecodedImages
from .settings import CnnSettings

log = logging.getLogger("headstart")

RUN_FILE, PIXELS_FILE, PHASE1_WEIGHTS = "run.json", "pixels.u8", "phase1.weights.h5"
RUN_MARK = "train-cnn resume state"  # run.json's "headstart" field: the folder is ours


def remove_unless_resumable(parent: OutputFolder, name: str) -> None:
    """A work folder this run made holds nothing worth resuming until an epoch completed
    (or the run finished): before that, a failed run leaves no trace."""
    if parent.entry(name) is None or completed_epochs(parent / name):
        return
    try:
        with parent.subfolder(name, create=False) as work:
            with work.open_existing(RUN_FILE) as handle:
                finished = parse_json(handle.read()).get("finished")
    except (OSError, ValueError, AttributeError, OutputError):
        finished = False
    if not finished:
        parent.remove_tree(name)


def resume_folder(parent: OutputFolder, name: str) -> OutputFolder:
    """The work folder `name`, locked for this run: a killed run's, to resume, or a new
    one. A folder of that name that headstart did not make, or that holds a symbolic link,
    is refused; one that another run holds is refused too."""
    work = parent.subfolder(name)
    try:
        work.lock(
            f"{work.path} is in use by another train-cnn run; wait for it to finish or "
            "choose another -o"
        )
        if not work.names():  # new (or empty: nothing to lose)
            write_json(work, RUN_FILE, {"headstart": RUN_MARK})
        elif not is_our_work_folder(work):
            raise UnsafeOutputError(
                f"{work.path} is not a train-cnn work folder headstart made (no {RUN_FILE} "
                "of its own); headstart does not touch it: move it away or choose another -o"
            )
        refuse_links_inside(work)
    except BaseException:
        work.close()
        raise
    return work


def is_our_work_folder(work: OutputFolder) -> bool:
    try:
        with work.open_existing(RUN_FILE) as handle:
            return parse_json(handle.read()).get("headstart") == RUN_MARK
    except UnsafeOutputError:
        raise
    except (OSError, ValueError, AttributeError, OutputError):
        return False


def run_key(s: CnnSettings, decoded: DecodedImages) -> str:
    """What a resumed run must share with the killed one: settings and exact images."""
    digest = hashlib.sha256(json.dumps(asdict(s), sort_keys=True).encode())
    for path, sha256 in zip(decoded.paths, decoded.sha256s):
        digest.update(f"{path}\0{sha256}\n".encode())
    return digest.hexdigest()


def start_or_resume(work: OutputFolder, key: str) -> dict[str, Any]:
    """The run's state: the killed run's when it had the same key, else a fresh one (the
    work folder is emptied, the decoded pixels excepted)."""
    with work.open_existing(RUN_FILE) as handle:
        try:
            run = parse_json(handle.read())
        except ValueError:
            run = {}
    if run.get("key") == key:
        return run
    if "key" in run:
        log.info("%s holds a run with other settings or images: starting afresh", work.path)
    for name in work.names():
        if name not in (PIXELS_FILE, RUN_FILE):
            remove(work, name)
    run = {"headstart": RUN_MARK, "key": key}
    write_json(work, RUN_FILE, run)
    return run


def remove(work: OutputFolder, name: str) -> None:
    info = work.entry(name)
    if info is not None and stat.S_ISDIR(info.st_mode):
        work.remove_tree(name)
    else:
        work.remove_file(name)


def completed_epochs(staging: Path) -> int:
    """Epochs a killed run completed (its BackupAndRestore metadata), 0 if none."""
    return max((epoch_in(m) for m in staging.glob("backup/*/training_metadata.json")), default=0)


def epoch_in(metadata: Path) -> int:
    """The epoch count BackupAndRestore recorded (0 if the file is unreadable)."""
    try:
        return int(parse_json(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_json(folder: OutputFolder, name: str, value: dict) -> None:
    folder.write_text(name, json.dumps(value, indent=2, default=str) + "\n")
