"""The serving node on the real localnet, the real CPU engine and the real SQLite store: metering, refusals, the
history (export/import, tampering), crash safety and two processes serving one stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from atoma_ops.protocol.commitments import canonical_request, payload_hash, request_leaf, response_hash
from atoma_ops.protocol.compute_units import chat_estimate
from atoma_ops.serving.engines.base import EngineError
from atoma_ops.serving.history import HistoryError, export_jsonl, import_jsonl
from atoma_ops.serving.metering import (
    BadRequest,
    EngineFailure,
    InsufficientUnits,
    StackClaimed,
    StackNotFound,
    StackNotServedHere,
    StackSettling,
)
from atoma_ops.serving.node import NodeService, StoreFailure
from atoma_ops.serving.store import NodeStore
from atoma_ops.testing.leases import wait_out_leases
from atoma_ops.testing.serve_all import serve_all

from tests.serving.buyer_kit import buyer  # noqa: E402
from tests.serving.test_kit import CONFIDENTIAL, NO_SECURITY, PRICE, REPO, STUB_ENGINE_SRC, ask, market, net, open_node, stub_engine, try_settle  # noqa: E402,F401


def snapshot(node: NodeService, stack: int):
    u = node.store.usage(stack)
    return (u.to_json() if u else None), [e.leaf for e in node.history(stack).entries]


def refused(node: NodeService, net, stack: int, error: type, request: dict | None = None):
    """Serve one request that must be refused with ``error``; nothing charged, history unchanged."""
    before = snapshot(node, stack)
    (outcome,) = net.run(serve_all(node, stack, [request or ask(0, 4)]))
    assert isinstance(outcome.error, error), outcome.error
    assert outcome.response is None and outcome.units == 0
    assert snapshot(node, stack) == before
    body = outcome.error.to_json()
    assert body["type"] and body["message"]
    return outcome.error


# ====================================================================== metering on a real stack
def test_serving_meters_settles_and_records(engine, net, localnet_home):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)  # node 1
    node = open_node(net, localnet_home, "node-1", engine)
    requests = [
        ask(0, 6),
        {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Best fruit?"}],
         "max_completion_tokens": 5, "max_tokens": 100, "model": engine.model},
        ask(2, 4),
    ]
    outcomes = net.run(serve_all(node, s, requests))
    used = 0
    for i, (request, o) in enumerate(zip(requests, outcomes)):
        assert o.ok, o.error
        usage = o.response["usage"]
        actual = usage["prompt_tokens"] + usage["completion_tokens"]
        budget = request.get("max_completion_tokens") or request["max_tokens"]
        assert o.estimate.atoma == chat_estimate(request, engine.count_tokens)
        assert o.estimate.reserved == max(o.estimate.atoma, engine.prompt_tokens(request) + budget)
        assert usage["completion_tokens"] <= budget
        assert o.units == actual <= o.estimate.reserved
        assert o.history_index == i
        used += actual
    u = node.store.usage(s)
    assert (u.used_units, u.reserved_units, u.units_left, u.num_requests) == (used, 0, 10_000 - used, 3)
    history = node.history(s)
    assert history.units == used and history.task_small_id == t and history.node_small_id == 1
    raw = node.store.conn.execute("SELECT request FROM history WHERE stack_small_id = ? ORDER BY idx", (s,)).fetchall()
    for entry, request, o, (request_bytes,) in zip(history.entries, requests, outcomes, raw):
        assert bytes(request_bytes) == canonical_request(request)
        assert entry.response == o.response  # the full response as returned, ids and timestamps included
        assert entry.payload_hash == payload_hash(request) and entry.response_hash == response_hash(o.response)
        assert entry.leaf == request_leaf(entry.payload_hash, entry.response_hash)
    net.run(node.close())


def test_a_bad_request_in_a_batch_does_not_sink_the_others(engine, net, localnet_home):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", engine)
    outcomes = net.run(serve_all(node, s, [ask(0, 3), {"messages": []}, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, ask(1, 3)]))
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert all(isinstance(o.error, BadRequest) for o in outcomes[1:3])
    assert [o.history_index for o in outcomes] == [0, None, None, 1]
    assert node.store.usage(s).used_units == outcomes[0].units + outcomes[3].units


def test_engine_failures_release_their_reservations(net, localnet_home):
    """One request the engine cannot run fails alone, its reservation released; the others are served."""

    class Flaky(type(stub_engine())):
        async def stream(self, request, sampling):
            if request["messages"][0]["content"] == "boom":
                raise EngineError("cannot run boom")
            async for delta in super().stream(request, sampling):
                yield delta

    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", Flaky())
    boom = {"messages": [{"role": "user", "content": "boom"}], "max_tokens": 3}
    outcomes = net.run(serve_all(node, s, [ask(0, 3), boom, ask(1, 3)]))
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, EngineFailure) and "nothing charged" in str(outcomes[1].error)
    u = node.store.usage(s)
    assert (u.reserved_units, u.in_flight, u.num_requests) == (0, 0, 2)


def test_history_write_failure_returns_no_response_and_charges_nothing(engine, net, localnet_home):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", engine)
    net.run(serve_all(node, s, [ask(0, 2)]))
    before = snapshot(node, s)
    node.store.conn.execute("CREATE TRIGGER full BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    (o,) = net.run(serve_all(node, s, [ask(1, 2)]))
    assert isinstance(o.error, StoreFailure) and o.response is None
    assert snapshot(node, s) == before  # not charged, not recorded, reservation released
    node.store.conn.execute("DROP TRIGGER full")


def test_usage_never_passes_the_stack_even_when_the_engine_under_reports(net, localnet_home):
    """An engine that cannot count its templated prompt gets the margin; if its usage still overshoots, the charge
    stops at the stack's units."""
    t = market(net, NO_SECURITY)
    s = net.buy(t, 1_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine(under_report=True))
    (o,) = net.run(serve_all(node, s, [ask(0, 5)]))
    assert o.ok and o.estimate.method == "margin"
    assert o.response["usage"]["prompt_tokens"] > 10_000
    assert o.units == 1_000
    u = node.store.usage(s)
    assert (u.used_units, u.units_left) == (1_000, 0) and u.overrun_units > 0
    refused(node, net, s, InsufficientUnits)


