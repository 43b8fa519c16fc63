"""benchmarks/mutations.py finds every check it mutates: a check that moved to another module
(as the run-vote refusals did, to node/agreement.py) makes `--list` fail here, not silently in a
later mutation run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "mutations.py"


def test_mutations_list_finds_every_check() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any("_vote_run: if refusals" in line for line in lines)
    assert any(line.startswith("transcript.py") for line in lines)  # issue 15's sum checks
