"""Part 3 of the reliability harness: load. Concurrent lifecycle flows on one localnet, and a burst of concurrent
chat requests against the node's HTTP server, each followed by the invariant checks that prove nothing was lost,
over-served or paid twice.

``bench/load.py`` runs both at full size (8 flows, 1,000 requests) and writes ``data/reliability/load.{json,md}``;
``tests/reliability/test_load.py`` runs the same checks at smaller sizes. Timings are measured and printed, never
checked: only the invariants decide the verdict.

Money math (atoma-protocol.md §4.9, §4.13, §4.14), at a bid of ``price`` per one million compute units on a stack of
``N`` units of which ``u`` were served:

- the buyer pays ``floor(N × price / 1e6)``, × 1212‰ on a Sampling Consensus task;
- ``claim_funds`` pays the node ``floor(u × price / 1e6)`` (× 1200‰ under Sampling Consensus) and refunds the buyer
  the same formula over ``N − u``; each attester that attested is credited the node's fee (one extra node) in its
  ``available_fee_amount``, paid out by its next ``claim_funds``;
- ``claim_funds_for_stacks`` (ConfidentialCompute) pays ``floor(u × price / 1e6)`` and refunds ``floor((N − u) ×
  price / 1e6)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from atoma_ops.home import DEFAULT_ALIASES, LocalnetHome
from atoma_ops.protocol.commitments import commit, payload_hash, request_leaf, response_hash

PRICE = 1_000_000  # base units per one million compute units: 1 base unit per compute unit
SC_CHARGE, SC_EXTRA = 1200, 12  # the contract's default Sampling Consensus permilles
#: the flows' security levels, in turn: every claim path runs concurrently with the others
FLOW_LEVELS = ("sampling_consensus", "no_security", "confidential_compute")
NODES = ["node-1", "node-2", "node-3"]
TOPICS = ["cats", "rain", "tea", "stars", "maps", "bread", "owls", "salt", "bees", "snow", "ink", "figs"]


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Check:
    """One invariant and whether it held; ``detail`` says what was compared (or what broke)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class LoadResult:
    """One load: its sizes, measured figures (timings: printed, never judged) and invariant checks."""

    load: str
    sizes: dict
    figures: dict
    checks: list[Check] = field(default_factory=list)
    #: what the checks read (not serialised): lets a test re-run them on tampered data
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {"load": self.load, "ok": self.ok, "sizes": self.sizes, "figures": self.figures,
                "checks": [asdict(c) for c in self.checks]}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def entry_function_counts(localnet) -> Counter:
    """Successful transactions by ``atoma::db`` entry function (faucet mints and other commands are skipped)."""
    counts: Counter = Counter()
    for (tx_bytes,) in localnet.conn.execute("SELECT tx_bytes FROM transactions WHERE status = 'success'"):
        try:
            commands = json.loads(bytes(tx_bytes)).get("commands", [])
        except (ValueError, AttributeError):
            continue
        for c in commands:
            if c.get("kind") == "MoveCall":
                counts[c["function"]] += 1
    return counts


def events_by_stack(localnet) -> dict[int, Counter]:
    """How many events of each name name each stack small id."""
    out: dict[int, Counter] = {}
    for name, parsed in localnet.conn.execute("SELECT name, parsed_json FROM events"):
        sid = json.loads(parsed).get("stack_small_id")
        if sid is None:
            continue
        sid = int(sid["inner"]) if isinstance(sid, dict) else int(sid)
        out.setdefault(sid, Counter())[name] += 1
    return out


def conserved(localnet) -> tuple[bool, dict]:
    """Every minted base unit is in a coin, a treasury or collateral."""
    t = localnet.total_usdc()
    return t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"], t


