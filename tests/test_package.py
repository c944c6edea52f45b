"""One import package, `headstart`: the repository's top-level folders installed under one
name, every module loaded under that one name only (two copies of an exception class would
slip past the CLI's error translation), and `python -m headstart` as the command."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_TOP_LEVEL = {"cli", "launch", "extractor", "heads"}  # only ever inside `headstart`
SKIPPED = {".git", "build", "__pycache__", ".hypothesis", "headstart.egg-info"}


def _python_files():
    for path in sorted(REPO.rglob("*.py")):
        if not SKIPPED & set(path.relative_to(REPO).parts):
            yield path


def _absolute_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, [node.module]


def test_own_modules_are_imported_relatively_inside_and_as_headstart_outside():
    wrong = []
    for path in _python_files():
        inside = path.relative_to(REPO).parts[0] not in ("tests", "bench")
        for line, names in _absolute_imports(ast.parse(path.read_text())):
            for name in names:
                top = name.split(".")[0]
                if top in OWN_TOP_LEVEL or (inside and top == "headstart"):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert wrong == []


LIBRARY_ERRORS = """
import sys
from click.testing import CliRunner
from headstart import cli

empty = sys.argv[1]
for args in (["info", empty], ["train", empty, "-o", empty + "/head"],
             ["predict", empty, empty, "-o", empty + "/p.csv"],
             ["embed", empty, "-o", empty + "/store", "--weights", "random"]):
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result
    print(result.output.strip())
ours = [f for f in (getattr(m, "__file__", None) for m in list(sys.modules.values()))
        if f and f.startswith(sys.argv[2])]
print("modules:", len(ours), "twice:", sorted({f for f in ours if ours.count(f) > 1}))
"""


def test_the_cli_turns_the_librarys_errors_into_one_line_and_loads_each_module_once(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_ERRORS, tmp_path, str(REPO)],
        capture_output=True,
        text=True,
        cwd=REPO,  # the folders `extractor`, `heads` and cli.py are importable from here too
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines[:4]] == ["Error:"] * 4, lines
    assert "no images found" in lines[3] and "holds no features" in lines[1]
    count, twice = lines[-1].removeprefix("modules: ").split(" twice: ")
    assert int(count) > 20 and twice == "[]", lines[-1]


def test_python_dash_m_headstart_is_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "headstart", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.endswith("headstart, version 0.1.0\n"), done


def test_the_readmes_architecture_lists_every_module_once():
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Architecture", 1)[1].split("```", 2)[1]
    listed, folder = [], ""
    for line in block.strip().splitlines():
        if not line.startswith(" "):
            folder = "" if line.startswith("headstart") else line.split()[0]
        else:
            listed.append(folder + line.split()[0] + ".py")
    modules = [
        path.relative_to(REPO).as_posix()
        for path in [*REPO.glob("*.py"), *REPO.glob("extractor/*.py"), *REPO.glob("heads/**/*.py")]
        if path.name != "__init__.py"
    ]
    assert sorted(listed) == sorted(modules)
