"""The files that deploy karma-trio agree with the program: the systemd unit."""

from __future__ import annotations

from pathlib import Path

from karma.tools import unit as unit_file


# --- systemd -------------------------------------------------------------------------------
def test_the_unit_is_hardened_and_binds_loopback_unless_configured() -> None:
    lines = unit_file.read(unit_file.UNIT).splitlines()
    for line in ("RestartPreventExitStatus=2", "SystemCallFilter=@system-service", "UMask=0027"):
        assert line in lines
    # a default for KARMA_HOST that the environment file, read after it, may override
    default = lines.index("Environment=KARMA_HOST=127.0.0.1")
    assert default < lines.index("EnvironmentFile=-/etc/default/karma-trio")


def test_the_unit_exists_once_in_the_repository() -> None:
    root = Path(__file__).resolve().parents[2]
    skipped = {".venv", ".git", "build", "dist"}  # environments and build output
    copies = [p for p in root.rglob("karma-trio.service") if not skipped & set(p.parts)]
    assert [p.relative_to(root) for p in copies] == [Path("karma/ops_data/karma-trio.service")]
