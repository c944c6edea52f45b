"""Pin the Docker image's Python packages, and size its two stages.

    python docker/pin.py            # writes docker/constraints.txt, prints both stages' sizes

pip resolves pyproject.toml's dependencies with the `tensorflow` and `gpu` extras for the
image's Python (Ubuntu 24.04: CPython 3.12, glibc 2.39, x86_64, wheels only), which needs
the package index. docker/constraints.txt pins each distribution of that resolution at the
version installed here where there is one (the one the tests ran with; pip's build tools
aside), else at pip's choice (the CUDA wheels of the gpu extra, which only GPU nodes
install). Each stage is then resolved again for the image with those constraints, which
checks that they hold together, and both Docker stages install with `-c` this file, so two
builds from one commit get the same packages.

Sizes, from pip's metadata: what each stage installs (the export stage `.[tensorflow]`,
the runtime stage `.[gpu]`), summed over the files each distribution's RECORD lists where
it is installed here, else the wheel's size on the index (compressed: a lower bound; said).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "docker" / "constraints.txt"
STAGES = {"export stage (.[tensorflow])": ["tensorflow"], "runtime stage (.[gpu])": ["gpu"]}
IMAGE_PYTHON = "3.12"  # Ubuntu 24.04's python3
IMAGE_GLIBC_MINORS = (39, 35, 34, 31, 28, 27, 24, 17)  # glibc 2.39 runs these manylinux wheels
BUILD_TOOLS = {"pip", "setuptools", "wheel"}  # pip's choice: this machine's are its Python's


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return lines


def resolved(extras: list[str], *options: str) -> dict[str, dict]:
    """pip's resolution of headstart's requirements with `extras`, for the image's Python
    and platform: name -> report entry."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in IMAGE_GLIBC_MINORS]
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--report", str(report), "--target", str(Path(scratch) / "target"),
                "--python-version", IMAGE_PYTHON, "--only-binary=:all:",
                *(f"--platform={platform}" for platform in [*platforms, "manylinux2014_x86_64"]),
                *options, *requirements(extras),
            ],
            check=True,
        )  # fmt: skip
        entries = json.loads(report.read_text())["install"]
    return {canonicalize_name(entry["metadata"]["name"]): entry for entry in entries}


def installed_version(name: str) -> str | None:
    if name in BUILD_TOOLS:
        return None
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def size(name: str, entry: dict) -> tuple[int, bool]:
    """(bytes, installed): the RECORD's sum where installed here, else the wheel's size."""
    try:
        files = metadata.distribution(name).files or []
        return sum(file.size or 0 for file in files), True
    except metadata.PackageNotFoundError:
        request = urllib.request.Request(entry["download_info"]["url"], method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.headers["Content-Length"]), False


def main() -> None:
    resolution = resolved(["tensorflow", "gpu"])
    pins = {
        name: installed_version(name) or entry["metadata"]["version"]
        for name, entry in sorted(resolution.items())
    }
    CONSTRAINTS.write_text(
        "# Written by `python docker/pin.py`: the versions the tests ran with, and pip's\n"
        "# choice for the CUDA wheels and build tools, resolved for the image's Python 3.12.\n"
        "# Both Docker stages install with -c this file.\n"
        + "".join(f"{name}=={version}\n" for name, version in pins.items())
    )
    print(f"wrote {CONSTRAINTS.relative_to(REPO)} ({len(pins)} pins)")
    for stage, extras in STAGES.items():
        installs = resolved(extras, "-c", str(CONSTRAINTS))  # what the stage's RUN installs
        sizes = {name: size(name, entry) for name, entry in installs.items()}
        total = sum(bytes_ for bytes_, _ in sizes.values())
        wheels = {name: bytes_ for name, (bytes_, installed) in sizes.items() if not installed}
        largest = sorted(sizes, key=lambda name: -sizes[name][0])[:5]
        print(
            f"{stage}: {len(sizes)} distributions, {total / 2**30:.2f} GiB"
            + (
                f", of which {sum(wheels.values()) / 2**30:.2f} GiB as wheels (compressed): "
                + ", ".join(sorted(wheels))
                if wheels
                else ""
            )
            + "; largest: "
            + ", ".join(f"{name} {sizes[name][0] / 2**20:.0f} MiB" for name in largest)
        )


if __name__ == "__main__":
    main()
