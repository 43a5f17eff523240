"""examples/quickstart.sh runs against a started stack, and the README shows exactly its commands."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from .conftest import ROOT

SCRIPT = ROOT / "examples" / "quickstart.sh"


def script_steps() -> list[str]:
    """The script's commands after its preamble, in the blank-line separated steps the README shows."""
    body = SCRIPT.read_text().split("set -euo pipefail\n", 1)[1]
    return [step.strip("\n") for step in body.strip("\n").split("\n\n")]


def readme_steps() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- quickstart:begin -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    return [block.strip("\n") for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def test_the_readme_shows_the_script_verbatim():
    steps = script_steps()
    assert len(steps) >= 8
    assert readme_steps() == steps


async def test_the_quickstart_runs_against_the_started_stack(stack, jose_dir, tmp_path):
    key = await stack.api_key("--role", "service", "--label", "quickstart")
    env = {**os.environ, "AUTH": stack.url(), "KEY": key, "PYTHON": sys.executable, "JOSE_DIR": str(jose_dir)}
    proc = await asyncio.create_subprocess_exec("bash", str(SCRIPT), cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)  # waits up to 30 s for the next TOTP step
    text = out.decode()
    assert proc.returncode == 0, f"{text}\n{err.decode()}"
    account = re.search(r"PyJWT verified: (ada-\d+) \['pwd', 'otp', 'mfa'\]", text)
    assert account, text
    assert f"jose verified: {account.group(1)} [ 'pwd', 'otp', 'mfa' ]" in text
    assert '"decision": "enroll"' in text and '"backup_codes": [' in text
    assert (tmp_path / "qr.png").read_bytes().startswith(b"\x89PNG")