# ====================================================================== refusals
def test_refusals_charge_nothing_and_leave_history_unchanged(engine, net, localnet_home):
    t = market(net, NO_SECURITY)
    small = net.buy(t, 60, PRICE, draw=0)  # node 1, 60 units
    foreign = net.buy(t, 10_000, PRICE, draw=1)  # node 2
    settling = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", engine)

    # exhausted: one request fits, the next cannot be covered
    (first,) = net.run(serve_all(node, small, [ask(0, 4)]))
    assert first.ok
    left = 60 - first.units
    second = ask(1, 4)
    est = max(chat_estimate(second, engine.count_tokens), engine.prompt_tokens(second) + 4)
    err = refused(node, net, small, InsufficientUnits, second)
    assert err.fields == {"stack_small_id": small, "units_left": left, "estimate": est}
    assert f"stack {small}" in str(err) and f"{left} compute units left" in str(err) and f"estimate is {est}" in str(err)
    assert err.status == 425  # the Atoma node's Too Early: buy a new stack or wait for requests in flight

    err = refused(node, net, foreign, StackNotServedHere)
    assert "sold to node 2" in str(err) and "this is node 1" in str(err) and err.status == 400

    err = refused(node, net, 999, StackNotFound)
    assert err.status == 400

    # in settlement: a ticket opened on chain (here by the node's own CLI call, outside this service)
    net.run(serve_all(node, settling, [ask(2, 2)]))
    net.settle("node-1", settling, 1)
    err = refused(node, net, settling, StackSettling)
    assert err.status == 423  # Locked: please buy a new stack

    # settled by this service: closed in the store first
    s = net.buy(t, 10_000, PRICE, draw=0)
    net.run(serve_all(node, s, [ask(3, 2)]))
    result = try_settle(net, node, localnet_home, s)
    assert result.status == "success" and result.claimed_units == node.store.usage(s).used_units
    refused(node, net, s, StackSettling)
    again = try_settle(net, node, localnet_home, s)  # idempotent
    assert again.status == "already_done" and again.committed_stack_proof == result.committed_stack_proof

    # claimed (ticket path): the stack is deleted from the chain
    net.epoch()
    net.claim("node-1", s)
    assert net.get_stack(s) is None
    err = refused(node, net, s, StackClaimed)
    assert err.status == 423


