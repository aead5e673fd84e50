"""Cross-check (slow): ``benchmarks/crosscheck.py`` must find our PGD, SegPGD and CosPGD within 0.5 mIoU points
of torchattacks and the cospgd package on the same model, inputs and random start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_crosscheck_against_torchattacks_and_cospgd(capsys):
    pytest.importorskip("torchattacks", reason="cross-checks need the bench extra")
    pytest.importorskip("cospgd", reason="cross-checks need the bench extra")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "crosscheck.py")], capture_output=True, text=True, cwd=REPO
    )
    with capsys.disabled():
        print("\n" + result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
