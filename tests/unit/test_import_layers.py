"""Arrows point down (DESIGN.md): no import cycles, and nothing below the trio shell imports it.

`scripts/import_cycles.py` reads every module's `import` statements with `ast`; these tests run
it on the package, and on small packages written here to show it finds what it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_cycles.py"

def check(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", *args], capture_output=True, text=True, check=False
    )
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (1 if report["cycles"] or report["upward_imports"] else 0)
    return report


@pytest.fixture(scope="module")
def karma_report() -> dict[str, Any]:
    return check()


def test_no_module_imports_another_that_imports_it_back(karma_report: dict[str, Any]) -> None:
    assert karma_report["modules"] > 50  # the checker found the package
    assert karma_report["cycles"] == []


def test_nothing_below_the_server_imports_it(karma_report: dict[str, Any]) -> None:
    assert karma_report["upward_imports"] == []


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_cycles_through_from_imports_and_type_checking(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "karma/__init__.py": "",
            "karma/a.py": "from karma import b\n",
            "karma/b.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from karma.c import C\n",
            "karma/c.py": "import karma.a\n",
            "karma/d.py": "from karma.d import D\n",
            "karma/e.py": "import karma.a\n",
        },
    )
    assert check("--root", str(tmp_path))["cycles"] == [
        ["karma.a", "karma.b", "karma.c"],
        ["karma.d"],
    ]


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "karma/__init__.py": "",
            "karma/p/__init__.py": "from karma.p.x import *\nfrom karma.p import y\n",
            "karma/p/x.py": "from karma.p import y\nfrom karma.p.y import Y\n",
            "karma/p/y.py": "import msgspec\n",
        },
    )
    assert check("--root", str(tmp_path))["cycles"] == []


def test_checker_finds_the_server_imported_from_below(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "karma/__init__.py": "",
            "karma/cli.py": "from karma.server import app\n",
            "karma/core/__init__.py": "",
            "karma/core/engine.py": "from karma.server.app import serve\n",
            "karma/server/__init__.py": "",
            "karma/server/app.py": "from karma.core import engine\n",
        },
    )
    report = check("--root", str(tmp_path))
    assert report["upward_imports"] == [["karma.core.engine", "karma.server.app"]]
