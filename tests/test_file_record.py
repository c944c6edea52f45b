"""The file record (extractor/file_record.py): a re-run reads only what changed. Files whose
size, mtime_ns and ctime_ns are as recorded are trusted without being opened; git's racy
rule; `--rehash`; a store made before the record adopts it; a killed run's saves; shards."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from headstart.extractor import decode, file_record
from headstart.extractor.file_record import RACY_MARGIN_NS, FileRecord, is_record_name
from headstart.extractor.safe_files import OutputFolder
from headstart.extractor.scan import ImageFile


@pytest.fixture
def opened(monkeypatch):
    """The image files embed opens, by name (every read of an image goes through here)."""
    names: list[str] = []
    original = decode.open_regular_file

    def spy(location):
        names.append(Path(location).name)
        return original(location)

    monkeypatch.setattr(decode, "open_regular_file", spy)
    return names


@pytest.fixture
def no_margin(monkeypatch):
    """Files written a moment before a run count as settled (the real margin, 2 s, would
    make a test wait): the racy rule itself is tested with the real margin below."""
    monkeypatch.setattr(file_record, "RACY_MARGIN_NS", 0)


def last_run(out: Path) -> dict:
    return json.loads((out / "_headstart.json").read_text())["last_run"]


def records(out: Path) -> list[str]:
    return sorted(name for name in os.listdir(out) if is_record_name(name))


def test_a_no_op_rerun_opens_no_image_and_a_changed_file_is_read(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    assert len(opened) == 12 and records(out) == ["_files-00001.parquet"]

    opened.clear()
    again = run_embed(sample_images, out)
    assert again.exit_code == 0, again.output
    assert opened == []
    assert "not read again: 12 files whose size and times are as when they were last read" in (
        again.output
    )
    assert again.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert last_run(out)["not_read"] == 12
    assert records(out) == ["_files-00002.parquet"]  # the run's record replaces the older

    changed = sample_images / "circle" / "circle_0001.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")  # another size
    (sample_images / "square" / "square_0003.png").unlink()
    opened.clear()
    after = run_embed(sample_images, out)
    assert opened[0] == "circle_0001.jpg" and set(opened) == {"circle_0001.jpg"}
    assert after.output.strip().endswith("embedded 1, skipped 0, already present 10")
    assert "removed 2 rows" in after.output


def test_a_same_size_rewrite_with_its_times_put_back_is_found(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    """ctime cannot be put back: a tool that restores a file's mtime after changing it
    (touch -r, cp -p over the file) is still seen."""
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    target = sample_images / "square" / "square_0002.jpg"
    before = target.stat()
    other = (sample_images / "circle" / "circle_0002.jpg").read_bytes()
    target.write_bytes(other[: before.st_size].ljust(before.st_size, b"\0"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    opened.clear()
    result = run_embed(sample_images, out)
    assert set(opened) == {"square_0002.jpg"}  # hashed, then decoded
    # what the file now holds is a corrupt JPEG or another image: either way not the old row
    assert "already present 11" in result.output


def test_a_file_modified_at_or_after_the_runs_start_is_read_again(
    run_embed, sample_images, tmp_path, opened, monkeypatch
):
    """git's racy rule: an entry of a file modified at or after the start of the run that
    recorded it (less the margin) is not trusted; the file is read again."""
    out = tmp_path / "features"
    monkeypatch.setattr(file_record, "RACY_MARGIN_NS", 3600 * 10**9)  # all of them, racy
    assert run_embed(sample_images, out).exit_code == 0
    opened.clear()
    assert run_embed(sample_images, out).exit_code == 0
    assert len(opened) == 12 and last_run(out)["not_read"] == 0  # read, found unchanged

    # without a margin, only a file whose times are in the future (a clock ahead, a file
    # server's) is racy; it stays so, run after run
    monkeypatch.setattr(file_record, "RACY_MARGIN_NS", 0)
    future = time.time_ns() + 3600 * 10**9
    os.utime(sample_images / "circle" / "circle_0000.jpg", ns=(future, future))
    assert run_embed(sample_images, out).exit_code == 0
    for _ in range(2):
        opened.clear()
        result = run_embed(sample_images, out)
        assert opened == ["circle_0000.jpg"] and last_run(out)["not_read"] == 11
        assert result.output.strip().endswith("embedded 0, skipped 0, already present 12")


def test_the_racy_rule_and_each_recorded_field(tmp_path):
    """FileRecord.trusted on recorded entries: only the same size, mtime_ns and ctime_ns,
    settled before the recording run's start by the margin, with that sha256 stored."""
    start = 10**18

    def image(name, size=100, mtime=start - 10**10, ctime=start - 10**10):
        return ImageFile(name, None, tmp_path / name, size, mtime, ctime)

    recorded = [
        image("settled"),
        image("modified at the start", mtime=start),
        image("changed just before the start", ctime=start - RACY_MARGIN_NS // 2),
        image("settled just in time", ctime=start - RACY_MARGIN_NS - 1),
        image("resized"),
        image("touched"),
        image("chmod-ed"),
        image("row gone"),
    ]
    with OutputFolder(tmp_path / "store") as folder:
        FileRecord(folder, None, recorded, start).finish(
            {i.path: "sha-" + i.path for i in recorded}
        )
        now = [*recorded[:4], image("resized", size=101), image("touched", mtime=start - 10**9)]
        now += [image("chmod-ed", ctime=start - 5 * 10**8), recorded[7], image("new")]
        stored = {i.path: {"sha-" + i.path} for i in now if i.path != "row gone"}
        trusted = FileRecord(folder, None, now, start + 10**10).trusted(stored)
    assert trusted == {"settled": "sha-settled", "settled just in time": "sha-settled just in time"}


@pytest.mark.parametrize("recorded_from", [-(2**63), 0, 2**62])
def test_a_record_whose_run_started_never_or_in_the_future_trusts_nothing(tmp_path, recorded_from):
    """An edited record: a run's start before 1970, or after this run's, or one that would
    overflow the racy rule's arithmetic, vouches for nothing."""
    image = ImageFile("a.jpg", None, tmp_path / "a.jpg", 100, 10**18, 10**18)
    with OutputFolder(tmp_path / "store") as folder:
        FileRecord(folder, None, [image], recorded_from).finish({"a.jpg": "sha"})
        assert FileRecord(folder, None, [image], 2 * 10**18).trusted({"a.jpg": {"sha"}}) == {}


def test_rehash_reads_every_file(run_embed, sample_images, tmp_path, opened, no_margin):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    opened.clear()
    result = run_embed(sample_images, out, "--rehash")
    assert result.exit_code == 0, result.output
    assert len(opened) == 12 and last_run(out)["not_read"] == 0
    assert "not read again" not in result.output
    assert result.output.strip().endswith("embedded 0, skipped 0, already present 12")
    opened.clear()
    assert run_embed(sample_images, out).exit_code == 0
    assert opened == []  # --rehash recorded them anew


def test_a_store_made_before_the_record_adopts_it(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    for name in records(out):  # as a store written by an earlier headstart
        (out / name).unlink()
    summary = json.loads((out / "_headstart.json").read_text())
    summary["last_run"].pop("not_read")
    (out / "_headstart.json").write_text(json.dumps(summary))
    opened.clear()
    adopted = run_embed(sample_images, out)
    assert adopted.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert len(opened) == 12 and records(out) == ["_files-00001.parquet"]
    opened.clear()
    assert run_embed(sample_images, out).exit_code == 0
    assert opened == []


def test_an_unreadable_record_only_means_reading_the_files(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    (out / "_files-00001.parquet").write_bytes(b"not parquet")
    opened.clear()
    result = run_embed(sample_images, out)
    assert result.exit_code == 0, result.output
    assert "_files-00001.parquet is not a readable file record" in result.output
    assert len(opened) == 12
    assert records(out) == ["_files-00002.parquet"]  # replaced by this run's
    opened.clear()
    assert run_embed(sample_images, out).exit_code == 0 and opened == []


def test_a_killed_runs_saves_spare_its_successor_the_reading(
    run_embed, sample_images, tmp_path, opened, no_margin, monkeypatch
):
    """A run saves its record as it goes (every RECORD_EVERY_S): a run stopped before its
    end leaves those saves, and the next run does not read those files again."""
    out = tmp_path / "features"
    monkeypatch.setattr(file_record, "RECORD_EVERY_S", 0.0)

    def killed(self, current):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(FileRecord, "finish", killed)
        stopped = run_embed(sample_images, out, "--batch-size", "4", "--rows-per-part", "4")
    assert stopped.exit_code != 0
    saved = records(out)
    assert len(saved) >= 2  # one per batch at least after the first
    opened.clear()
    resumed = run_embed(sample_images, out)
    assert resumed.output.strip().endswith("embedded 0, skipped 0, already present 12")
    assert opened == []  # every file the stopped run read was saved
    assert records(out) == [f"_files-{len(saved) + 1:05d}.parquet"]


def test_shards_keep_their_own_records_and_an_unsharded_run_merges_them(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    out = tmp_path / "features"
    for shard in ("0/2", "1/2"):
        assert run_embed(sample_images, out, "--shard", shard).exit_code == 0
    assert records(out) == ["_files-shard0of2-00001.parquet", "_files-shard1of2-00001.parquet"]
    assert run_embed(sample_images, out, "--shard", "0/2").exit_code == 0
    assert records(out) == ["_files-shard0of2-00002.parquet", "_files-shard1of2-00001.parquet"]
    opened.clear()
    merged = run_embed(sample_images, out)
    assert opened == [] and merged.output.strip().endswith("already present 12")
    assert records(out) == ["_files-00001.parquet"]


def test_overwrite_removes_the_record_with_the_rest(run_embed, sample_images, tmp_path):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    replaced = run_embed(sample_images, out, "--image-size", "80", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert records(out) == ["_files-00001.parquet"]


def test_a_users_file_named_like_a_record_is_neither_read_nor_removed(
    run_embed, sample_images, tmp_path, opened, no_margin
):
    out = tmp_path / "features"
    assert run_embed(sample_images, out).exit_code == 0
    (out / "_files-notes.parquet").write_bytes(b"a user's notes")
    opened.clear()
    for extra in ((), ("--image-size", "80", "--overwrite")):
        result = run_embed(sample_images, out, *extra)
        assert result.exit_code == 0, result.output
        assert "_files-notes" not in result.output
        assert (out / "_files-notes.parquet").read_bytes() == b"a user's notes"
    assert len(opened) == 12  # the second run, another extractor, read every file
