"""The package as an operator gets it: a wheel built from the package's files alone, installed
with pip into a fresh virtual environment outside the checkout.

Slow-ish (a wheel build and a pip install, about 20 s), so it is built once for the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import attrs
import pytest

import karma
from karma.tools import unit as unit_file

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]


@attrs.frozen
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a working directory away from the checkout

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A program of the environment, run from outside the checkout with nothing pointing
        Python back into it."""
        env = dict(os.environ if env is None else env)
        env.pop("PYTHONPATH", None)
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.outside,
            env=env,
        )


def run(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    source.mkdir()
    # what a wheel is built from, and nothing else of the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "karma", source / "karma", ignore=shutil.ignore_patterns("__pycache__"))
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--wheel-dir",
        work / "wheels",
        ".",
        cwd=source,
    )
    (wheel,) = (work / "wheels").glob("karma_trio-*.whl")
    # installed into a fresh environment (dependencies come from the index
    # pip is configured with, as `make install` gets them)
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=work)
    run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        wheel,
        cwd=work,
    )
    outside = work / "elsewhere"
    outside.mkdir()
    return Installed(wheel, venv, outside)


def test_the_installed_program_is_this_version_and_not_the_checkout(
    installed: Installed,
) -> None:
    done = installed.run(installed.bin("karma-trio"), "--version")
    assert (done.returncode, done.stdout) == (0, f"karma-trio {karma.__version__}\n")
    where = installed.run(installed.bin("python"), "-c", "import karma; print(karma.__file__)")
    assert where.stdout.startswith(str(installed.venv)), where.stdout
    assert installed.wheel.name == f"karma_trio-{karma.__version__}-py3-none-any.whl"


@pytest.mark.parametrize("subcommand", ["cli", "check", "backup", "ingest"])
def test_every_subcommand_answers_help(installed: Installed, subcommand: str) -> None:
    done = installed.run(installed.bin("karma-trio"), subcommand, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: karma-trio {subcommand}")


def test_print_unit_prints_the_packaged_unit_and_environment(
    installed: Installed,
) -> None:
    unit = installed.run(installed.bin("karma-trio"), "print-unit")
    assert unit.stdout == unit_file.read(unit_file.UNIT)
    env = installed.run(installed.bin("karma-trio"), "print-unit", "--env")
    assert env.stdout == unit_file.read(unit_file.ENVIRONMENT)


def test_the_wheel_declares_its_license_and_ships_it(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
        license_text = wheel.read(next(n for n in names if n.endswith("licenses/LICENSE")))
    assert "License-Expression: MIT" in text.splitlines()
    assert "Classifier: Framework :: Trio" in text.splitlines()
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Copyright (c) 2026 the karma-trio authors" in license_text
    assert "karma/py.typed" in names


def in_a_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    found = subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True, check=False)
    return found.returncode == 0


@pytest.mark.skipif(not in_a_git_checkout(), reason="git lists the files of the checkout")
def test_the_source_distribution_carries_docs_and_ops(
    tmp_path: Path,
) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout.decode()
    source = tmp_path / "src"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is still listed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run(
        sys.executable,
        "-m",
        "build",
        "--sdist",
        "--outdir",
        tmp_path / "dist",
        source,
        cwd=tmp_path,
    )
    (sdist,) = (tmp_path / "dist").glob(f"karma_trio-{karma.__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for shipped in (
        "LICENSE",
        "docs/operations.md",
        "ops/alerts.yml",
        "karma/ops_data/karma-trio.service",
    ):
        assert shipped in names
