"""
WebSocket conformance, measured: the Autobahn|Testsuite (``wstest -m
fuzzingclient``, cases 1.* to 7.* and 10.*) against chatd's own protocol
class, frame reader and factory options in an echo harness
(tests/autobahn_echo.py), with the fast path on and off.  Every case must be
OK, NON-STRICT or INFORMATIONAL, in both its behaviour and its closing
behaviour.

The suite is Python 2.7 only.  ``CHATD_WSTEST`` names its ``wstest`` (or it
is found on PATH); without it the test skips, and fails instead under
``CHATD_REQUIRE_AUTOBAHN_TESTSUITE=1`` (set by CI after installing it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatd import fastpath

ROOT = Path(__file__).resolve().parent.parent
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def wstest() -> str:
    found = os.environ.get("CHATD_WSTEST") or shutil.which("wstest")
    if not found or not Path(found).exists():
        reason = ("the Autobahn|Testsuite is not installed (Python 2.7: "
                  "python2.7 -m pip install --user autobahntestsuite; set CHATD_WSTEST)")
        if os.environ.get("CHATD_REQUIRE_AUTOBAHN_TESTSUITE") == "1":
            pytest.fail(f"CHATD_REQUIRE_AUTOBAHN_TESTSUITE=1 but {reason}")
        pytest.skip(reason)
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("switch", ["1", "0"], ids=["fast-path", "public-path"])
def test_every_case_of_the_autobahn_testsuite_passes(switch: str, tmp_path: Path) -> None:
    tool = wstest()
    env = dict(os.environ, **{fastpath.SWITCH: switch}, PYTHONUNBUFFERED="1")
    echo = subprocess.Popen(
        [sys.executable, "-m", "tests.autobahn_echo"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        spec = {
            "outdir": str(tmp_path / "report"),
            "servers": [{"agent": "chatd", "url": f"ws://127.0.0.1:{port}"}],
            "cases": CASES,
            "exclude-cases": ["9.*", "12.*", "13.*"],
            "exclude-agent-cases": {},
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        # wstest lives in a user base of Python 2.7's: BASE/bin/wstest.
        base = str(Path(tool).resolve().parent.parent)
        run = subprocess.run(
            [tool, "-m", "fuzzingclient", "-s", "spec.json"], cwd=tmp_path,
            env=dict(os.environ, PYTHONUSERBASE=base), capture_output=True, text=True, timeout=540,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    finally:
        echo.terminate()
        _, errors = echo.communicate(timeout=30)
    results = json.loads((tmp_path / "report" / "index.json").read_text())["chatd"]
    assert len(results) > 240  # every case of those sections ran
    failing = {
        case: (result["behavior"], result["behaviorClose"])
        for case, result in results.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING
    }
    assert failing == {}
    assert "Traceback" not in errors, errors[-3000:]
