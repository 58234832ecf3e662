"""Packaging (issue #11 point 1, issue #22 point 1): a non-editable install gives one namespace,
augzarr.builder and augzarr.trainer, with the four console scripts working, no top-level `builder` or
`trainer` module that would clash with other packages (PyPI has a `trainer`), and every module importable
under that one name even from the repository root, where the checkout's augzarr/ comes first on sys.path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from conftest import REPO, assert_same_store, run_cli, write_image_folder

SCRIPTS = ("build-aug", "inspect-aug", "train", "evaluate")
PACKAGE_FOLDERS = ("augzarr", "builder", "trainer")  # augzarr/builder and augzarr/trainer link to the other two


def dev_package_dirs() -> list[str]:
    """The dev environment's package folders, read from the running interpreter's sys.path (its venv's
    site-packages, and any folder a .pth line adds there, as a shared base environment)."""
    return [
        entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir()
    ]


def source_copy(dest: Path) -> Path:
    """What the package is built from, copied so that the in-tree build (build/, *.egg-info) leaves the
    checkout untouched: pyproject.toml, the README it names, augzarr/ and the folders its links point to
    (builder/, trainer/), the links kept as links, as a clone has them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    dest.mkdir()
    for name in ("pyproject.toml", config["project"]["readme"]):
        shutil.copy2(REPO / name, dest / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(REPO / folder, dest / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv holding a regular (non-editable) install of this checkout. Its other packages come
    from the dev environment through a .pth line, so nothing is downloaded. Python processes .pth files
    only in site folders, not in folders a .pth line adds, so the dev environment's editable install
    (its own .pth) stays off here: the tests below would see it if it leaked."""
    root = tmp_path_factory.mktemp("packaging")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz_dev_packages.pth").write_text("".join(f"{entry}\n" for entry in dev_package_dirs()))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env |= {"COLUMNS": "200", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    work = root / "work"  # every command runs here, outside the checkout
    work.mkdir()
    # a wheel built from the checkout, then installed; --ignore-installed: the dev environment's own augzarr
    # is visible through the .pth line, and pip must install beside it, not try to uninstall it
    wheels = root / "wheels"
    built = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(source_copy(root / "src")),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("augzarr-*.whl")
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return {"python": python, "bin": env_dir / "bin", "site": site, "env": env, "work": work}


def run_in(installed: dict, *args: str | Path) -> subprocess.CompletedProcess:
    """Run a command of the fresh venv from its work folder, outside the checkout."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=installed["env"], cwd=installed["work"]
    )


def test_install_imports_one_namespace(installed):
    probe = run_in(
        installed,
        installed["python"],
        "-c",
        "import importlib.metadata, augzarr, augzarr.builder, augzarr.trainer, augzarr.builder.build\n"
        "print(augzarr.builder.__file__); print(augzarr.trainer.__file__)\n"
        "print(augzarr.__version__, importlib.metadata.version('augzarr'))",
    )
    assert probe.returncode == 0, probe.stderr
    builder_file, trainer_file, versions = probe.stdout.splitlines()
    # the installed copy, not the checkout (the dev environment's editable mapping did not leak in)
    assert Path(builder_file) == installed["site"] / "augzarr" / "builder" / "__init__.py"
    assert Path(trainer_file) == installed["site"] / "augzarr" / "trainer" / "__init__.py"
    version, dist_version = versions.split()
    assert version == dist_version  # pyproject reads the version from augzarr/__init__.py
    for generic in ("builder", "trainer"):
        assert not (installed["site"] / generic).exists()
        refused = run_in(installed, installed["python"], "-c", f"import {generic}")
        assert refused.returncode != 0 and f"ModuleNotFoundError: No module named '{generic}'" in refused.stderr


def test_console_scripts_build_a_store(installed, tmp_path):
    for script in SCRIPTS:
        helped = run_in(installed, installed["bin"] / script, "--help")
        assert helped.returncode == 0 and "Usage" in helped.stdout, (script, helped.stderr)
    # a real build through the installed command, with worker processes (they import the workers'
    # module by its installed name), then read back and checked by the installed inspect-aug
    folder = write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    store = tmp_path / "aug.zarr"
    args = [
        "--source",
        str(folder),
        "--copies",
        "1",
        "--chunk-size",
        "4",
        "--workers",
        "2",
        "--preview",
        "0",
        "--quiet",
    ]
    built = run_in(installed, installed["bin"] / "build-aug", *args, "--out", store)
    assert built.returncode == 0, built.stderr
    verified = run_in(installed, installed["bin"] / "inspect-aug", "--store", store, "--verify")
    assert verified.returncode == 0 and verified.stdout.startswith("verified "), verified.stdout + verified.stderr
    # the installed package builds the same bytes as the checkout's
    run_cli("build-aug", *args, "--out", str(tmp_path / "dev.zarr"), check=True)
    assert_same_store(store, tmp_path / "dev.zarr")


ALL_MODULES = """
import importlib, pkgutil, augzarr, augzarr.builder.build, augzarr.trainer.training
augzarr.build, augzarr.open_store, augzarr.Store, augzarr.UserError
names = sorted(m.name for m in pkgutil.walk_packages(augzarr.__path__, "augzarr."))
for name in names:
    importlib.import_module(name)
import sys
print(len(names))
print("\\n".join(sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] in ("augzarr", "builder", "trainer"))))
"""


def test_every_module_imports_under_one_name_from_the_repository_root(installed):
    """Run from the checkout's root, as a user who installed the wheel and stays in the clone would: Python puts
    the checkout first, so its augzarr/ is imported, and must hold builder/ and trainer/ (through the links)
    under the one name augzarr.*; nothing loads as a top-level builder or trainer."""
    probe = subprocess.run(
        [str(installed["python"]), "-c", ALL_MODULES], capture_output=True, text=True, env=installed["env"], cwd=REPO
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    count, *files = probe.stdout.splitlines()
    prefix = {"augzarr": "augzarr", "builder": "augzarr.builder", "trainer": "augzarr.trainer"}
    expected = {
        ".".join([prefix[folder], *path.relative_to(REPO / folder).with_suffix("").parts]).removesuffix(".__init__")
        for folder in PACKAGE_FOLDERS
        for path in (REPO / folder).rglob("*.py")
    }  # rglob does not enter the links
    assert int(count) == len(expected - {"augzarr"}) > 30  # every module of the package, found by walking it
    # one copy of each source file: builder/x.py never loads a second time as another module
    real = [os.path.realpath(f) for f in files]
    assert len(real) == len(set(real)), sorted(f for f in real if real.count(f) > 1)