def test_claimed_confidential_stack_is_refused(engine, net, localnet_home):
    t = market(net, CONFIDENTIAL)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", engine)
    (o,) = net.run(serve_all(node, s, [ask(0, 2)]))
    net.claim_cc("node-1", [s], [o.units])
    assert net.get_stack(s).is_claimed
    refused(node, net, s, StackClaimed)


# ====================================================================== history files
def test_export_import_round_trip_and_tamper_detection(engine, net, localnet_home, tmp_path):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", engine)
    net.run(serve_all(node, s, [ask(i, 3) for i in range(3)]))
    history = node.history(s)
    path = export_jsonl(history, tmp_path / "h.jsonl")
    back = import_jsonl(path, expect_stack=s)
    assert back.root == history.root and back.units == history.units
    assert [e.to_json() for e in back.entries] == [e.to_json() for e in history.entries]
    with pytest.raises(HistoryError, match=f"not stack {s + 1}"):
        import_jsonl(path, expect_stack=s + 1)

    lines = path.read_text().splitlines()

    def tampered(edit) -> str:
        docs = [json.loads(line) for line in lines]
        edit(docs)
        p = tmp_path / "bad.jsonl"
        p.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
        return str(p)

    def content(docs):
        docs[2]["response"]["choices"][0]["message"]["content"] = "forged"

    def request(docs):
        docs[3]["request"]["max_tokens"] = 4

    def swap(docs):
        docs[1], docs[2] = docs[2], docs[1]

    def units(docs):
        docs[1]["units"] += 1

    def drop(docs):
        docs.pop()

    for edit, message in [
        (content, "request 1: response hash"),
        (request, "request 2: payload hash"),
        (swap, "record 0 has index 1"),
        (units, "units"),
        (drop, "says 3 requests"),
    ]:
        with pytest.raises(HistoryError, match=message):
            import_jsonl(tampered(edit))
    # ids and timestamps are not part of the response hash: changing them is no tampering
    def cosmetic(docs):
        docs[1]["response"]["id"] = "chatcmpl-other"

    assert import_jsonl(tampered(cosmetic)).root == history.root


# ====================================================================== crash safety (subprocesses, stub engine)
CRASH_SCRIPT = STUB_ENGINE_SRC + '''
import asyncio, json, os, signal, sys, time
from atoma_ops.serving.node import NodeService

home, stack, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
REQUEST = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}

class Hanging(StubEngine):
    async def stream(self, request, sampling):
        print("running", flush=True)
        time.sleep(120)
        yield

async def main():
    node = await NodeService.open(home, "node-1", Hanging() if mode == "hang" else StubEngine())
    outcome = await node.serve_one(stack, REQUEST)
    print(json.dumps(outcome.response), flush=True)  # the response is out ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before doing anything else

asyncio.run(main())
'''


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kwargs)


def test_a_returned_response_survives_sigkill_and_a_killed_request_costs_nothing(net, localnet_home):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 1_000, PRICE, draw=0)

    proc = _python(CRASH_SCRIPT, str(localnet_home.path), str(s), "serve")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err
    returned = json.loads(out.strip().splitlines()[-1])

    # killed while the engine runs: the reservation is held by a dead process
    proc = _python(CRASH_SCRIPT, str(localnet_home.path), str(s), "hang")
    assert proc.stdout.readline().strip() == "running"
    with NodeStore(NodeStore.path_for(localnet_home.path, "node-1")) as store:
        assert store.usage(s).in_flight == 1
    proc.kill()
    proc.communicate(timeout=30)

    wait_out_leases(localnet_home.path)
    node = open_node(net, localnet_home, "node-1", stub_engine())  # open() releases the dead reservation
    history = node.history(s)
    assert len(history) == 1 and history.entries[0].response == returned
    u = node.store.usage(s)
    charged = returned["usage"]["prompt_tokens"] + returned["usage"]["completion_tokens"]
    assert (u.used_units, u.reserved_units, u.in_flight, u.num_requests) == (charged, 0, 0, 1)


