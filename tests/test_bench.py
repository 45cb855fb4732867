"""The benchmark harnesses run end to end (smoke runs)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_quick_run_prints_a_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "zinit"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "measurement" in result.stdout
    assert "cold start N=5" in result.stdout
    assert "goals (zinit):" in result.stdout


@pytest.mark.timeout(150)
def test_quick_xinet_run_prints_a_table() -> None:
    """Direct and through zinit at least (socat and proxyd are skipped with a note if missing)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "xinet.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert rows["direct"].endswith("passed on"), result.stdout
    assert rows["zinit"].endswith("passed on"), result.stdout
    assert "added by zinit, median of the pairs" in result.stdout
