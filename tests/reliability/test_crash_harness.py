"""The crash-injection harness (``reliability/crash.py``): its failpoints, its checks, and a short campaign.

The full campaign (every crash point of three scenarios, 200+ crashes) is ``make reliability``; here the settlement
scenario runs a few evenly spread crash points against this session's Prefect API.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import prefect.settings
import pytest

from atoma_ops.core.failpoints import FAILPOINT_TRACE_ENV, FAILPOINTS_ENV
from reliability.crash import CHECKS, point_group

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
from atoma_ops.core.failpoints import failpoint
for name in ("serve:after-reserve", "journal:after-write:claim_funds", "journal:after-writer", "journal:after-write:claim_funds"):
    failpoint(name)
print("survived")
"""


def run_child(tmp_path: Path, armed: str | None) -> tuple[int, str, list[str]]:
    trace = tmp_path / "trace.txt"
    env = {**os.environ, FAILPOINT_TRACE_ENV: str(trace)}
    env.pop(FAILPOINTS_ENV, None)
    if armed is not None:
        env[FAILPOINTS_ENV] = armed
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, trace.read_text().split()


@pytest.mark.parametrize(
    "armed, dies_after",
    [
        (None, None),  # nothing armed: every pass traced, the process lives
        ("journal:after-write", 2),  # a prefix arms the names below it ...
        ("journal:after-write@2", 4),  # ... and @n its n-th pass
        ("journal:after-write@3", None),  # never passed a third time
        ("journal:after-writer@1", 3),  # a whole name
        ("journal:after", None),  # not a prefix at a ':' boundary
        ("serve:after-reserve, journal:after-write@2", 1),  # a list; the first armed pass kills
    ],
)
def test_failpoint_kills_at_the_armed_pass(tmp_path, armed, dies_after):
    rc, out, traced = run_child(tmp_path, armed)
    if dies_after is None:
        assert rc == 0 and "survived" in out
        assert len(traced) == 4
    else:
        assert rc == -signal.SIGKILL and "survived" not in out
        assert len(traced) == dies_after  # traced before it died


@pytest.mark.parametrize(
    "name, group",
    [
        ("journal:after-write:claim_funds", "journal:after-write"),
        ("step:claim-funds:start", "step:start"),
        ("step:mint-usdc:done", "step:done"),
        ("faucet:after-mint", "faucet:after-mint"),
        ("serve:after-record", "serve:after-record"),
    ],
)
def test_point_group(name, group):
    assert point_group(name) == group


CLEAN = {
    "calls": {"claim_funds": 2, "try_settle_stack": 4},
    "refused": {},
    "events": {"StackSettlementTicketClaimedEvent:1": 1, "StackTrySettleEvent:1": 1},
    "tickets_left": 0,
    "unclaimed_stacks": 0,
    "usdc_accounted": True,
    "minted": 8000,
    "balances": {"user": 7000, "node-1": 100},
    "histories": {"node-1:1": {"requests": 2, "units": 30, "leaves": "ab", "state": "settled", "in_flight": 0, "refused": 0}},
    "journal_keys": ["claim_funds:x", "try_settle_stack:1"],
    "journal_pending": [],
    "reconcile_ok": True,
}


@pytest.mark.parametrize(
    "check, spoil",
    [
        ("exactly_once", lambda f: f["calls"].update(claim_funds=3)),  # paid twice
        ("exactly_once", lambda f: f["refused"].update(claim_funds=1)),  # a retry the chain refused
        ("settled_claimed_once", lambda f: f.update(tickets_left=1)),  # a claim that never happened
        ("settled_claimed_once", lambda f: f["events"].update({"StackTrySettleEvent:1": 2})),
        ("usdc_conserved", lambda f: f.update(minted=16000)),  # minted twice
        ("usdc_conserved", lambda f: f.update(usdc_accounted=False)),
        ("usdc_conserved", lambda f: f["balances"].update(user=6000)),
        ("histories", lambda f: f["histories"]["node-1:1"].update(requests=3)),  # served twice
        ("histories", lambda f: f["histories"]["node-1:1"].update(leaves="cd")),  # another answer recorded
        ("histories", lambda f: f["histories"]["node-1:1"].update(in_flight=1)),  # leaked reservation
        ("histories", lambda f: f["histories"]["node-1:1"].update(refused=1)),  # a re-run refused a line it owed
        ("journal", lambda f: f.update(journal_pending=["claim_funds:x"])),
        ("journal", lambda f: f.update(journal_keys=["try_settle_stack:1"])),
        ("reconcile", lambda f: f.update(reconcile_ok=False)),
    ],
)
def test_each_check_fails_on_what_it_guards(check, spoil):
    for name, (_, judge) in CHECKS.items():
        assert judge(copy.deepcopy(CLEAN), CLEAN), name  # the clean facts pass every check
    spoiled = copy.deepcopy(CLEAN)
    spoil(spoiled)
    assert not CHECKS[check][1](spoiled, CLEAN)


@pytest.mark.slow
def test_short_campaign_on_settlement_run_converges(tmp_path):
    """Two crash points of the settlement scenario, spread evenly over its two runs, each crashed (the second's recovery
    crashed again) and re-run; the report says every case converged. (Two, run at once by two jobs: the suite's
    time; ``make reliability`` runs the whole campaign.)"""
    env = {k: v for k, v in os.environ.items() if k not in (FAILPOINTS_ENV, FAILPOINT_TRACE_ENV)}
    proc = subprocess.run(
        [sys.executable, "-m", "reliability.crash", "--scenario", "settlement", "--sample", "2", "--jobs", "2",
         "--api-url", str(prefect.settings.PREFECT_API_URL.value()), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "crash.json").read_text())
    assert results["ok"] and results["cases"] == 2 == results["passed"]
    assert results["crashes"] >= 2
    assert all(c["runs"][0] == -signal.SIGKILL and c["runs"][-1] == 0 for c in results["case_rows"])
    assert results["checks"] == {name: 2 for name in CHECKS}
    assert "## 1. Crash injection" in (tmp_path / "crash.md").read_text()
