"""The README demo (tools/demo.py) runs end to end: share on one node, fetch on another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_readme_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node B's copy is byte-identical to the original" in result.stdout
    assert "pong from" in result.stdout
