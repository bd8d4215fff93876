"""Claims on look-ups shared between processes: what one holds, another neither takes nor
pays for, and what a killed process held is free at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enrich_pipeline.in_flight import InFlight

PERSON_A, PERSON_B, COMPANY = (
    ("person", "a@acme.com"),
    ("person", "b@acme.com"),
    ("company", "acme.com"),
)

# Another process that claims the keys it is given, says so, and holds them until stdin closes.
_HOLDER = """
import sys
from enrich_pipeline.in_flight import InFlight

in_flight = InFlight(sys.argv[1], holder="run 1234")
print(sorted(in_flight.claim({("person", "a@acme.com"), ("company", "acme.com")})), flush=True)
sys.stdin.readline()
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "[('company', 'acme.com'), ('person', 'a@acme.com')]"
    return proc


def test_what_another_process_holds_is_not_claimed_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "claims.sqlite3"
    proc = _holder(path)
    try:
        with InFlight(path, holder="run 5678") as mine:
            assert mine.claim({PERSON_A, PERSON_B, COMPANY}) == {PERSON_B}
            assert mine.held({PERSON_A, PERSON_B, COMPANY}) == {
                PERSON_A: "run 1234",
                COMPANY: "run 1234",
                PERSON_B: "run 5678",
            }
            assert mine.wait({PERSON_A}, timeout_s=0.05), "held, so waited for"
    finally:
        proc.communicate("\n", timeout=30)
    # The holder exited without releasing: gone, it holds nothing.
    with InFlight(path) as after:
        assert after.claim({PERSON_A, COMPANY}) == {PERSON_A, COMPANY}


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_killed_holder_holds_nothing(tmp_path: Path, reaped: bool) -> None:
    path = tmp_path / "claims.sqlite3"
    proc = _holder(path)
    os.kill(proc.pid, signal.SIGKILL)
    if reaped:
        proc.wait(timeout=30)
    else:
        # Dead but not yet waited for by its parent: still in the process table.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    try:
        with InFlight(path) as mine:
            assert mine.held({PERSON_A, COMPANY}) == {}
            assert mine.claim({PERSON_A, COMPANY}) == {PERSON_A, COMPANY}
    finally:
        proc.wait(timeout=30)


def test_claims_are_released_once_and_closing_frees_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "claims.sqlite3"
    first = InFlight(path, holder="run 1")
    assert first.claim({PERSON_A, PERSON_B}) == {PERSON_A, PERSON_B}
    first.release({PERSON_A})
    with InFlight(path) as second:
        assert second.claim({PERSON_A, PERSON_B}) == {PERSON_A}
        first.close()
        assert second.claim({PERSON_B}) == {PERSON_B}