async def ledger_agrees(home: Path, chain) -> tuple[bool, str]:
    """Sync the ledger from the chain and reconcile it: no drift, no USDC mismatch."""
    from atoma_ops.ledger import Ledger

    ledger = Ledger(home / "ledger.duckdb")
    report = await ledger.reconcile(chain, sync_first=True)
    mismatches = ledger.usdc_checks(mismatches_only=True)
    drift = report.to_json()["drift"][:3]
    return report.ok and len(mismatches) == 0, f"{len(report.drift)} drift row(s) {drift}, {len(mismatches)} USDC mismatch(es)"


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (client and server sockets share it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# ----------------------------------------------------------------------------------------------- flows
def buyer_aliases(flows: int) -> list[str]:
    return [f"buyer-{i + 1}" for i in range(flows)]


def write_workload(path: Path, flow: int, requests: int, max_tokens: int) -> Path:
    """A few short chat requests, distinct per flow so that no two stack histories are alike."""
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"Flow {flow}: one word about {TOPICS[(flow + i) % len(TOPICS)]}."}],
                    "max_tokens": max_tokens})
        for i in range(requests)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fee(level: str, units: int) -> int:
    """``calculate_stack_fee_amount`` (ticket path) or the confidential claim amount, at PRICE."""
    base = units * PRICE
    return base * SC_CHARGE // 1_000_000_000 if level == "sampling_consensus" else base // 1_000_000


def _paid(level: str, units: int) -> int:
    total = units * PRICE // 1_000_000
    return total * (SC_CHARGE + SC_EXTRA) // 1000 if level == "sampling_consensus" else total


async def flow_load(
    root: Path,
    *,
    flows: int = 8,
    requests_per_flow: int = 2,
    max_tokens: int = 2,
    num_compute_units: int = 100_000,
    mint_amount: int = 1_000_000,
    seed: int = 11,
    levels: Sequence[str] = FLOW_LEVELS,
    nodes: Sequence[str] = tuple(NODES),
) -> LoadResult:
    """``flows`` ``stack_lifecycle`` runs at once on one localnet (one buyer each, the ``nodes`` shared: every
    flow registers and subscribes them, so the nodes' writes race too), security levels taken in turn from
    ``levels`` (Sampling Consensus, NoSecurity, ConfidentialCompute), stopping before the dispute window; then one
    epoch passes and one ``settlement_run`` per node runs at once. Then the invariants.

    Needs Prefect's API (the test harness, or an ephemeral server) and loads the CPU engine once per process.
    """
    from atoma_ops.ledger import Ledger
    from blocks import AtomaNetwork
    from flows import settlement_run, stack_lifecycle

    home = Path(root) / "localnet"
    buyers = buyer_aliases(flows)
    localnet, _ = LocalnetHome(home).init(seed=seed, aliases=tuple(DEFAULT_ALIASES) + tuple(buyers))
    localnet.close()
    network = AtomaNetwork(home=str(home))
    levels = [levels[i % len(levels)] for i in range(flows)]
    workloads = [write_workload(Path(root) / f"workload-{i}.jsonl", i, requests_per_flow, max_tokens) for i in range(flows)]

    async def one(i: int) -> tuple[float, dict]:
        start = time.perf_counter()
        summary = await stack_lifecycle(
            key=f"load-{i}", workload=str(workloads[i]), security_level=levels[i], buyer=buyers[i],
            nodes=list(nodes), node_prices=[PRICE] * len(nodes),
            num_compute_units=num_compute_units, bid_price=PRICE, mint_amount=mint_amount, wait_and_claim=False,
            network=network,
        )
        return time.perf_counter() - start, summary

    # before the clock starts, as in a warm worker: the engine (15-20 s to load, once per process) and Prefect's API
    # (without a server configured, the first flow of a process starts an ephemeral one; flows that all start at
    # once would race to start it)
    from prefect import flow

    from blocks import InferenceEngine
    from tasks.runtime import shared_engine

    await asyncio.to_thread(shared_engine, InferenceEngine())
    await flow(name="load-warm-up")(_nothing)()

    load_average = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one(i) for i in range(flows)), return_exceptions=True)
    lifecycle_s = time.perf_counter() - t0
    errors = [f"flow {i}: {r!r}" for i, r in enumerate(runs) if isinstance(r, BaseException)]
    done = [(i, r) for i, r in enumerate(runs) if not isinstance(r, BaseException)]
    summaries = {i: s for i, (_, s) in done}

    chain = LocalnetHome(home).open()
    try:
        chain.localnet.advance_epoch(1)  # every ticket's dispute window has passed
        t1 = time.perf_counter()
        settle_runs = await asyncio.gather(
            *(settlement_run(nodes=[n], idle_after_s=0, network=network) for n in nodes), return_exceptions=True
        )
        settle_s = time.perf_counter() - t1
        errors += [f"settlement_run {n}: {r!r}" for n, r in zip(nodes, settle_runs) if isinstance(r, BaseException)]
        # a second round finds nothing left to do
        again = await asyncio.gather(*(settlement_run(nodes=[n], idle_after_s=0, network=network) for n in nodes))

        flow_s = [t for _, (t, _) in done]
        result = LoadResult(
            "concurrent flows",
            sizes={"flows": flows, "buyers": flows, "nodes": len(nodes), "requests_per_flow": requests_per_flow,
                   "max_tokens": max_tokens, "security_levels": dict(Counter(levels)),
                   "settlement_runs": len(nodes)},
            figures={
                "lifecycle_wall_s": round(lifecycle_s, 2),
                "settlement_wall_s": round(settle_s, 2),
                "flows_per_minute": round(len(done) / lifecycle_s * 60, 2) if lifecycle_s else None,
                "flow_p50_s": round(percentile(flow_s, 50), 2),
                "flow_p99_s": round(percentile(flow_s, 99), 2),
                "load_average": load_average,
            },
        )
        result.check("every flow completed", not errors and len(done) == flows, "; ".join(errors[:3]) or f"{flows}/{flows}")
        await _check_flows(result, home, chain, levels, buyers, list(nodes), summaries, requests_per_flow,
                           num_compute_units, mint_amount, again)
        journal = Ledger(home / "ledger.duckdb").actions()
        statuses = Counter(r["status"] for r in journal.values())
        result.check("journal rows all finished", bool(journal) and set(statuses) <= {"success", "already_done"},
                     f"{dict(statuses)}")
        ok, detail = await ledger_agrees(home, chain)
        result.check("ledger synced and reconciled, no drift", ok, detail)
    finally:
        await chain.close()
    return result


