"""Settlement benchmark: the ``settlement_run`` flow against a bare loop of the same chain calls.

    .venv/bin/python bench/settlement_run.py                 # 2,000 served stacks
    .venv/bin/python bench/settlement_run.py --stacks 500    # quick run
    .venv/bin/python bench/settlement_run.py --settle-batch 2000 --no-profile   # one try-settle task for all
    .venv/bin/python bench/settlement_run.py --profile       # also profile the flow's two runs on a third localnet

Two identical localnets (same seed, same N stacks sold to node-1 and served with recorded responses, nothing settled
yet) are built in one temporary folder, so on one disk, in one process:

A. bare loop — for each stack: its history from node-1's store, ``commit(leaves, extra_nodes_count, 0)``,
   ``chain.try_settle_stack``; one epoch advance (not timed); ``chain.claim_funds`` in batches of 100 tickets.
B. the flow — ``settlement_run(idle_after_s=0)`` (the settle run: node-store state, intent journal in the DuckDB
   ledger, Prefect task runs, the table artifact), one epoch advance (not timed), ``settlement_run`` again (the claim
   run).

The phases alternate (bare settle, flow settle, epochs, bare claim, flow claim) so both sides see the same disk.
Prefect's ephemeral API is warmed up by a trivial flow before anything is timed: a long-lived Prefect server is the
production setting, and its start-up (seconds) is not the flow's cost. Both chains must end in the same state (every
stack claimed, equal USDC totals), else the bench exits 1. Goal: flow / bare ≤ 1.5× over both runs (the claim run
alone is ~20 transactions, so its ratio is mostly the flow's fixed cost). It prints the time per phase, tx/s, the
ratios, the Prefect task runs each flow run made (the batching), and where the flow's time went by area; above the
goal (or with ``--profile``) it profiles both flow runs with cProfile on a third localnet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Prefect reads its settings when imported: a private home, quiet logs, no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="atoma-bench-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

ROOT = Path(__file__).resolve().parents[1]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import collections  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from atoma_ops.testing import served as kit  # noqa: E402
from atoma_ops.testing.served import NODE, served_stacks  # noqa: E402

from atoma_ops.home import LocalnetHome  # noqa: E402
from atoma_ops.protocol.commitments import commit  # noqa: E402
from atoma_ops.serving.store import NodeStore  # noqa: E402

GOAL = 1.5
SEED = 7


# ----------------------------------------------------------------------------------------------- bare loop
async def bare_settle(home: Path, stack_ids: list[int], node_small_id: int) -> int:
    """try_settle_stack for every stack, commitment from the node store's history. Returns transactions."""
    chain = LocalnetHome(home).open()
    try:
        node = chain.wallet.resolve(NODE)
        extra = (await chain.db_config()).cross_validation_extra_nodes_count
        with NodeStore(NodeStore.path_for(home, NODE)) as store:
            for sid in stack_ids:
                history = store.history(sid)
                c = commit(history.leaves, extra, 0)
                await chain.try_settle_stack(
                    node, stack_small_id=sid, num_claimed_compute_units=history.units,
                    committed_stack_proof=c.committed_stack_proof, stack_merkle_leaf=c.stack_merkle_leaf,
                    node_small_id=node_small_id,
                )
    finally:
        await chain.close()
    return len(stack_ids)


async def bare_claim(home: Path, stack_ids: list[int], node_small_id: int, batch: int) -> int:
    """claim_funds for every ticket, ``batch`` tickets per transaction. Returns transactions."""
    chain = LocalnetHome(home).open()
    try:
        node = chain.wallet.resolve(NODE)
        txs = 0
        for start in range(0, len(stack_ids), batch):
            await chain.claim_funds(node, settled_ticket_ids=stack_ids[start:start + batch], node_small_id=node_small_id)
            txs += 1
    finally:
        await chain.close()
    return txs


def chain_state(home: Path) -> dict:
    with kit.opened(home) as chain:
        ln = chain.localnet
        return {"stacks": len(ln.list_stacks()), "tickets": len(ln.list_tickets()), "usdc": ln.total_usdc()}


