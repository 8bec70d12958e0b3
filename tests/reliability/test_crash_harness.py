"""The crash-injection harness (``reliability/crash.py``): its failpoints, its checks, and a short campaign.

The full campaign (every crash point of three scenarios, 200+ crashes) is ``make reliability``; here the settlement
scenario runs one crash point end to end against this session's Prefect API, and the planning of the cases is
checked on its own.
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
from reliability.crash import CHECKS, Reference, plan_cases, point_group

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


def test_plan_cases_filters_then_samples_evenly_and_crashes_every_nth_recovery():
    points = [(f"step:s{i}:start", 1) for i in range(6)] + [("journal:after-submit:claim_funds", n) for n in (1, 2)]
    ref = Reference("settlement", points, {}, 0.0)

    every = plan_cases(ref, None, 2)
    assert [(c.point, c.nth) for c in every] == points
    assert [c.crash_recovery for c in every] == [False, True] * 4  # the default: every other case
    assert [(c.point, c.nth) for c in plan_cases(ref, 4, 2)] == [points[0], points[2], points[4], points[6]]
    assert not any(c.crash_recovery for c in plan_cases(ref, None, 0))

    only = plan_cases(ref, 1, 1, only="journal:after-submit")  # the filter first, then the sample
    assert [(c.point, c.nth, c.crash_recovery) for c in only] == [("journal:after-submit:claim_funds", 1, True)]
    assert plan_cases(ref, None, 1, only="faucet") == []


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
    """One case of the settlement scenario end to end: the clean run traced, its crash points planned, the process
    killed with SIGKILL where the chain executed a write whose outcome was not recorded yet
    (``journal:after-submit``, its first pass), the recovery killed again at the same point, then a run to the end;
    every check against the clean run passes and the report says so. One case is enough for the harness itself
    (census, plan, fork, kill, re-run, facts, checks, report); each crash point's own recovery is what
    ``make reliability`` runs (the whole campaign, and after it the signer-lease check, which waits out a real 60 s
    lease: skipped here)."""
    env = {k: v for k, v in os.environ.items() if k not in (FAILPOINTS_ENV, FAILPOINT_TRACE_ENV)}
    proc = subprocess.run(
        [sys.executable, "-m", "reliability.crash", "--scenario", "settlement", "--only", "journal:after-submit",
         "--sample", "1", "--recovery-every", "1", "--jobs", "1", "--no-signer-lease",
         "--api-url", str(prefect.settings.PREFECT_API_URL.value()), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "crash.json").read_text())
    assert results["ok"] and results["cases"] == 1 == results["passed"]
    (case,) = results["case_rows"]
    assert case["point"].startswith("journal:after-submit:") and case["nth"] == 1 and case["crash_recovery"]
    assert case["runs"][0] == -signal.SIGKILL and case["runs"][-1] == 0
    assert results["crashes"] == case["crashes"] == sum(rc == -signal.SIGKILL for rc in case["runs"]) >= 1
    assert results["checks"] == {name: 1 for name in CHECKS}
    assert results["scenarios"][0]["points"] > 1  # the census traced the whole run, the plan picked one point
    assert "## 1. Crash injection" in (tmp_path / "crash.md").read_text()
    assert not (tmp_path / "signer_lease.json").exists()