async def _check_flows(
    result: LoadResult, home: Path, chain, levels: list[str], buyers: list[str], nodes: list[str], summaries: dict[int, dict],
    requests_per_flow: int, num_compute_units: int, mint_amount: int, again: list,
) -> None:
    from atoma_ops.serving.store import NodeStore

    ln = chain.localnet
    calls = entry_function_counts(ln)
    flows = len(levels)
    result.figures["transactions_by_entry_function"] = dict(sorted(calls.items()))
    result.check("each node registered exactly once", calls["register_node_entry"] == len(nodes)
                 and all(len([b for b in ln.badges(chain.wallet.resolve(n)) if b.kind == "NodeBadge"]) == 1 for n in nodes),
                 f"register_node_entry × {calls['register_node_entry']} for {len(nodes)} nodes")
    result.check("one task and one stack per key", calls["create_task_entry"] == flows and calls["acquire_new_stack_entry"] == flows,
                 f"create_task_entry × {calls['create_task_entry']}, acquire_new_stack_entry × {calls['acquire_new_stack_entry']}")

    stacks = {i: s["stack_small_id"] for i, s in summaries.items()}
    per_stack = events_by_stack(ln)
    served_ok, event_problems, money_problems = [], [], []
    node_income: Counter = Counter()
    for i, sid in stacks.items():
        s, level = summaries[i], levels[i]
        with NodeStore(NodeStore.path_for(home, s["serving_node"])) as store:
            history = store.history(sid)
        used = history.units
        if not (s["served"]["served"] == requests_per_flow == len(history) and s["served"]["refused"] == 0
                and s["served"]["units_used"] == used > 0):
            served_ok.append(f"stack {sid}: {s['served']} vs {len(history)} in history")
        ev = per_stack.get(sid, Counter())
        settle_events = 0 if level == "confidential_compute" else 1
        claim_event = "ClaimedStackEvent" if level == "confidential_compute" else "StackSettlementTicketClaimedEvent"
        if (ev["StackCreatedEvent"], ev["StackTrySettleEvent"], ev[claim_event]) != (1, settle_events, 1):
            event_problems.append(f"stack {sid} ({level}): {dict(ev)}")
        fee, refund = _fee(level, used), _fee(level, num_compute_units - used)
        node_income[s["serving_node"]] += fee
        if level == "sampling_consensus":
            # each requested node that attested is credited the node fee / extra nodes count (1); the lifecycle
            # attests once per distinct requested node, so a node drawn twice is credited twice
            attested = all(a["status"] in ("success", "already_done") and not a["disputed"] for a in s["attestations"])
            for node_id in (s["settled"] or {}).get("requested_attestation_nodes", []) if attested else []:
                node_income[_alias_of(chain, nodes, node_id)] += fee
        expected = mint_amount - _paid(level, num_compute_units) + refund
        actual = ln.usdc_balance(chain.wallet.resolve(buyers[i]))
        if actual != expected:
            money_problems.append(f"{buyers[i]} holds {actual}, expected {expected}")
    result.check("every stack served fully (history = workload, nothing refused)", not served_ok and len(stacks) == flows,
                 "; ".join(served_ok[:3]) or f"{len(stacks)} stacks × {requests_per_flow} requests")
    result.check("every stack bought, settled and claimed exactly once (events per stack)", not event_problems,
                 "; ".join(event_problems[:3]) or "StackCreated 1, StackTrySettle 1 (0 confidential), claimed 1 each")
    claimed = sum(1 for sid in stacks.values() if ln.get_stack(sid) is None or ln.get_stack(sid).is_claimed)
    result.check("no stack or ticket left on chain unclaimed", claimed == len(stacks) and ln.list_tickets() == [],
                 f"{claimed}/{len(stacks)} claimed, {len(ln.list_tickets())} ticket(s) left")
    redone = sum(len([a for a in run if a["action"] != "wait"]) for run in again)
    result.check("a second settlement round does nothing", redone == 0, f"{len(again)} runs, {redone} action(s)")
    for node in nodes:
        addr = chain.wallet.resolve(node)
        held = ln.usdc_balance(addr) + sum(
            (ln.get_node(b.small_id).available_fee_amount if ln.get_node(b.small_id) else 0)
            for b in ln.badges(addr) if b.kind == "NodeBadge"
        )
        if held != node_income[node]:
            money_problems.append(f"{node} holds {held} (coins + credits), expected {node_income[node]}")
    result.check("each buyer's and node's USDC as the fee/refund math says", not money_problems,
                 "; ".join(money_problems[:3]) or f"{flows} buyers, {len(nodes)} nodes")
    ok, totals = conserved(ln)
    result.check("total USDC conserved", ok, f"{totals}")


