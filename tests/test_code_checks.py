"""The code's own rules (issue #22 points 4 and 6): no function in the package over MAX_FUNCTION_LINES lines, and the
import contracts of pyproject.toml ([tool.importlinter]: the trainer imports nothing of the builder, no import cycles),
which `make lint` checks with lint-imports before the tests; here they are shown to catch what they are there for."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# augzarr/builder and augzarr/trainer are links to builder/ and trainer/: each file is read once, from its own folder
PACKAGE_FOLDERS = ("augzarr", "builder", "trainer")
MAX_FUNCTION_LINES = 60
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def package_files() -> list[Path]:
    files = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            inside = path.relative_to(REPO / folder).parts
            if folder == "augzarr" and inside[0] in ("builder", "trainer"):
                continue
            files.append(path)
    return files


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of each function or method, nested ones too, longer than limit lines, counted from
    its def to its last line (docstring and comments included, decorators not)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, node.lineno, lines))
    return found


def test_no_function_in_the_package_runs_over_sixty_lines():
    """A driver reads as a list of named steps: a function past 60 lines is split into them."""
    files = package_files()
    assert len(files) > 40 and any(f.parts[-2] == "trainer" for f in files)  # the links' folders are read
    too_long = [
        f"{path.relative_to(REPO)}:{line} {name} ({lines} lines)"
        for path in files
        for name, line, lines in long_functions(path.read_text())
    ]
    assert not too_long, f"split into named steps (at most {MAX_FUNCTION_LINES} lines each): " + "; ".join(too_long)


def test_the_length_check_sees_methods_and_nested_functions():
    def body(indent: str, lines: int) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    longest = MAX_FUNCTION_LINES - 1  # a body of this many lines under its def: a function of exactly the limit
    source = f"class A:\n    def at_limit(self):\n{body(' ' * 8, longest)}\n    def outer(self):\n"
    source += f"        def inner():\n{body(' ' * 12, longest + 1)}"
    found = {name: lines for name, _, lines in long_functions(source)}
    assert found == {"outer": MAX_FUNCTION_LINES + 2, "inner": MAX_FUNCTION_LINES + 1}


def package_copy(dest: Path) -> Path:
    """pyproject.toml (its contracts) and the package's folders, links kept as links, as a clone has them."""
    dest.mkdir()
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(REPO / folder, dest / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # from root, whose augzarr/ comes first on sys.path: the copy is analysed, not the installed checkout
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


# planted lines (file -> line appended) and what lint-imports must then say
PLANTED = {
    "nothing": ({}, ["Contracts: 2 kept, 0 broken."]),
    "the trainer imports the builder": (
        {"trainer/mixing.py": "import augzarr.builder.layout  # planted"},
        ["the trainer imports nothing of the builder BROKEN", "augzarr.trainer.mixing -> augzarr.builder.layout"],
    ),
    "the trainer imports the builder late, in a function": (
        {"trainer/evaluate.py": "def planted():\n    from augzarr.builder import build  # planted"},
        ["the trainer imports nothing of the builder BROKEN", "augzarr.trainer.evaluate -> augzarr.builder.build"],
    ),
    "two modules import each other, late": (
        {
            "augzarr/user_text.py": "def planted():\n    from augzarr import fonts  # planted",
            "augzarr/fonts.py": "def planted():\n    from augzarr import user_text  # planted",
        },
        ["no import cycles BROKEN", "No cycles are allowed in augzarr."],
    ),
    "a cycle through two of the builder's modules": (
        {
            "builder/layout.py": "def planted():\n    from .verify import verify_store  # planted",
            "builder/verify.py": "def planted():\n    from .layout import split_rows  # planted",
        },
        ["no import cycles BROKEN", "No cycles are allowed in augzarr.builder."],
    ),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_the_import_contracts_hold_and_catch_a_planted_import(tmp_path, case):
    root = package_copy(tmp_path / "copy")
    planted, expected = PLANTED[case]
    for file, line in planted.items():
        (root / file).write_text((root / file).read_text() + "\n\n" + line + "\n")
    result = lint_imports(root)
    assert result.returncode == (1 if planted else 0), result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