# ----------------------------------------------------------------------------------------------- the flow
def flow_run(home: Path, settlement_run: Any, network_cls: Any, batches: dict) -> tuple[float, list[dict], Any]:
    """One settlement_run over ``home`` (``batches``: batch-size parameters, when not the flow's defaults):
    (seconds, actions, final state)."""

    async def go():
        return await settlement_run(idle_after_s=0, network=network_cls(home=str(home)), return_state=True, **batches)

    t0 = time.perf_counter()
    state = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    return elapsed, state.result(), state


def count_task_runs(flow_state: Any) -> dict[str, int] | None:
    """Task runs of a flow run by task name, as the Prefect API recorded them (reported asynchronously: poll a
    little until the count stops moving)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id

    async def read() -> list:
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    last, stable = -1, 0
    runs: list = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        runs = asyncio.run(read())
        stable = stable + 1 if len(runs) == last and runs else 0
        if stable >= 2:
            break
        last = len(runs)
        time.sleep(0.5)
    if not runs:
        return None
    return dict(collections.Counter(r.name.rsplit("-", 1)[0] for r in runs))


def expected_task_runs(n: int, settle_batch: int) -> dict[str, int]:
    return {"settle run": 1 + math.ceil(n / settle_batch) + 1, "claim run": 1 + 1 + 1}


# ----------------------------------------------------------------------------------------------- areas
_ENGINE, _ADAPTER = "atoma_ops.chain.localnet.engine", "atoma_ops.chain.localnet.adapter"
_LEDGER, _STORE = "atoma_ops.ledger.api", "atoma_ops.serving.store"
_WRITES = "chain writes: Localnet.execute (signature check, contract, COMMIT)"
_CLIENT = "chain client: prepare + sign"
_READS = "chain reads: stack / task / ticket / badges / epoch / config"
_JOURNAL = "intent journal: Ledger.actions + claim_actions + record_actions (DuckDB units of work)"
_STATE = "node store: stacks / state writes"
AREAS = (
    # (area, module, class or None, function): wall time inside these calls; none of them calls another
    (_WRITES, _ENGINE, "Localnet", "execute"),
    *((_CLIENT, _ADAPTER, "LocalnetChain", f) for f in ("prepare", "sign")),
    *((_READS, _ADAPTER, "LocalnetChain", f)
      for f in ("get_stack", "get_task", "get_ticket", "badges", "current_epoch", "db_config")),
    *((_JOURNAL, _LEDGER, "Ledger", f) for f in ("actions", "claim_actions", "record_actions")),
    ("node store: history reads", _STORE, "NodeStore", "history"),
    *((_STATE, _STORE, "NodeStore", f)
      for f in ("stacks", "last_served_ms", "begin_settlements", "finish_settlements", "abort_settlements",
                "note_claimed_many")),
    ("commitments (merkle root)", "atoma_ops.lifecycle", None, "commit"),
    ("Prefect table artifact", "flows.settlement", None, "acreate_table_artifact"),
)


class AreaTimer:
    """Wall time spent inside the functions of :data:`AREAS` while installed (a perf_counter pair per call: a few
    microseconds each, about 0.1 % of a run). What is left of a run is the Prefect engine, the flow's own code,
    opening clients, thread hops and waiting."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, area: str, f: Any) -> Any:
        clock, seconds, calls = time.perf_counter, self.seconds, self.calls
        if asyncio.iscoroutinefunction(f):
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = clock()
                try:
                    return await f(*args, **kwargs)
                finally:
                    seconds[area] += clock() - t0
                    calls[area] += 1
            return timed_async

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return f(*args, **kwargs)
            finally:
                seconds[area] += clock() - t0
                calls[area] += 1
        return timed

    def __enter__(self) -> "AreaTimer":
        import importlib

        for area, module, cls, name in AREAS:
            owner = importlib.import_module(module)
            if cls is not None:
                owner = getattr(owner, cls)
            original = owner.__dict__[name] if cls is not None else getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(area, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


# ----------------------------------------------------------------------------------------------- profile
def profile_flow(folder: Path, n: int, requests: int, settlement_run: Any, network_cls: Any, batches: dict, top: int = 25) -> str:
    """cProfile both flow runs on a third localnet. ``asyncio.to_thread`` runs inline while profiling so that store,
    ledger and chain calls made from worker threads land in the profile too (cProfile sees one thread)."""
    home = folder / "C"
    served = served_stacks(home, n, requests_per_stack=requests, seed=SEED)
    real_to_thread = asyncio.to_thread

    async def inline(func, /, *args, **kwargs):
        return func(*args, **kwargs)

    profiler = cProfile.Profile()
    asyncio.to_thread = inline  # type: ignore[assignment]
    try:
        profiler.enable()
        t_settle, _, _ = flow_run(home, settlement_run, network_cls, batches)
        profiler.disable()
        kit.advance_epoch(home)
        profiler.enable()
        t_claim, _, _ = flow_run(home, settlement_run, network_cls, batches)
        profiler.disable()
    finally:
        asyncio.to_thread = real_to_thread  # type: ignore[assignment]
    assert len(served.stack_small_ids) == n
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = t_settle + t_claim

    def cum(file_part: str, name: str) -> float:
        return sum(v[3] for k, v in raw.items() if file_part in k[0] and k[2] == name)

    chain_exec = cum("engine.py", "execute")
    prepare = cum("adapter.py", "prepare")
    sign = cum("adapter.py", "sign")
    rows = [
        ("lifecycle.try_settle_stacks (all below it)", cum("lifecycle/settle.py", "_try_settle")),
        ("lifecycle.plan_claims", cum("lifecycle/claim.py", "plan_claims")),
        ("lifecycle._claim", cum("lifecycle/claim.py", "_claim")),
        ("  chain: Localnet.execute", chain_exec),
        ("  chain: prepare + sign", prepare + sign),
        ("  journal: Ledger.actions + claim_actions + record_actions (DuckDB)",
         cum("ledger/api.py", "actions") + cum("ledger/api.py", "claim_actions") + cum("ledger/api.py", "record_actions")),
        ("  node store: history", cum("serving/store.py", "history")),
        ("  node store: begin/finish_settlements, note_claimed_many",
         cum("serving/store.py", "begin_settlements") + cum("serving/store.py", "finish_settlements")
         + cum("serving/store.py", "note_claimed_many")),
        ("  chain reads: get_stack/get_task/get_ticket", cum("adapter.py", "get_stack") + cum("adapter.py", "get_task") + cum("adapter.py", "get_ticket")),
        ("  commit (merkle root)", cum("commitments.py", "commit")),
        ("settle_candidates", cum("lifecycle/settle.py", "settle_candidates")),
        ("open_node (NodeService.open: chain, wallet, store) + close",
         cum("serving/node.py", "open") + cum("serving/node.py", "close")),
        ("  Wallet.load", cum("wallet.py", "load")),
        ("flows/settlement._wallet_nodes", cum("flows/settlement.py", "_wallet_nodes")),
        ("acreate_table_artifact", cum("artifacts.py", "acreate_table_artifact")),
    ]
    out = io.StringIO()
    out.write(f"profiled flow runs: settle {t_settle:.2f} s + claim {t_claim:.2f} s = {total:.2f} s "
              "(inflated by profiling; main thread only, to_thread inlined)\n")
    for label, seconds in rows:
        out.write(f"  {seconds:7.2f} s  {100 * seconds / total:5.1f} %  {label}\n")
    out.write("\ntop functions by own time:\n")
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    out.write("top functions by cumulative time:\n")
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=2000, help="served stacks to settle and claim (default 2000)")
    parser.add_argument("--requests", type=int, default=2, help="recorded requests per stack (default 2)")
    parser.add_argument("--settle-batch", type=int, default=None,
                        help="the flow's settle_batch_size: stacks per try-settle task (default: the flow's default)")
    parser.add_argument("--claim-batch", type=int, default=None,
                        help="tickets per claim_funds, both sides (default: the flow's claim_batch_size default)")
    parser.add_argument("--dir", type=Path, default=None, help="folder to run in (default: a new temp folder)")
    parser.add_argument("--profile", action="store_true",
                        help="always profile the flow on a third localnet (done anyway when the goal is missed)")
    parser.add_argument("--no-profile", action="store_true", help="never profile, even when the goal is missed")
    args = parser.parse_args(argv)
    n = args.stacks

    folder = Path(tempfile.mkdtemp(prefix="atoma-bench-settle-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        a = served_stacks(folder / "A", n, requests_per_stack=args.requests, seed=SEED)
        b = served_stacks(folder / "B", n, requests_per_stack=args.requests, seed=SEED)
        build_s = time.perf_counter() - t0
        assert a.stack_small_ids == b.stack_small_ids and a.node_small_id == b.node_small_id

        # Prefect (and its ephemeral API, started by the first flow) is warmed up before anything is timed, and the
        # modules the flow imports lazily are imported (the ledger pulls in pandas and duckdb: ~0.4 s once per
        # process, as the bare loop's imports are paid before its timing starts).
        t0 = time.perf_counter()
        from prefect import flow

        import atoma_ops.ledger.api  # noqa: F401
        import atoma_ops.serving.node  # noqa: F401
        from blocks import AtomaNetwork
        from flows.settlement import settlement_run

        @flow(name="bench-warm-up")
        def warm_up() -> int:
            return 1

        warm_up()
        warm_s = time.perf_counter() - t0

        defaults = inspect.signature(settlement_run.fn).parameters
        settle_batch = args.settle_batch or defaults["settle_batch_size"].default
        claim_batch = args.claim_batch or defaults["claim_batch_size"].default
        batches = {k: v for k, v in (("settle_batch_size", args.settle_batch), ("claim_batch_size", args.claim_batch)) if v}

        # Phases alternate between the two sides so that both meet the same disk.
        ids = a.stack_small_ids
        t0 = time.perf_counter()
        asyncio.run(bare_settle(folder / "A", ids, a.node_small_id))
        bare_settle_s = time.perf_counter() - t0

        with AreaTimer() as settle_areas:
            flow_settle_s, settle_actions, settle_state = flow_run(folder / "B", settlement_run, AtomaNetwork, batches)

        epochs = (kit.advance_epoch(folder / "A"), kit.advance_epoch(folder / "B"))

        t0 = time.perf_counter()
        bare_claim_txs = asyncio.run(bare_claim(folder / "A", ids, a.node_small_id, claim_batch))
        bare_claim_s = time.perf_counter() - t0

        with AreaTimer() as claim_areas:
            flow_claim_s, claim_actions, claim_state = flow_run(folder / "B", settlement_run, AtomaNetwork, batches)

        # ------------------------------------------------------------------ same end state
        sa, sb = chain_state(folder / "A"), chain_state(folder / "B")
        settled = sum(1 for x in settle_actions if x["action"] == "try_settle" and x["status"] in ("success", "already_done"))
        claimed = sum(1 for x in claim_actions if x["action"].startswith("claim") and x["status"] in ("success", "already_done"))
        flow_claim_txs = len({x["digest"] for x in claim_actions if x["action"].startswith("claim") and x["digest"]})
        problems = []
        if sa["stacks"] or sb["stacks"]:
            problems.append(f"stacks left unclaimed: bare {sa['stacks']}, flow {sb['stacks']}")
        if sa["tickets"] or sb["tickets"]:
            problems.append(f"tickets left: bare {sa['tickets']}, flow {sb['tickets']}")
        if sa["usdc"] != sb["usdc"]:
            problems.append("USDC totals differ")
        if settled != n or claimed != n:
            problems.append(f"the flow settled {settled} and claimed {claimed} of {n} stacks")

        tasks_settle = count_task_runs(settle_state)
        tasks_claim = count_task_runs(claim_state)

        # ------------------------------------------------------------------ report
        bare_total, flow_total = bare_settle_s + bare_claim_s, flow_settle_s + flow_claim_s
        settle_ratio, claim_ratio, total_ratio = flow_settle_s / bare_settle_s, flow_claim_s / bare_claim_s, flow_total / bare_total

        def verdict(r: float) -> str:
            return "<= goal" if r <= GOAL else "> goal"

        print(f"folder:            {folder}")
        print(f"sizes:             {n} stacks sold to {NODE} (node {a.node_small_id}), {args.requests} recorded requests "
              f"per stack; flow settle_batch_size {settle_batch} (stacks per try-settle task), claim_batch_size "
              f"{claim_batch} (tickets per claim_funds, both sides)")
        print(f"set-up:            two localnets built in {build_s:.1f} s; warm-up {warm_s:.1f} s: imports and Prefect's "
              "ephemeral API, started by a trivial flow (not timed: a long-lived Prefect server is the production setting)")
        print()
        print(f"{'phase':<10} {'txs':>5} {'bare s':>8} {'bare tx/s':>10} {'flow s':>8} {'flow tx/s':>10} {'flow/bare':>10}")
        print(f"{'settle':<10} {n:>5} {bare_settle_s:>8.2f} {n / bare_settle_s:>10.0f} {flow_settle_s:>8.2f} "
              f"{n / flow_settle_s:>10.0f} {settle_ratio:>9.2f}x  {verdict(settle_ratio)}")
        print(f"{'claim':<10} {bare_claim_txs:>5} {bare_claim_s:>8.2f} {bare_claim_txs / bare_claim_s:>10.0f} "
              f"{flow_claim_s:>8.2f} {flow_claim_txs / flow_claim_s:>10.0f} {claim_ratio:>9.2f}x  {verdict(claim_ratio)}")
        txs = n + bare_claim_txs
        print(f"{'total':<10} {txs:>5} {bare_total:>8.2f} {txs / bare_total:>10.0f} {flow_total:>8.2f} "
              f"{(n + flow_claim_txs) / flow_total:>10.0f} {total_ratio:>9.2f}x  {'OK' if total_ratio <= GOAL else 'ABOVE GOAL'} "
              f"(goal: total <= {GOAL}x)")
        print(f"per stack:         bare {1000 * bare_total / n:.2f} ms, flow {1000 * flow_total / n:.2f} ms "
              f"(+{1000 * (flow_total - bare_total) / n:.2f} ms: node-store state, intent journal, Prefect)")
        print("epoch advance:     not timed (epochs now " + ", ".join(map(str, epochs)) + ")")
        expected = expected_task_runs(n, settle_batch)
        for label, counted in (("settle run", tasks_settle), ("claim run", tasks_claim)):
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counted.items())) if counted else "not reported by the API"
            print(f"task runs, {label}: {sum(counted.values()) if counted else '?'} ({shown}; expected "
                  f"{expected[label]})")
        print()
        print("where the flow's time went (wall seconds inside these calls; the rest: Prefect engine, flow code, "
              "opening clients, thread hops):")
        print(f"  {'settle run':>10} {'claim run':>10}  area (calls)")
        for area in dict.fromkeys(a for a, *_ in AREAS):
            ss, cs = settle_areas.seconds[area], claim_areas.seconds[area]
            print(f"  {ss:>10.2f} {cs:>10.2f}  {area} ({settle_areas.calls[area]} + {claim_areas.calls[area]})")
        rest_s = flow_settle_s - sum(settle_areas.seconds.values())
        rest_c = flow_claim_s - sum(claim_areas.seconds.values())
        print(f"  {rest_s:>10.2f} {rest_c:>10.2f}  the rest")
        print()
        print(f"chain state, bare: {sa['stacks']} stacks, {sa['tickets']} tickets, USDC {sa['usdc']}")
        print(f"chain state, flow: {sb['stacks']} stacks, {sb['tickets']} tickets, USDC {sb['usdc']}")
        if problems:
            print("FAIL: " + "; ".join(problems))
            return 1
        print("same end state:    every stack claimed on both chains, USDC totals equal")
        if args.profile or (total_ratio > GOAL and not args.no_profile):
            print("\n--- cProfile of the flow's two runs (on a third localnet) ---")
            print(profile_flow(folder, n, args.requests, settlement_run, AtomaNetwork, batches))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