async def _nothing() -> None:
    return None


def _alias_of(chain, nodes: Sequence[str], node_small_id: int) -> str:
    for n in nodes:
        if any(b.kind == "NodeBadge" and b.small_id == node_small_id for b in chain.localnet.badges(chain.wallet.resolve(n))):
            return n
    return f"node#{node_small_id}"


# ----------------------------------------------------------------------------------------------- HTTP
def chat_request(i: int, max_tokens: int) -> dict:
    """Request ``i``: short, distinct (its payload hash tells it apart from every other one)."""
    return {"messages": [{"role": "user", "content": f"#{i}: a word about {TOPICS[i % len(TOPICS)]}."}], "max_tokens": max_tokens}


async def http_load(
    root: Path,
    *,
    requests: int = 1000,
    stacks: int = 4,
    max_tokens: int = 2,
    served_fraction: float = 0.3,
    max_pending: int | None = None,
    seed: int = 13,
    engine: Any = None,
) -> LoadResult:
    """``requests`` chat requests sent at once (httpx.AsyncClient, every one in flight together) to node-1's HTTP
    server over ``stacks`` NoSecurity stacks whose units cover about ``served_fraction`` of them, so the rest must
    be refused. Then try-settle every stack, let the window pass, claim, and check the invariants.

    Every request is admitted (or refused) as it arrives and runs on the engine on its own: no batches.
    ``max_pending`` is the node's bound on requests in progress (default: ``requests``, so every one is admitted or
    refused on its units); below ``requests`` the excess must be answered 429 with ``Retry-After``, charging nothing.
    """
    import httpx

    from atoma_ops import lifecycle
    from atoma_ops.ledger import Ledger
    from atoma_ops.serving.metering import estimate
    from atoma_ops.serving.node import NodeService
    from atoma_ops.client import RequestSigner
    from atoma_ops.protocol.node_http import SIGNATURE_HEADER, STACK_HEADER
    from atoma_ops.serving.server import BackgroundServer, create_app

    if engine is None:
        from blocks import InferenceEngine
        from tasks.runtime import shared_engine

        engine = await asyncio.to_thread(shared_engine, InferenceEngine())
    raise_fd_limit(2 * requests + 256)  # a client and a server socket per request, in this one process
    home = Path(root) / "localnet"
    localnet, _ = LocalnetHome(home).init(seed=seed)
    localnet.close()
    bodies = [chat_request(i, max_tokens) for i in range(requests)]
    per_stack = [sum(1 for i in range(requests) if i % stacks == k) for k in range(stacks)]
    mean_reserve = sum(estimate(b, engine).reserved for b in bodies[: min(requests, 64)]) / min(requests, 64)
    units = [max(1, int(n * served_fraction * mean_reserve)) for n in per_stack]

    chain = LocalnetHome(home).open()
    service = None
    try:
        user, node = chain.wallet.resolve("user"), chain.wallet.resolve("node-1")
        await chain.faucet_mint(user, sum(units))
        tx = await chain.create_task_entry("admin", role=0, model_name=engine.model, security_level=0)
        task = lifecycle.small_id_in(tx, "TaskRegisteredEvent", "task_small_id")
        await chain.register_node_entry(node)
        await chain.subscribe_node_to_task(node, task_small_id=task, price_per_one_million_compute_units=PRICE)
        stack_ids = []
        for n in units:
            tx = await chain.acquire_new_stack_entry(user, task_small_id=task, num_compute_units=n, price=PRICE)
            stack_ids.append(lifecycle.small_id_in(tx, "StackCreatedEvent", "stack_small_id"))

        buyer = RequestSigner(chain.wallet, "user")  # the stacks' owner signs every request, before the burst
        signed = [buyer.sign(b)[:2] for b in bodies]
        service = await NodeService.open(home, "node-1", engine)  # its own chain connection, as a node server has
        service.max_pending = pending_limit = max_pending or requests
        server = BackgroundServer(create_app(service)).start()
        outcomes: list[dict] = [{} for _ in range(requests)]
        try:
            limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(None), limits=limits) as client:

                async def send(i: int) -> None:
                    sid = stack_ids[i % stacks]
                    start = time.perf_counter()
                    try:
                        raw, signature = signed[i]
                        r = await client.post("/v1/chat/completions", content=raw, headers={
                            STACK_HEADER: str(sid), SIGNATURE_HEADER: signature, "content-type": "application/json"})
                        outcomes[i] = {"stack": sid, "status": r.status_code, "headers": dict(r.headers), "body": r.json()}
                    except Exception as exc:  # noqa: BLE001 - counted: a connection error fails the load
                        outcomes[i] = {"stack": sid, "status": None, "error": repr(exc)}
                    outcomes[i]["latency_s"] = time.perf_counter() - start

                load_average = round(os.getloadavg()[0], 2)
                t0 = time.perf_counter()
                await asyncio.gather(*(send(i) for i in range(requests)))
                wall = time.perf_counter() - t0
                metrics = (await client.get("/metrics")).text
        finally:
            server.stop()

        result = LoadResult(
            "concurrent HTTP",
            sizes={"requests": requests, "stacks": stacks, "max_tokens": max_tokens, "max_pending": pending_limit,
                   "units_per_stack": units, "served_fraction_target": served_fraction},
            figures={},
        )
        result.raw = {"home": home, "bodies": bodies, "outcomes": outcomes, "stack_ids": stack_ids, "units": units}
        result.figures.update(http_figures(outcomes, wall), load_average=load_average)
        check_http_outcomes(result, service.store, bodies, outcomes, stack_ids, units)
        if pending_limit >= requests:
            result.check("nothing answered 429 while the node took every request", result.figures["overloaded"] == 0,
                         f"{result.figures['overloaded']} overloaded with max_pending {pending_limit} ≥ {requests}")
        counted = request_counts(metrics)
        got = {"served": result.figures["served"], "refused": result.figures["refused"],
               "overloaded": result.figures["overloaded"]}
        result.check("GET /metrics counts every request by how it ended, as the clients saw it",
                     {k: counted.get(k, 0) for k in got} == got and sum(counted.values()) == requests,
                     f"metrics {dict(counted)} vs clients {got}")

        # the chain's view: try-settle every stack, pass the window, claim; tickets and money must agree
        journal = Ledger(home / "ledger.duckdb")
        settled = await lifecycle.try_settle_stacks(service, journal, stack_ids)
        problems = []
        for sid, s in zip(stack_ids, settled):
            usage, ticket = service.store.usage(sid), await chain.get_ticket(sid)
            leaves = [request_leaf(payload_hash(bodies[i]), response_hash(o["body"]))
                      for i, o in sorted(((i, o) for i, o in enumerate(outcomes) if o["stack"] == sid and o["status"] == 200),
                                         key=lambda p: int(p[1]["headers"]["x-history-index"]))]
            proof = commit(leaves, (await chain.db_config()).cross_validation_extra_nodes_count, 0).committed_stack_proof
            if s.status != "success" or ticket is None or ticket.num_claimed_compute_units != usage.used_units \
                    or ticket.committed_stack_proof != proof:
                problems.append(f"stack {sid}: {s.status}, ticket {ticket and ticket.num_claimed_compute_units} vs "
                                f"used {usage.used_units}, proof matches the clients' responses: "
                                f"{bool(ticket and ticket.committed_stack_proof == proof)}")
        result.check("try-settle: each ticket claims the store's usage and commits to the responses clients got",
                     not problems, "; ".join(problems[:3]) or f"{len(stack_ids)} tickets")
        await chain.advance_epoch(1)
        await lifecycle.claim_tickets(service, journal, stack_ids)
        used = sum(service.store.usage(s).used_units for s in stack_ids)
        balances = (await chain.usdc_balance(user), await chain.usdc_balance(node))
        result.check("claim: node paid the units served, buyer refunded the rest",
                     balances == (sum(units) - used, used), f"user {balances[0]}, node {balances[1]}, used {used}")
        ok, totals = conserved(chain.localnet)
        result.check("total USDC conserved", ok, f"{totals}")
        ok, detail = await ledger_agrees(home, chain)
        result.check("ledger synced and reconciled, no drift", ok, detail)
    finally:
        if service is not None:
            await service.close()
        await chain.close()
    return result