TWO_PROCESS_SCRIPT = STUB_ENGINE_SRC + '''
import asyncio, json, os, sys, time
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.metering import InsufficientUnits
from atoma_ops.testing.serve_all import serve_all

home, stack, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
REQUEST = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}

async def main():
    node = await NodeService.open(home, "node-1", StubEngine(delay=0.001))
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    served = units = 0
    while True:
        outcomes = await serve_all(node, stack, [REQUEST, REQUEST])
        for o in outcomes:
            if o.ok:
                served += 1
                units += o.units
            else:
                assert isinstance(o.error, InsufficientUnits), o.error
        if not any(o.ok for o in outcomes):
            u = node.store.usage(stack)
            if u.in_flight == 0 and u.units_left < 22:
                break
            time.sleep(0.001)
    print(json.dumps({"served": served, "units": units}), flush=True)

asyncio.run(main())
'''


def test_two_processes_never_over_serve_one_stack(net, localnet_home, tmp_path):
    """Stub request: reserves max(11, 17 + 5) = 22, costs 17 + 3 = 20; 1000 units hold 49 of them (20 left < 22)."""
    t = market(net, NO_SECURITY)
    s = net.buy(t, 1_000, PRICE, draw=0)
    go = tmp_path / "go"
    procs = [_python(TWO_PROCESS_SCRIPT, str(localnet_home.path), str(s), str(go)) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    with NodeStore(NodeStore.path_for(localnet_home.path, "node-1")) as store:
        u = store.usage(s)
        history = store.history(s)
    assert sum(r["served"] for r in results) == 49 == u.num_requests == len(history)
    assert all(r["served"] > 0 for r in results), results  # both really served
    assert u.used_units == sum(r["units"] for r in results) == history.units == 980 <= 1_000
    assert (u.reserved_units, u.in_flight) == (0, 0)
    assert [e.index for e in history.entries] == list(range(49))


# ====================================================================== workloads (lifecycle.serve_workload)
WORKLOAD_SCRIPT = STUB_ENGINE_SRC + '''
import asyncio, json, sys
from atoma_ops import lifecycle
from atoma_ops.serving.node import NodeService

home, stack, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

async def main():
    node = await NodeService.open(home, "node-1", StubEngine())
    signer = await lifecycle.buyer_signer(node.chain, stack)
    report, _ = await lifecycle.serve_workload(node, signer, stack, json.load(open(path)), concurrency=2)
    print(json.dumps(report.to_json()), flush=True)

asyncio.run(main())
'''


def test_a_workload_killed_mid_way_resumes_where_it_stopped_and_charges_what_a_clean_run_does(net, localnet_home, tmp_path, monkeypatch):
    """``stack serve`` / ``serve-stack`` re-run after a SIGKILL (``serve:after-record@3``): only the rest is served,
    the history holds every line once with the clean run's answers, and it charges exactly what an uninterrupted
    run charges."""
    from atoma_ops import lifecycle
    from atoma_ops.core.failpoints import FAILPOINTS_ENV

    t = market(net, NO_SECURITY)
    clean, crashed = net.buy(t, 10_000, PRICE, draw=0), net.buy(t, 10_000, PRICE, draw=0)
    workload = [ask(i, 2 + i % 3) for i in range(10)]
    key = lifecycle.workload_id(workload)
    node = open_node(net, localnet_home, "node-1", stub_engine())
    user = buyer(net)
    reference, _ = net.run(lifecycle.serve_workload(node, user, clean, workload, concurrency=3))
    assert (reference.served, reference.already_served, reference.refused, reference.failed) == (10, 0, [], [])
    net.run(node.close())

    path = tmp_path / "workload.json"
    path.write_text(json.dumps(workload))
    with monkeypatch.context() as m:  # armed in the child only
        m.setenv(FAILPOINTS_ENV, "serve:after-record@3")
        proc = _python(WORKLOAD_SCRIPT, str(localnet_home.path), str(crashed), str(path))
    assert FAILPOINTS_ENV not in os.environ
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9 and "failpoint serve:after-record" in err, err
    with NodeStore(NodeStore.path_for(localnet_home.path, "node-1")) as store:
        recorded = {e.request_id for e in store.history(crashed).entries}  # (whether it also held reservations of
    done = len(recorded)  # requests in progress depends on timing; open() below releases any, the totals must match)
    assert 3 <= done < 10

    wait_out_leases(localnet_home.path)
    node = open_node(net, localnet_home, "node-1", stub_engine())  # open() releases the dead process's reservations
    resumed, outcomes = net.run(lifecycle.serve_workload(node, user, crashed, workload, concurrency=3))
    assert (resumed.served, resumed.already_served, resumed.refused, resumed.failed) == (10 - done, done, [], [])
    assert [o.index for o in outcomes] == [i for i in range(10) if f"{key}-{i}" not in recorded]
    u = node.store.usage(crashed)
    assert (u.used_units, u.num_requests, u.reserved_units, u.in_flight) == (reference.units_used, 10, 0, 0)
    assert resumed.units_used == reference.units_used and resumed.units_charged < reference.units_charged
    history, expected = node.history(crashed), node.history(clean)
    assert sorted(e.request_id for e in history.entries) == sorted(f"{key}-{i}" for i in range(10))
    assert sorted(e.leaf for e in history.entries) == sorted(e.leaf for e in expected.entries)  # the same answers
    assert [e.index for e in history.entries] == list(range(10))  # in the order the node recorded them

    again, outcomes = net.run(lifecycle.serve_workload(node, user, crashed, workload, concurrency=3))
    assert (again.served, again.already_served, again.units_charged, outcomes) == (0, 10, 0, [])
    assert node.store.usage(crashed).used_units == reference.units_used
    net.run(node.close())


def test_a_workload_with_refused_requests_reruns_without_failing_or_charging_again(net, localnet_home):
    from atoma_ops import lifecycle

    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine())
    workload = [ask(0, 3), ask(1, 3, model="gpt-4o"), ask(2, 3), ask(3, 1_000_000), ask(4, 3)]
    user = buyer(net)
    first, outcomes = net.run(lifecycle.serve_workload(node, user, s, workload, concurrency=4))
    assert (first.served, first.already_served, first.already_refused, first.failed) == (3, 0, 0, [])
    assert [(r["index"], r["type"]) for r in first.refused] == [(1, "invalid_request_error"), (3, "insufficient_compute_units")]
    assert [o.index for o in outcomes] == [0, 1, 2, 3, 4]
    assert [o.history_index is None for o in outcomes] == [False, True, False, True, False]
    assert sorted(o.history_index for o in outcomes if o.ok) == [0, 1, 2]
    used = node.store.usage(s).used_units
    assert used == first.units_used == first.units_charged == sum(o.units for o in outcomes) > 0
    refusal = node.store.find_request(s, f"{first.workload_id}-1")
    assert refusal["type"] == "invalid_request_error" and "gpt-4o" in refusal["message"]

    again, outcomes = net.run(lifecycle.serve_workload(node, user, s, workload, concurrency=4))
    assert (again.served, again.refused, again.already_served, again.already_refused, outcomes) == (0, [], 3, 2, [])
    assert (again.units_used, again.units_charged) == (used, 0)
    # a window of it (one flow task's worth) counts only its own lines
    window = net.run(lifecycle.serve_batch(node, user, s, workload, 1, 3))
    assert (window.requests, window.already_served, window.already_refused, window.served) == (2, 1, 1, 0)
    # a changed workload is another workload: served afresh
    changed = workload[:1] + [ask(5, 3)]
    assert lifecycle.workload_id(changed) != first.workload_id
    other, _ = net.run(lifecycle.serve_workload(node, user, s, changed))
    assert (other.served, other.already_served) == (2, 0) and node.store.usage(s).num_requests == 5
    net.run(node.close())


