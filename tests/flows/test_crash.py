"""Crash tests of ``settlement_run`` (and, at the end, of ``serve-stack`` killed mid-workload): the flow process is killed (SIGKILL, via ``$ATOMA_OPS_FAILPOINTS``) after
the intent journal is written and before anything is submitted (``journal:after-write``), or after the chain
executed the writes and before their outcome is recorded (``journal:after-submit``); then the run is started again
without the failpoint. Both the try-settle stage and the claim stage are crashed.

Each case checks what the crash left (``pending`` journal rows; nothing on chain, or everything on chain), then
that the re-run converges: every write executed exactly once on chain and no attempt refused by the chain, USDC
conserved, the ledger reconciled against the chain without drift, and every journal row finished with the bytes
journaled before the crash.

The killed run happens in a child process that talks to this session's Prefect API (the harness's) instead of
starting an ephemeral API of its own; each test checks that its killed run is there, still ``RUNNING``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import prefect.settings
import pytest

from atoma_ops.chain.localnet.engine import CHAIN_FILE
from atoma_ops.home import LocalnetHome
from atoma_ops.core.failpoints import FAILPOINTS_ENV
from atoma_ops.journal import PENDING, SUCCESS
from atoma_ops.ledger import Ledger
from atoma_ops.serving.store import NodeStore
from atoma_ops.testing.leases import free_signer_slots, wait_out_leases
from blocks import AtomaNetwork, InferenceEngine
from flows.settlement import settlement_run
from flows.stages import serve_stack
from atoma_ops.testing.served import NODE, served_stacks

ROOT = Path(__file__).resolve().parents[2]
N_STACKS = 3
AFTER_WRITE = "journal:after-write"
AFTER_SUBMIT = "journal:after-submit"

# The child: one settlement run over the localnet home given as argv[1].
CHILD = """
import asyncio, json, sys
from blocks import AtomaNetwork
from flows.settlement import settlement_run
actions = asyncio.run(settlement_run(idle_after_s=0, network=AtomaNetwork(home=sys.argv[1])))
print("ACTIONS " + json.dumps(actions))
"""

# The killed runs' parent: imports once what every child imports (about 10 s of a fresh interpreter, most of each
# child's time), starts no thread, then forks one child per job read from stdin (a script, its argv, the environment
# to add, files for its output) and answers with the child's exit status. Each child is a process of its own,
# killed alone (atoma_ops.testing.forking, as reliability/crash.py forks its runs).
FORKER = """
import json, signal, sys, threading
from pathlib import Path
import blocks, flows, flows.settlement, tasks.runtime
import atoma_ops.testing.stub_engine
from atoma_ops.testing.forking import run_forked
assert threading.active_count() == 1, threading.enumerate()


def child(job):
    def run():
        signal.alarm(300)  # a run that hangs dies (rc -14), and the test says so
        sys.argv = ["-c", *job["argv"]]
        exec(compile(job["script"], "<child>", "exec"), {"__name__": "__main__"})
    return run