def http_figures(outcomes: list[dict], wall: float) -> dict:
    """Throughput and latency of one burst (measured; never judged)."""
    ok = [o for o in outcomes if o.get("status") == 200]
    refused = [o for o in outcomes if o.get("status") == 425]
    latencies = [o["latency_s"] for o in outcomes]
    return dict(
        wall_s=round(wall, 2),
        requests_per_s=round(len(outcomes) / wall, 1),
        served=len(ok),
        refused=len(refused),
        overloaded=sum(1 for o in outcomes if o.get("status") == 429),
        served_per_s=round(len(ok) / wall, 2),
        p50_ms=round(percentile(latencies, 50) * 1000, 1),
        p99_ms=round(percentile(latencies, 99) * 1000, 1),
        p50_served_ms=round(percentile([o["latency_s"] for o in ok], 50) * 1000, 1),
        p50_refused_ms=round(percentile([o["latency_s"] for o in refused], 50) * 1000, 1),
    )


def request_counts(metrics_text: str) -> Counter:
    """``atoma_chat_completions_num_requests_total`` of a ``GET /metrics`` body, summed by ``outcome``."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: Counter = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "atoma_chat_completions_num_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels.get("outcome", "?")] += int(sample.value)
    return counts


def check_http_outcomes(result: LoadResult, store, bodies: list[dict], outcomes: list[dict], stack_ids: list[int],
                        units: list[int]) -> None:
    """The burst's invariants, from what the clients got (``outcomes``) against the node's store (``store``).
    Answers are 200 (served), 425 (the stack's units are taken) or 429 (past the node's ``max_pending``)."""
    ok = [i for i, o in enumerate(outcomes) if o.get("status") == 200]
    refused = [i for i, o in enumerate(outcomes) if o.get("status") == 425]
    overloaded = [i for i, o in enumerate(outcomes) if o.get("status") == 429]
    other = [i for i, o in enumerate(outcomes) if o.get("status") not in (200, 425, 429)]
    errors = Counter(str(outcomes[i].get("status") or outcomes[i].get("error", "?"))[:80] for i in other)
    result.check("counts add up: 200s + 425s + 429s = requests, no 5xx, no connection error",
                 len(ok) + len(refused) + len(overloaded) == len(outcomes) and not other and ok and (refused or overloaded),
                 f"{len(ok)} served + {len(refused)} refused + {len(overloaded)} overloaded of {len(outcomes)}; "
                 f"other: {dict(errors)}")
    wrong = [i for i in refused if outcomes[i]["body"].get("error", {}).get("type") != "insufficient_compute_units"]
    result.check("every refusal is 425 insufficient_compute_units", not wrong,
                 f"{len(wrong)} other refusal(s)" + (f", e.g. {outcomes[wrong[0]]['body']}" if wrong else ""))
    busy = [i for i in overloaded if outcomes[i]["body"].get("error", {}).get("type") != "overloaded"
            or not outcomes[i]["headers"].get("retry-after")]
    result.check("every 429 is overloaded with a Retry-After", not busy,
                 f"{len(busy)} without, e.g. {outcomes[busy[0]]}" if busy else f"{len(overloaded)} overloaded")
    from atoma_ops.client import ResponseSignatureError, verify_response

    node_address = (store.node() or {}).get("address")
    unsigned = []
    for i in ok:
        try:
            verify_response(outcomes[i]["body"], node_address)
        except ResponseSignatureError as exc:
            unsigned.append(f"request {i}: {exc}")
    result.check("every 200 is signed by the stack's node (response_hash, signature)", not unsigned and node_address,
                 "; ".join(unsigned[:3]) or f"{len(ok)} signatures of {node_address}")

    lost, over, charged_lost, leaked = [], [], [], []
    for sid, n in zip(stack_ids, units):
        usage, history = store.usage(sid), store.history(sid)
        mine = [i for i in ok if outcomes[i]["stack"] == sid]
        charged = sum(int(outcomes[i]["headers"]["x-compute-units"]) for i in mine)
        if not (usage.used_units == charged == history.units and usage.num_requests == len(mine) == len(history)):
            lost.append(f"stack {sid}: store {usage.used_units} units / {usage.num_requests} requests, responses "
                        f"{charged} / {len(mine)}, history {history.units} / {len(history)}")
        if usage.used_units > n or usage.reserved_units or usage.in_flight:
            over.append(f"stack {sid}: used {usage.used_units} of {n}, reserved {usage.reserved_units}")
        by_index = {e.index: e for e in history.entries}
        for i in mine:
            e = by_index.get(int(outcomes[i]["headers"]["x-history-index"]))
            if e is None or e.payload_hash != payload_hash(bodies[i]) or e.response_hash != response_hash(outcomes[i]["body"]) \
                    or e.units != int(outcomes[i]["headers"]["x-compute-units"]):
                charged_lost.append(f"request {i} (stack {sid})")
        recorded = {e.payload_hash for e in history.entries}
        leaked += [f"request {i}" for i in refused + overloaded
                   if outcomes[i]["stack"] == sid and payload_hash(bodies[i]) in recorded]
    result.check("no lost update: store usage = sum of the 200s' charges = history", not lost, "; ".join(lost[:3]) or
                 f"{len(stack_ids)} stacks")
    result.check("no stack over-served; every reservation released", not over, "; ".join(over[:3]) or
                 f"used ≤ units on {len(stack_ids)} stacks, 0 reserved")
    result.check("every 200 is in the durable history with matching hashes and units", not charged_lost,
                 f"{len(charged_lost)} missing/mismatched: {charged_lost[:3]}" if charged_lost else f"{len(ok)} responses")
    result.check("no refused request recorded or charged", not leaked,
                 f"{leaked[:3]}" if leaked else f"{len(refused) + len(overloaded)} refusals")


# ----------------------------------------------------------------------------------------------- report
def markdown(results: Sequence[LoadResult]) -> str:
    """The report section ``## 3. Load``: the loads with sizes and figures, then every invariant."""
    lines = [
        "## 3. Load",
        "",
        "`bench/load.py` (checks in `reliability/load.py`; a smaller slice runs in `tests/reliability/test_load.py`). "
        "Concurrent flows: `stack_lifecycle` runs at once on one localnet under one Prefect API (one buyer each; "
        "the nodes shared, so every flow registers and subscribes them concurrently; security levels in turn "
        "Sampling Consensus / NoSecurity / ConfidentialCompute, so every claim path runs), then one epoch, then one "
        "`settlement_run` per node at once. Concurrent HTTP: every request in flight together against node-1's "
        "OpenAI-compatible server (real CPU engine, real store) over NoSecurity stacks sized to cover only part of "
        "them; then try-settle, claim. Timings are measured on this machine and never judged"
        + (f" (1-minute load average when each load started: "
           f"{', '.join(str(r.figures.get('load_average')) for r in results)} on {os.cpu_count()} CPUs)." if results else "."),
        "",
        "Found by this load and fixed: with several flows in one process, the ledger's units of work met DuckDB's "
        "per-process database instance (a read-only open while another thread held the file read-write failed with "
        "\"different configuration\"; a registered DataFrame scan failed with \"pandas_scan does not exist\" while "
        "another thread re-created the instance). `atoma_ops/ledger/store.py` now serialises units of work on one "
        "file within a process and retries the configuration clash like a lock. Found while building it: lifecycles "
        "that register the same node at the same moment each minted a NodeBadge (4 concurrent callers, 4 badges; a "
        "node with several badges cannot serve); `atoma_ops.lifecycle.register_node` now lets callers of one process "
        "take turns (`tests/reliability/test_load.py`).",
        "",
        "| load | sizes | throughput | p50 | p99 | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        f, s = r.figures, r.sizes
        if r.load == "concurrent flows":
            sizes = (f"{s['flows']} flows ({', '.join(f'{v} {k}' for k, v in s['security_levels'].items())}), "
                     f"{s['nodes']} shared nodes, {s['requests_per_flow']} requests × max_tokens {s['max_tokens']} each, "
                     f"then {s['settlement_runs']} settlement runs")
            tput = (f"{f['flows_per_minute']} flows/min ({s['flows']} in {f['lifecycle_wall_s']} s; settlement runs "
                    f"{f['settlement_wall_s']} s)")
            p50, p99 = f"{f['flow_p50_s']} s per flow", f"{f['flow_p99_s']} s per flow"
        else:
            sizes = (f"{s['requests']} requests at once, {s['stacks']} stacks of {', '.join(map(str, s['units_per_stack']))} "
                     f"units, max_tokens {s['max_tokens']}, at most {s['max_pending']} requests in progress")
            tput = (f"{f['requests_per_s']} requests/s ({f['served']} served, {f['refused']} refused in {f['wall_s']} s; "
                    f"{f['served_per_s']} inferences/s)")
            p50, p99 = f"{f['p50_ms']} ms per request", f"{f['p99_ms']} ms per request"
        lines.append(f"| {r.load} | {sizes} | {tput} | {p50} | {p99} | {'pass' if r.ok else '**FAIL**'} |")
    lines += ["", "| load | invariant | result | detail |", "|---|---|---|---|"]
    for r in results:
        for c in r.checks:
            detail = c.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.load} | {c.name} | {'pass' if c.ok else '**FAIL**'} | {detail[:300]} |")
    return "\n".join(lines) + "\n"


def write_results(results: Sequence[LoadResult], out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/load.json`` and ``<out_dir>/load.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"part": "load", "ok": bool(results) and all(r.ok for r in results), "loads": [r.to_json() for r in results]}
    (out_dir / "load.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out_dir / "load.md").write_text(markdown(results))
    return out_dir / "load.json", out_dir / "load.md"
