"""`bench/scale.py --quick` runs every section end to end and prints each ratio with its verdict.

The figures themselves are not judged here (a test holds no timed assertion): the benchmark
checks that SQL-loaded accounts verify over HTTP and that the COPY-loaded audit chain verifies,
and this test only requires that it got through all of it and printed its verdicts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 25 s on an idle 2-core machine, several service processes
def test_quick_run_prints_every_section_and_verdict():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    out = run.stdout
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: a ratio missed its target on this machine now
    for heading in ("== 1. verify by enrolled accounts", "== 2. the audit log by rows", "== 3. outbox drain", "== ratios"):
        assert heading in out, out
    assert "(0 failed)" in out and "failed)" not in out.replace("(0 failed)", ""), out
    verdicts = re.findall(r"^  (.+): [0-9.]+ \((?:target|constant).*\) (PASS|FAIL)$", out, re.MULTILINE)
    names = [name for name, _ in verdicts]
    assert len(verdicts) == 6, out
    assert any(n.startswith("verify/s") for n in names)
    assert sum(n.startswith("audit") for n in names) == 4
    assert any(n.startswith("backlog drain") for n in names)
    assert (run.returncode == 1) == any(v == "FAIL" for _, v in verdicts)
