"""Big folders: what a re-run of embed over an unchanged folder reads, and how long it takes,
as the folder grows; and that each kind of change is still found.

    python bench/big_folder.py                          # 10k and 100k files (3 minutes)
    python bench/big_folder.py --sizes 10000 --work /data/bench

For each folder (N small JPEGs of 4 KB in ten class folders, for each N; then the first N
again with files of 104 KB), a store is grown from a real one (InceptionV3, random weights,
75 px: its schema and fingerprint) with one row per file and that file's sha256, as a store
embedded by an earlier headstart, without a file record. Then
`headstart embed` runs twice, each in its own process:
- the first run is the one before the record (it reads and hashes every file, as every
  re-run did), and it writes the record;
- the second is a no-op re-run: the files' size and times are as recorded.
Bytes read are the process's `rchar` (/proc/<pid>/io, sampled until it exits: it counts
reads served from the page cache too), less a 20-file folder's no-op run (the libraries and
the network file). The scan's files/s is scan_images on the folder, timed here.

The changes (on the first folder): a file rewritten with another size; a file modified
within the racy window (at the start of the run that recorded it) and left as it is; the
same file rewritten with the same size and its mtime put back; a file touched (its times
changed, its bytes not). Each is checked: what the run read, embedded and kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from headstart.extractor import embed  # noqa: E402
from headstart.extractor.file_record import RACY_MARGIN_NS  # noqa: E402
from headstart.extractor.scan import scan_images  # noqa: E402

CLASSES, ROWS_PER_PART, SIDE = 10, 1000, 64
LARGE_PADDING = 100_000  # bytes after the JPEG's end in the large-file folder
REPO_PARENT = Path(__file__).resolve().parents[2]


def base_jpeg(seed: int = 0) -> bytes:
    """A small noisy JPEG; each file is it plus a trailer of its own (JPEG decoders stop
    at the end-of-image marker), so every file has its own sha256 and decodes alike."""
    pixels = np.random.default_rng(seed).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def file_bytes(base: bytes, number: int, version: int = 0) -> bytes:
    return base + number.to_bytes(8, "big") + version.to_bytes(8, "big")


def make_folder(folder: Path, files: int, base: bytes) -> list[tuple[str, str]]:
    """`files` images in ten class folders; (path, sha256) of each, in path order."""
    entries = []
    for number in range(files):
        path = f"c{number * CLASSES // files}/{number:07d}.jpg"
        data = file_bytes(base, number)
        target = folder / path
        if number == 0 or path.split("/")[0] != entries[-1][0].split("/")[0]:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entries.append((path, hashlib.sha256(data).hexdigest()))
    return entries


def grow_store(template: Path, entries: list[tuple[str, str]], images: Path, out: Path) -> None:
    """A store of one row per entry with `template`'s schema and fingerprint, features
    zero (compressed to nothing: the features do not matter here), and no file record."""
    schema = pq.read_schema(next(template.glob("part-*.parquet")))
    dim = schema.field("features").type.list_size
    out.mkdir(parents=True)
    zeros = np.zeros(ROWS_PER_PART * dim, np.float32)
    for number, start in enumerate(range(0, len(entries), ROWS_PER_PART), 1):
        chunk = entries[start : start + ROWS_PER_PART]
        table = pa.table(
            {
                "path": [path for path, _ in chunk],
                "label": [path.split("/")[0] for path, _ in chunk],
                "sha256": [sha256 for _, sha256 in chunk],
                "width": np.full(len(chunk), SIDE, np.int32),
                "height": np.full(len(chunk), SIDE, np.int32),
                "features": pa.FixedSizeListArray.from_arrays(
                    pa.array(zeros[: len(chunk) * dim]), dim
                ),
            },
            schema=schema,
        )
        pq.write_table(table, out / f"part-{number:05d}.parquet")
    summary = json.loads((template / "_headstart.json").read_text())
    summary["images_dir"] = os.path.realpath(images)
    summary["last_run"] = {"status": "complete"}
    (out / "_headstart.json").write_text(json.dumps(summary))


def run_embed(images: Path, store: Path) -> dict:
    """`headstart embed` in its own process: seconds, rchar (bytes read), its summary."""
    command = [sys.executable, "-m", "headstart", "embed", str(images), "-o", str(store),
               "--weights", "random", "--image-size", "75"]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_PARENT
    )
    rchar = 0
    while process.poll() is None:  # /proc/<pid>/io goes with the process: sample it
        rchar = max(rchar, _rchar(process.pid))
        time.sleep(0.02)
    seconds = time.monotonic() - started
    output = process.stdout.read().decode(errors="replace")
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    last_run = json.loads((store / "_headstart.json").read_text())["last_run"]
    return {**last_run, "seconds": seconds, "rchar": rchar,
            "line": output.strip().splitlines()[-1]}  # fmt: skip


def _rchar(pid: int) -> int:
    """The process's bytes read so far (0 once it is gone). A zombie's io is still there,
    so the last sample before the reap counts everything."""
    try:
        with open(f"/proc/{pid}/io") as handle:
            for line in handle:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def settle() -> None:
    """Wait until files written now are out of the racy window of a run started next."""
    time.sleep(RACY_MARGIN_NS / 1e9 + 0.2)


def scan_rate(images: Path, files: int) -> float:
    started = time.monotonic()
    found = len(scan_images(images).images)
    assert found == files, (found, files)
    return files / (time.monotonic() - started)


def measure(work: Path, template: Path, base: bytes, files: int, baseline: int) -> dict:
    name = f"{files}-{len(base) // 1000}kb"
    images, store = work / f"images-{name}", work / f"store-{name}"
    entries = make_folder(images, files, base)
    grow_store(template, entries, images, store)
    folder_bytes = sum(len(file_bytes(base, number)) for number in range(files))
    settle()
    before = run_embed(images, store)  # no record: every file read, as before it
    settle()
    noop = run_embed(images, store)
    assert noop["not_read"] == files and noop["embedded"] == 0, noop
    return {
        "files": files,
        "folder_bytes": folder_bytes,
        "without_record": before,
        "noop": noop,
        "scan_files_per_s": scan_rate(images, files),
        "noop_read_beyond_baseline": noop["rchar"] - baseline,
        "images": images,
        "store": store,
        "entries": entries,
    }


def changes(images: Path, store: Path, entries: list[tuple[str, str]], base: bytes) -> list:
    """Each kind of change, and whether the run after it did the right thing."""
    checks = []
    files = len(entries)
    number_of = {path: number for number, (path, _) in enumerate(entries)}

    def check(name: str, result: dict, expected: dict) -> None:
        got = {key: result[key] for key in expected}
        checks.append((name, got == expected, got, result["rchar"], result["seconds"]))

    # 1. another size: read, embedded, its old row removed
    resized = entries[1][0]
    (images / resized).write_bytes(file_bytes(base, number_of[resized], 1) + b"more")
    settle()
    check("a file rewritten with another size", run_embed(images, store),
          {"embedded": 1, "not_read": files - 1, "removed": 1})  # fmt: skip

    # 2. modified at the start of the run that records it (within the racy window): that
    # run reads it, and so does the next, though it has not changed since
    racy = images / entries[2][0]
    racy.write_bytes(file_bytes(base, number_of[entries[2][0]], 1))
    at_start = time.time_ns() + 3 * 10**9  # the run's start is later than now: be sure
    os.utime(racy, ns=(at_start, at_start))
    check("a file modified as the run starts", run_embed(images, store),
          {"embedded": 1, "not_read": files - 1, "removed": 1})  # fmt: skip
    recorded = racy.stat()
    check(
        "the same file, unchanged, on the next run (racy: read again)",
        run_embed(images, store),
        {"embedded": 0, "not_read": files - 1, "removed": 0},
    )

    # 3. the same file rewritten with the same size and its mtime put back
    racy.write_bytes(file_bytes(base, number_of[entries[2][0]], 2))
    os.utime(racy, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    assert (racy.stat().st_size, racy.stat().st_mtime_ns) == (
        recorded.st_size,
        recorded.st_mtime_ns,
    )
    check("that file rewritten, same size, mtime put back", run_embed(images, store),
          {"embedded": 1, "not_read": files - 1, "removed": 1})  # fmt: skip

    time.sleep(max(0.0, (at_start + RACY_MARGIN_NS) / 1e9 - time.time()) + 0.2)
    check(
        "that file, unchanged, once more (racy still: its mtime is after that run's start)",
        run_embed(images, store),
        {"embedded": 0, "not_read": files - 1, "removed": 0},
    )

    # 4. touched: its times change, its bytes do not (read, found unchanged, kept)
    os.utime(images / entries[3][0])
    settle()
    check("a file touched (same bytes)", run_embed(images, store),
          {"embedded": 0, "not_read": files - 1, "removed": 0})  # fmt: skip
    check("no change at all, after them", run_embed(images, store),
          {"embedded": 0, "not_read": files, "removed": 0})  # fmt: skip
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--work", type=Path, default=None, help="a folder to work in")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="big-folder-"))
    work.mkdir(parents=True, exist_ok=True)
    base = base_jpeg()

    small = work / "images-20"
    template = work / "template"
    make_folder(small, 20, base)
    embed(small, template, weights="random", image_size=75)  # also exports the network
    settle()
    run_embed(small, template)  # records the 20 files
    settle()
    baseline = run_embed(small, template)["rchar"]
    print(f"baseline: a no-op run over 20 files reads {baseline / 1e6:.1f} MB "
          "(libraries, the network file)")  # fmt: skip

    results = [measure(work, template, base, files, baseline) for files in args.sizes]
    # the first size again with files 25x bigger: what a no-op re-run reads must not change
    large = base + bytes(LARGE_PADDING)  # after the JPEG's end: decoded alike
    results.append(measure(work, template, large, args.sizes[0], baseline))
    print()
    print("| files | folder | run without a record: read, s | no-op re-run: read beyond "
          "baseline, s | read ratio | scan files/s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        before, noop = r["without_record"], r["noop"]
        print(
            f"| {r['files']:,} | {r['folder_bytes'] / 1e6:.0f} MB | "
            f"{(before['rchar'] - baseline) / 1e6:.0f} MB, {before['seconds']:.1f} | "
            f"{r['noop_read_beyond_baseline'] / 1e6:.1f} MB, {noop['seconds']:.1f} | "
            f"{(before['rchar'] - baseline) / max(1, r['noop_read_beyond_baseline']):.0f}x | "
            f"{r['scan_files_per_s']:,.0f} |"
        )
    if len(results) > 2:
        first, last = results[0], results[-2]
        files = last["files"] / first["files"]
        time_ratio = last["noop"]["seconds"] / first["noop"]["seconds"]
        read_ratio = last["noop_read_beyond_baseline"] / max(1, first["noop_read_beyond_baseline"])
        print(f"\n{files:.0f}x the files: no-op re-run {time_ratio:.1f}x the time, "
              f"{read_ratio:.1f}x the bytes read (the store's path and sha256 columns, the "
              "record)")  # fmt: skip

    small, large = results[0], results[-1]
    print(f"\n{large['folder_bytes'] / small['folder_bytes']:.0f}x bigger files, as many: no-op "
          f"re-run reads {large['noop_read_beyond_baseline'] / 1e6:.1f} MB vs "
          f"{small['noop_read_beyond_baseline'] / 1e6:.1f} MB (no image bytes), the run "
          f"without a record {(large['without_record']['rchar'] - baseline) / 1e6:.0f} MB vs "
          f"{(small['without_record']['rchar'] - baseline) / 1e6:.0f} MB")  # fmt: skip

    first = results[0]
    print(f"\nchanges, on the {first['files']:,}-file folder:")
    print("| change | right | embedded, not read, removed | read | s |")
    print("|---|---|---|---|---|")
    all_right = True
    for name, right, got, rchar, seconds in changes(
        first["images"], first["store"], first["entries"], base
    ):
        all_right &= right
        shown = ", ".join(str(value) for value in got.values())
        print(f"| {name} | {'yes' if right else 'NO'} | {shown} | "
              f"{(rchar - baseline) / 1e6:.1f} MB | {seconds:.1f} |")  # fmt: skip
    if not all_right:
        raise SystemExit("a change was not handled right")


if __name__ == "__main__":
    main()
