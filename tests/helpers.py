"""What tests share besides fixtures (conftest.py holds those): the image size every test
embeds at, and running the CLI in a fresh Python. The tests folder is on sys.path (pytest's
rootdir-less layout, no __init__.py), so tests import this as `helpers`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

IMAGE_SIZE = 75  # InceptionV3's minimum: the fastest size that still runs the real network

_CLI_THEN_MODULES = """
import sys
from headstart import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as end:
    assert end.code in (0, None), end.code
print("heavy modules imported:", sorted({"tensorflow", "keras", "pandas"} & set(sys.modules)))
"""


def run_cli_in_subprocess(*args):
    """Run `headstart ARGS` in a fresh Python; its stdout ends with the line
    `heavy modules imported: [...]` naming TensorFlow, Keras and pandas if the command
    imported them (pandas costs a quarter of a second of start-up)."""
    return subprocess.run(
        [sys.executable, "-c", _CLI_THEN_MODULES, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