print("READY", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    rc = run_forked(child(job), Path(job["stdout"]), job["env"], stderr=Path(job["stderr"]))
    print(rc, flush=True)
"""


class OutcomeNotRecorded(AssertionError):
    """The chain converged but a write's outcome was never recorded (a journal row left ``pending``)."""


# ----------------------------------------------------------------------------------------------- runs
class Forker:
    """``FORKER`` in a subprocess against this session's Prefect API; ``run`` forks a child of it."""

    def __init__(self, work: Path):
        self.work, self.count = work, 0
        env = {k: v for k, v in os.environ.items() if k != FAILPOINTS_ENV}
        env["PREFECT_API_URL"] = self.api_url = str(prefect.settings.PREFECT_API_URL.value())
        self.log = work / "forker.log"
        self.proc = subprocess.Popen([sys.executable, "-c", FORKER], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "w"))
        assert self.proc.stdout.readline().strip() == "READY", self.log.read_text()[-4000:]

    def run(self, script: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.work / f"{self.count}.out", self.work / f"{self.count}.err"
        job = {"script": script, "argv": argv, "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"the forker died: {self.log.read_text()[-4000:]}"
        return subprocess.CompletedProcess(argv, int(answer), out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    forker = Forker(tmp_path_factory.mktemp("forker"))
    try:
        yield forker
    finally:
        forker.close()


def crash(forker: Forker, home: Path, failpoint: str) -> None:
    """``settlement_run`` in a fresh process (forked, see ``FORKER``) with ``failpoint`` armed, against this
    session's Prefect API; it must die by SIGKILL."""
    proc = forker.run(CHILD, [str(home)], {FAILPOINTS_ENV: failpoint})
    assert proc.returncode == -signal.SIGKILL, (
        f"expected death by SIGKILL at {failpoint}, got rc={proc.returncode}\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    assert "ACTIONS " not in proc.stdout
    assert f"failpoint {failpoint}:" in proc.stderr and "killing process" in proc.stderr
    free_signer_slots(forker.api_url)  # the harness's server frees a dead holder's slot only after its lease


def run_in_process(home: Path) -> list[dict]:
    """A settlement run in this process (under the session's harness), without any failpoint."""
    assert FAILPOINTS_ENV not in os.environ
    return asyncio.run(settlement_run(idle_after_s=0, network=AtomaNetwork(home=str(home))))


def flow_run_states(home: Path) -> list[str]:
    """The state types of the ``settlement-run`` flow runs over ``home`` known to this session's Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def go() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["settlement-run"])))
        return sorted(
            r.state_type.value for r in runs if str(home) in json.dumps(r.parameters, default=str)
        )

    return asyncio.run(go())


# ----------------------------------------------------------------------------------------------- chain
def executed(home: Path) -> tuple[Counter, Counter]:
    """Transactions the chain recorded, by entry function: (successes, failures)."""
    ok, failed = Counter(), Counter()
    con = sqlite3.connect(f"file:{home / CHAIN_FILE}?mode=ro", uri=True)
    try:
        for tx_bytes, status in con.execute("SELECT tx_bytes, status FROM transactions ORDER BY seq"):
            for command in json.loads(bytes(tx_bytes)).get("commands", []):  # a faucet mint has none
                if command.get("kind") == "MoveCall":
                    (ok if status == "success" else failed)[command["function"]] += 1
    finally:
        con.close()
    return ok, failed


def with_chain(home: Path, fn):
    async def go():
        chain = LocalnetHome(home).open()
        try:
            return await fn(chain)
        finally:
            await chain.close()

    return asyncio.run(go())


def events_per_stack(home: Path, name: str) -> Counter:
    """How many ``name`` events the chain emitted, by stack small id."""

    async def go(chain) -> Counter:
        out, cursor = Counter(), None
        while True:
            page = await chain.events(cursor, 200)
            out.update(int(e.parsed_json["stack_small_id"]["inner"]) for e in page.events if e.name == name)
            cursor = page.next_cursor
            if not page.has_next_page:
                return out

    return with_chain(home, go)


def landed(home: Path, digests: list[str]) -> list[bool]:
    """Whether the chain executed each digest (a transaction the chain refused fails the test)."""

    async def go(chain) -> list[bool]:
        out = []
        for d in digests:
            tx = await chain.get_transaction(d)
            assert tx is None or tx.ok, f"{d} was refused by the chain: {tx.error}"
            out.append(tx is not None)
        return out

    return with_chain(home, go)


def advance_to_claims(home: Path) -> None:
    """Advance the localnet's epoch to the last ticket's ``dispute_settled_at_epoch``."""

    async def go(chain) -> None:
        tickets = chain.localnet.list_tickets()
        assert len(tickets) == N_STACKS
        now = await chain.current_epoch()
        target = max(t.dispute_settled_at_epoch for t in tickets)
        assert target > now  # else the first run would have claimed already
        await chain.advance_epoch(target - now)
        assert await chain.current_epoch() == target

    with_chain(home, go)


# ----------------------------------------------------------------------------------------------- journal, ledger
def journal(home: Path, kind: str) -> dict[str, dict]:
    return {k: r for k, r in Ledger(home / "ledger.duckdb").actions().items() if r["kind"] == kind}


def assert_pending(rows: dict[str, dict]) -> None:
    """What a crash after the journal write leaves: signed bytes and digest journaled, one attempt, ``pending``."""
    for key, r in rows.items():
        assert r["status"] == PENDING, (key, r["status"])
        assert int(r["attempts"]) == 1, (key, r["attempts"])
        assert r["digest"] and r["signed_tx_bytes"] and r["signature"], key


def assert_chain_converged(home: Path, stacks: list[int], executions: dict[str, int], events: dict[str, int]) -> None:
    """Exactly ``executions`` on chain (by function; none refused), each event ``events[name]`` times per stack,
    USDC conserved, and the ledger (synced first) without drift against the chain."""
    ok, failed = executed(home)
    assert {f: ok[f] for f in executions} == executions
    assert failed == Counter()
    for name, times in events.items():
        assert events_per_stack(home, name) == Counter({s: times for s in stacks}), name

    usdc = with_chain(home, lambda chain: _total_usdc(chain))
    assert usdc["minted"] > 0
    assert usdc["minted"] == usdc["coins"] + usdc["fee_treasury"] + usdc["communal_treasury"] + usdc["collateral"]

    report = with_chain(home, lambda chain: Ledger(home / "ledger.duckdb").reconcile(chain))
    assert report.ok, report.drift.to_string()
    assert report.checked["stacks"] == len(stacks)


async def _total_usdc(chain) -> dict:
    return chain.localnet.total_usdc()


def assert_recorded(home: Path, kind: str, crashed: dict[str, dict], failpoint: str) -> None:
    """Every journal row of ``kind`` finished (``success``, executed on chain). A row the crash left ``pending``
    finished with the bytes journaled before the crash; where those bytes had never reached the chain
    (after-write) they were sent again, one more attempt; where they had (after-submit), they were only looked
    up, no more attempts."""
    rows = journal(home, kind)
    assert set(crashed) <= set(rows)
    statuses = {k: r["status"] for k, r in rows.items()}
    if statuses != {k: SUCCESS for k in rows}:
        raise OutcomeNotRecorded(f"{kind} journal rows not finished after the re-run: {statuses}")
    for key, before in crashed.items():
        after = rows[key]
        assert after["digest"] == before["digest"], key
        assert after["signed_tx_bytes"] == before["signed_tx_bytes"], key
        assert int(after["attempts"]) == (2 if failpoint == AFTER_WRITE else 1), (key, after["attempts"])
    assert landed(home, [r["digest"] for r in rows.values()]) == [True] * len(rows)


# ----------------------------------------------------------------------------------------------- tests
# Each test crashes both stages of one home, one after the other: the try-settle stage at one failpoint, and (after
# its re-run settled every stack and the dispute window passed) the claim stage at the other. The two tests swap the
# failpoints, so each stage is crashed at each failpoint once, and the try-settle re-run is the clean first run the
# claim stage needs.
@pytest.mark.parametrize("settle_failpoint, claim_failpoint", [(AFTER_WRITE, AFTER_SUBMIT), (AFTER_SUBMIT, AFTER_WRITE)])
def test_try_settle_then_claim_crash_then_rerun_settles_and_claims_each_stack_once(
    tmp_path, forker, settle_failpoint, claim_failpoint
):
    home = tmp_path / "localnet"
    stacks = served_stacks(home, N_STACKS).stack_small_ids

    # ---- the try-settle stage killed, then run again
    failpoint = settle_failpoint
    crash(forker, home, failpoint)
    assert flow_run_states(home) == ["RUNNING"]  # the killed run, in this session's API, never finished
    pending = journal(home, "try_settle_stack")
    assert sorted(pending) == sorted(f"try_settle_stack:{s}" for s in stacks)
    assert_pending(pending)
    if failpoint == AFTER_WRITE:
        assert landed(home, [r["digest"] for r in pending.values()]) == [False] * N_STACKS
        assert events_per_stack(home, "StackTrySettleEvent") == Counter()
    else:
        assert landed(home, [r["digest"] for r in pending.values()]) == [True] * N_STACKS
        assert events_per_stack(home, "StackTrySettleEvent") == Counter({s: 1 for s in stacks})

    actions = run_in_process(home)
    assert flow_run_states(home) == ["COMPLETED", "RUNNING"]
    settled = {a["stack_small_id"]: a for a in actions if a["action"] == "try_settle"}
    assert sorted(settled) == sorted(stacks)
    assert {a["status"] for a in settled.values()} == {SUCCESS}
    assert {a["digest"] for a in settled.values()} == {r["digest"] for r in pending.values()}
    # the tickets wait for their dispute window
    assert sorted(a["stack_small_id"] for a in actions if a["action"] == "wait") == sorted(stacks)

    assert_chain_converged(home, stacks, {"try_settle_stack": N_STACKS, "claim_funds": 0}, {"StackTrySettleEvent": 1})
    assert_recorded(home, "try_settle_stack", pending, failpoint)
    with NodeStore(NodeStore.path_for(home, NODE)) as store:
        assert {u.stack_small_id: u.state for u in store.stacks()} == {s: "settled" for s in stacks}

    # ---- the dispute window passes; the claim stage killed, then run again
    advance_to_claims(home)
    failpoint = claim_failpoint
    crash(forker, home, failpoint)
    assert flow_run_states(home) == ["COMPLETED", "RUNNING", "RUNNING"]
    pending = journal(home, "claim_funds")
    assert len(pending) == 1  # one claim_funds transaction for the batch
    assert_pending(pending)
    (row,) = pending.values()
    claims = events_per_stack(home, "StackSettlementTicketClaimedEvent")
    if failpoint == AFTER_WRITE:
        assert landed(home, [row["digest"]]) == [False]
        assert claims == Counter()
    else:
        assert landed(home, [row["digest"]]) == [True]
        assert claims == Counter({s: 1 for s in stacks})

    actions = run_in_process(home)
    assert flow_run_states(home) == ["COMPLETED", "COMPLETED", "RUNNING", "RUNNING"]
    assert not [a for a in actions if a["action"] == "try_settle" or a["status"] == "failed"]
    if failpoint == AFTER_WRITE:
        claimed = {a["stack_small_id"]: a for a in actions if a["action"] == "claim (ticket)"}
        assert sorted(claimed) == sorted(stacks)
        assert {(a["status"], a["digest"]) for a in claimed.values()} == {(SUCCESS, row["digest"])}

    assert_chain_converged(
        home, stacks, {"try_settle_stack": N_STACKS, "claim_funds": 1},
        {"StackTrySettleEvent": 1, "StackSettlementTicketClaimedEvent": 1},
    )
    with_chain(home, _assert_no_stacks_or_tickets_left)
    assert_recorded(home, "claim_funds", pending, failpoint)
    with NodeStore(NodeStore.path_for(home, NODE)) as store:
        assert {u.stack_small_id: (u.settlement or {}).get("claimed_digest") for u in store.stacks()} == {
            s: row["digest"] for s in stacks
        }


async def _assert_no_stacks_or_tickets_left(chain) -> None:
    """claim_funds deletes every claimed stack and its ticket."""
    assert chain.localnet.list_stacks() == []
    assert chain.localnet.list_tickets() == []


# ----------------------------------------------------------------------------------------------- serve-stack
# The child: one serve-stack run (stub engine, concurrency 2, windows of 4) over argv[1], stack argv[2], workload argv[3].
SERVE_CHILD = """
import asyncio, json, sys
from atoma_ops.testing.stub_engine import StubEngine
from blocks import AtomaNetwork, InferenceEngine
from flows import serve_stack
from tasks.runtime import _engines
engine = InferenceEngine(kind="openai", model="stub", base_url="http://stub.invalid", batch_size=2)
_engines[engine.cache_key()] = StubEngine()
summary = asyncio.run(serve_stack(int(sys.argv[2]), "node-1", sys.argv[3], network=AtomaNetwork(home=sys.argv[1]),
                                  engine=engine, window=4))
print("SUMMARY " + json.dumps(summary))
"""


def test_serve_stack_killed_mid_workload_then_rerun_serves_only_the_rest(tmp_path, forker):
    """serve-stack killed after its third recorded request (``serve:after-record@3``); the re-run serves only what
    the history lacks, and the stack is charged exactly what an uninterrupted run charges another stack."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from atoma_ops.lifecycle import workload_id

    home = tmp_path / "localnet"
    clean, crashed = served_stacks(home, 2, requests_per_stack=0, units=10_000).stack_small_ids
    lines = [{"messages": [{"role": "user", "content": f"line {i} " + "word " * i}], "max_tokens": 2 + i % 3} for i in range(10)]
    path = tmp_path / "workload.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))

    engine = InferenceEngine(kind="openai", model="stub", base_url="http://stub.invalid", batch_size=2)

    def serve(stack: int) -> dict:  # in this process, with the child's engine and windows
        from tasks.runtime import _engines
        from atoma_ops.testing.stub_engine import StubEngine

        _engines[engine.cache_key()] = StubEngine()
        try:
            return asyncio.run(serve_stack(stack, NODE, str(path), network=AtomaNetwork(home=str(home)), engine=engine, window=4))
        finally:
            _engines.pop(engine.cache_key(), None)

    reference_summary = serve(clean)
    assert (reference_summary["served_now"], reference_summary["refused"]) == (10, 0)

    killed = forker.run(SERVE_CHILD, [str(home), str(crashed), str(path)], {FAILPOINTS_ENV: "serve:after-record@3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert "SUMMARY " not in killed.stdout and "failpoint serve:after-record" in killed.stderr

    async def states() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["serve-stack"])))
        return sorted(r.state_type.value for r in runs if r.parameters.get("stack_small_id") == crashed
                      and str(home) in json.dumps(r.parameters, default=str))

    assert asyncio.run(states()) == ["RUNNING"]  # the killed run never finished
    with NodeStore(NodeStore.path_for(home, NODE)) as store:
        done = len(store.history(crashed))
    assert 3 <= done < 10

    wait_out_leases(home)  # the killed run's reservations go stale when their leases run out
    summary = serve(crashed)
    assert (summary["served"], summary["served_now"], summary["already_served"], summary["refused"]) == (10, 10 - done, done, 0)
    assert summary["units_used"] == reference_summary["units_used"] > 0
    with NodeStore(NodeStore.path_for(home, NODE)) as store:
        u, history = store.usage(crashed), store.history(crashed)
        assert (u.used_units, u.num_requests, u.reserved_units, u.in_flight) == (reference_summary["units_used"], 10, 0, 0)
        # each line once, answered as in the clean run; the order (and so the root) is the one the node recorded
        # them in, as they ended, which its commitment and the attesters' replay follow
        assert sorted(e.request_id for e in history.entries) == sorted(f"{workload_id(lines)}-{i}" for i in range(10))
        assert sorted(e.leaf for e in history.entries) == sorted(e.leaf for e in store.history(clean).entries)