def test_workload_ids_ignore_key_order_and_the_stream_flag_but_not_content():
    from atoma_ops import lifecycle

    w = [ask(0, 3), ask(1, 3)]
    reordered = [dict(reversed(list(r.items()))) for r in w]
    assert lifecycle.workload_id(w) == lifecycle.workload_id(reordered) == lifecycle.workload_id([{**r, "stream": True} for r in w])
    assert lifecycle.workload_id(w).startswith("wl-")
    assert len({lifecycle.workload_id(x) for x in (w, w[:1], w[::-1], [ask(0, 4), ask(1, 3)])}) == 4


def test_a_workload_runs_concurrently_and_serves_failed_requests_again(net, localnet_home):
    """The engine holds its first requests until ``width`` of them run at once (a serial server would never get
    there and the test would fail). A request the engine fails is not recorded or charged, and the re-run serves
    it."""
    import asyncio

    from atoma_ops import lifecycle

    class Gated(type(stub_engine())):
        def __init__(self, width: int):
            super().__init__()
            self.width, self.active, self.peak, self.booms = width, 0, 0, 0
            self.full: asyncio.Event | None = None

        async def stream(self, request, sampling):
            self.full = self.full or asyncio.Event()
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.width:
                self.full.set()
            try:
                await asyncio.wait_for(self.full.wait(), 30)
                if request["messages"][0]["content"] == "boom" and not self.booms:
                    self.booms += 1
                    raise EngineError("cannot run boom this time")
                async for delta in super().stream(request, sampling):
                    yield delta
            finally:
                self.active -= 1

    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    engine = Gated(4)
    node = open_node(net, localnet_home, "node-1", engine)
    boom = {"messages": [{"role": "user", "content": "boom"}], "max_tokens": 3}
    workload = [ask(0, 3), ask(1, 3), boom, ask(2, 3), ask(3, 3), ask(4, 3)]
    seen = []
    user = buyer(net)
    first, _ = net.run(lifecycle.serve_workload(node, user, s, workload, concurrency=4,
                                                on_outcome=lambda o: seen.append(o.index)))
    assert engine.peak == 4 and sorted(seen) == list(range(6))
    assert (first.served, first.refused, [f["index"] for f in first.failed]) == (5, [], [2])
    assert first.failed[0]["type"] == "engine_error"
    assert node.store.find_request(s, f"{first.workload_id}-2") is None  # not recorded: served again next time
    history = node.history(s)
    assert sorted(e.request_id for e in history.entries) == [f"{first.workload_id}-{i}" for i in (0, 1, 3, 4, 5)]
    u = node.store.usage(s)
    assert (u.num_requests, u.reserved_units, u.used_units) == (5, 0, first.units_charged)

    again, (o,) = net.run(lifecycle.serve_workload(node, user, s, workload, concurrency=4))
    assert (again.served, again.already_served, again.failed, o.index, o.history_index) == (1, 5, [], 2, 5)
    assert node.store.usage(s).used_units == first.units_charged + again.units_charged
    net.run(node.close())


def test_a_client_gone_while_its_answer_is_recorded_leaves_it_served(net, localnet_home):
    """``abort()`` (the client went away) stops only the engine: an answer already being recorded is recorded,
    charged and reported as served, never as a write failure the store charged anyway."""
    import asyncio

    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine())

    async def body():
        gate, reached = asyncio.Event(), asyncio.Event()
        submit = node.settler.submit

        async def held(settlement):
            reached.set()
            await gate.wait()
            return await submit(settlement)

        node.settler.submit = held
        run = node.start(await node.admit(s, ask(0, 3)))
        await asyncio.wait_for(reached.wait(), 10)
        run.abort()  # the client goes away while its answer is being recorded
        gate.set()
        return await run.result()

    outcome = net.run(body())
    assert outcome.error is None and outcome.response["usage"]["completion_tokens"] == 3
    assert node.store.usage(s).used_units == outcome.units > 0 and len(node.history(s)) == 1
    served = node.metrics.requests.labels(node.engine.model, "served")._value.get()
    assert served == 1 and node.metrics.units_charged.labels(node.engine.model)._value.get() == outcome.units
