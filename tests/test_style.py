"""One linter and formatter for the whole tree (ruff, settings in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a dev dependency: pip install -e '.[dev]'"
    lint = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    formatting = subprocess.run(
        [ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert formatting.returncode == 0, formatting.stdout
