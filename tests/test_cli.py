"""The ``viocluster`` console script itself: help, version and the exit status of misuse."""

from __future__ import annotations

import subprocess
import sys

from broker import __version__


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, check=False
    )


def test_version_is_the_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"viocluster {__version__}"


def test_unknown_command_is_a_usage_error_without_traceback() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_is_installed() -> None:
    exe = subprocess.run(
        [sys.executable, "-c", "import shutil, sys, os; print(shutil.which('viocluster', path=os.path.dirname(sys.executable)))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert exe != "None", "the viocluster console script is missing from the virtualenv"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "COMMAND" in result.stdout
