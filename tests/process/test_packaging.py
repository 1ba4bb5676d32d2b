"""The package as an operator gets it: a wheel built the way the Dockerfile builds it, installed
with pip into a fresh virtual environment outside the checkout, and the image's steps replayed
there without a container engine (build stage's COPY and RUN, then the final stage's ENV and CMD).

Slow-ish (a wheel build and a pip install, about 20 s), so it is built once for the module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import karma
from karma.tools import unit as unit_file
from tests import dockerfile
from tests.process.proc import free_port

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]
BUILD, FINAL = dockerfile.stages()


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
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    source.mkdir()
    # the build stage's COPY lines: only what they name is there to build from
    for copy in (i for i in BUILD if i.keyword == "COPY"):
        *names, target = copy.words()
        for name in names:
            into = source / target / name if target.endswith("/") else source / target
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / name, into)
    # its RUN line, with our interpreter's pip and a local wheel directory
    (build,) = (i for i in BUILD if i.keyword == "RUN")
    words = build.words()
    assert words[:2] == ["pip", "wheel"]
    words = [str(work / "wheels") if w == "/wheels" else w for w in words[2:]]
    run(sys.executable, "-m", "pip", "wheel", *words, cwd=source)
    (wheel,) = (work / "wheels").glob("karma_trio-*.whl")
    # the final stage's install, into a fresh environment (dependencies come from the index
    # pip is configured with, as `make install` gets them)
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=work)
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-cache-dir", wheel, cwd=work)
    outside = work / "elsewhere"
    outside.mkdir()
    return Installed(wheel, venv, outside)


def test_the_installed_program_is_this_version_and_not_the_checkout(installed: Installed) -> None:
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


def test_print_unit_prints_the_packaged_unit_and_environment(installed: Installed) -> None:
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


@pytest.fixture
def container(
    installed: Installed, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """The image's CMD with its ENV, from the installed environment. What a container owns
    alone is given here: its data volume is a temp directory, its ports free ones, and it
    listens on loopback (this machine is shared)."""
    env = {**os.environ, **dockerfile.environment(FINAL)}
    env.update(
        KARMA_DUMP_DIR=str(tmp_path),
        KARMA_PORT=str(free_port()),
        KARMA_METRICS_PORT=str(free_port()),
        KARMA_HOST="127.0.0.1",
        KARMA_METRICS_HOST="127.0.0.1",
        PATH=f"{installed.venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    env.pop("KARMA_URL", None)
    command = dockerfile.last(FINAL, "CMD").words()
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield process, env
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def wait_for_ping(installed: Installed, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`karma-trio cli ping` until the server listens (exit 3 until then), at most 30 s."""
    url = f"karma://127.0.0.1:{env['KARMA_PORT']}"
    deadline = time.monotonic() + 30
    while True:
        done = installed.run(installed.bin("karma-trio"), "cli", "--url", url, "ping", env=env)
        if done.returncode != 3 or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


def test_the_image_command_serves_pings_and_stops_cleanly(
    installed: Installed, container: tuple[subprocess.Popen[bytes], dict[str, str]]
) -> None:
    process, env = container
    done = wait_for_ping(installed, env)
    assert (done.returncode, done.stdout) == (0, "pong\n"), done.stderr
    metrics = f"http://127.0.0.1:{env['KARMA_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(metrics, timeout=10) as response:
        assert response.status == 200
    process.send_signal(signal.SIGTERM)  # docker stop
    assert process.wait(timeout=60) == 0
    check = installed.run(installed.bin("karma-trio"), "check", env["KARMA_DUMP_DIR"])
    assert check.returncode == 0, check.stdout


def test_the_image_healthcheck_passes_against_the_running_server(
    installed: Installed, container: tuple[subprocess.Popen[bytes], dict[str, str]]
) -> None:
    _, env = container
    assert wait_for_ping(installed, env).returncode == 0
    program, *args = dockerfile.healthcheck_command(FINAL)
    assert program == "python"
    done = installed.run(installed.bin("python"), *args, env=env)
    assert done.returncode == 0, done.stderr


def in_a_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    found = subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True, check=False)
    return found.returncode == 0


@pytest.mark.skipif(not in_a_git_checkout(), reason="git lists the files of the checkout")
def test_the_source_distribution_carries_docs_ops_and_the_dockerfile(tmp_path: Path) -> None:
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
        "Dockerfile",
        "docs/operations.md",
        "ops/alerts.yml",
        "ops/kubernetes/statefulset.yaml",
        "karma/ops_data/karma-trio.service",
    ):
        assert shipped in names
