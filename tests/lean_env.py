"""A Python environment holding headstart's lean install: what `pip install headstart`
(without the `tensorflow` extra) brings, and nothing else, made in seconds from the packages
already installed here.

It is a venv without the system's site-packages; its site-packages holds symbolic links to
the files of every distribution in the closure of pyproject.toml's `dependencies`
(requirements followed through the installed distributions' metadata, markers evaluated),
and `headstart` itself as a link to this checkout. TensorFlow, Keras, tf2onnx and
TensorBoard, which only the extra brings, are not there: importing them fails as on a node
where they were never installed."""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's dependencies, and those of `extras`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def lean_distributions() -> dict[str, metadata.Distribution]:
    """The installed distributions the lean install needs, by canonical name."""
    return closure(requirements())


def closure(wanted: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions `wanted` needs, followed through their requirements."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(requirement, "") for requirement in wanted]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        extras = sorted(requirement.extras)
        if name in found and not extras:
            continue
        distribution = found.get(name) or metadata.distribution(requirement.name)
        found[name] = distribution
        for line in distribution.requires or []:
            for wanted in ["", *extras]:
                pending.append((Requirement(line), wanted))
    return found


def _top_level_entries(distribution: metadata.Distribution) -> set[str]:
    """The names in site-packages that a distribution's files live under."""
    entries = set()
    for file in distribution.files or []:
        first = Path(file).parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            entries.add(first)
    return entries


def make_lean_env(folder: Path) -> Path:
    """A venv at `folder` with the lean install; returns its python."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120
    )
    python = folder / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    installed = Path(sysconfig.get_path("purelib"))
    for distribution in lean_distributions().values():
        home = Path(distribution.locate_file(""))
        for entry in _top_level_entries(distribution):
            source = home / entry
            if source.exists() and not (site / entry).exists():
                (site / entry).symlink_to(source)
    assert installed != site
    (site / "headstart").symlink_to(REPO)
    return python
