"""The benchmark harness runs end to end (a smoke run of zinit alone)."""

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
