"""The chaos soak, short: about a minute of mixed load while one fault of each kind runs (bench/soak.py).

It runs on a private PostgreSQL cluster, RabbitMQ node and SMTP server of its own (bench/nodes.py),
so the faults never touch the shared PostgreSQL and RabbitMQ the rest of the suite uses, and it
removes them at the end. `make test-fast` skips it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _log_tails(logs: Path, lines: int = 15) -> str:
    """The last lines of every log the soak wrote (its services' and its own), for a run that hung."""
    tails = []
    for log in sorted(logs.rglob("*")) if logs.exists() else []:
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"== {log.relative_to(logs)}\n" + "\n".join(tail))
    return "\n".join(tails) or "(no logs written)"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/lib/postgresql/15/bin/initdb").exists() or not shutil.which("runuser")
                    or not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
                    reason="needs PostgreSQL 15 and RabbitMQ installed on this machine (private nodes)")
async def test_short_soak_loses_nothing_doubles_nothing_and_recovers_from_every_fault(tmp_path: Path):
    report_file = tmp_path / "soak.json"
    output = tmp_path / "soak.out"  # a file, not a pipe: what it printed is still there if it hangs
    with output.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "soak.py"), "--short", "--minutes", "1", "--rate", "8",
            "--json", str(report_file), "--logs", str(tmp_path / "logs"),
            stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            await asyncio.wait_for(proc.wait(), timeout=420)
        except TimeoutError:
            proc.send_signal(signal.SIGINT)  # its finally blocks stop the private nodes it started
            try:
                await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            pytest.fail(f"the soak did not end in 420 s; it printed:\n{output.read_text(errors='replace')[-4000:]}\n"
                        f"its processes' logs end:\n{_log_tails(tmp_path / 'logs')}")
    text = output.read_text(errors="replace")
    assert report_file.exists(), text[-4000:]
    report = json.loads(report_file.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, (failed, json.dumps(report["details"], indent=1, default=str)[:6000], text[-3000:])
    assert proc.returncode == 0, text[-3000:]
    # Every fault ran and was recovered from: HTTP, the audit log and the mails all moved again.
    faults = report["faults"]
    kinds = " ".join(f["fault"] for f in faults)
    for kind in ("SIGKILL", "restarted", "SMTP down", "broker stopped", "PostgreSQL stopped"):
        assert kind in kinds, kinds
    assert all(f["http"] is not None and f["audit"] is not None and f["mail"] is not None for f in faults), faults
    # The load reached every operation and its changes were accepted around the faults.
    assert set(report["ops"]) == {"login_verify", "enrol", "backup_email", "login_link", "recovery_mail",
                                  "recovery_form", "audit_read"}
    assert report["details"]["accepted_changes"] > 100
