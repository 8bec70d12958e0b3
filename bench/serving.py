"""Metered serving throughput against the bare engine, on the same batch, in one run.

    .venv/bin/python bench/serving.py                      # CPU engine, 12 sample requests, 3 rounds
    .venv/bin/python bench/serving.py --requests 22 --max-tokens 24 --rounds 3 --http
    .venv/bin/python bench/serving.py --engine openai --openai-base-url http://127.0.0.1:8001/v1

Each round runs every request of the batch (the first N requests of data/workloads/sample.jsonl, output budgets
capped at --max-tokens) twice, back to back, in alternating order — so that load from other processes hits both
sides alike (on a shared 2-core box it swings throughput 2-5x within a minute):

1. **bare**: ``engine.chat([request])``;
2. **metered**: ``NodeService.serve(stack, [request])`` on a fresh localnet — validation, the §9 estimate and the
   templated-prompt bound, the chain checks (stack, ticket), one ``BEGIN IMMEDIATE`` reservation transaction, the
   engine, one settle + history-append transaction (``synchronous=FULL``). A batch of one is the worst case for
   metering: a larger batch shares the chain reads and the two store transactions.
3. with ``--http``: the bare engine on the whole batch, then the same batch through the node's HTTP server on
   loopback, all requests sent at once by concurrent clients (gathered into engine batches).

A warm-up pass of the bare engine runs first (not counted). It prints completion tokens/s for each (medians over
the rounds), the ratio metered/bare (the median of the per-round ratios of total times, goal >= 0.9), the metering
overhead outside the engine in ms per request, and checks that every metered response equals the bare one
(deterministic fields). Exit status 1 when the ratio is below the goal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atoma_ops.home import LocalnetHome  # noqa: E402
from atoma_ops.protocol.commitments import deterministic_response  # noqa: E402
from atoma_ops.serving.engines.base import Engine  # noqa: E402
from atoma_ops.serving.node import NodeService, load_engine  # noqa: E402
from atoma_ops.serving.workload import SAMPLE, load_workload  # noqa: E402

GOAL = 0.9


class Timed(Engine):
    """Counts the time spent inside the wrapped engine's ``chat``."""

    def __init__(self, inner: Engine):
        self.inner, self.kind, self.model = inner, inner.kind, inner.model
        self.seconds = 0.0

    def chat(self, requests):
        t0 = time.perf_counter()
        try:
            return self.inner.chat(requests)
        finally:
            self.seconds += time.perf_counter() - t0

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def prompt_tokens(self, request):
        return self.inner.prompt_tokens(request)


def completion_tokens(responses) -> int:
    return sum(r["usage"]["completion_tokens"] for r in responses)


async def setup(home_dir: Path, units: int):
    home = LocalnetHome(home_dir)
    localnet, _ = home.init(seed=1)
    localnet.close()
    chain = home.open()
    await chain.faucet_mint(chain.wallet.resolve("user"), 1_000_000_000)
    tx = await chain.create_task_entry("admin", role=0, model_name="bench", security_level=0)
    task = int(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
    await chain.register_node_entry("node-1")
    await chain.subscribe_node_to_task("node-1", task_small_id=task, price_per_one_million_compute_units=1_000_000)
    return home, chain, task


async def buy(chain, task: int, units: int) -> int:
    tx = await chain.acquire_new_stack_entry("user", task_small_id=task, num_compute_units=units, price=1_000_000)
    return int(tx.event("StackCreatedEvent").parsed_json["stack_small_id"]["inner"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=16, help="cap on each request's output budget")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="cpu")
    ap.add_argument("--openai-base-url")
    ap.add_argument("--model")
    ap.add_argument("--http", action="store_true", help="also measure through the HTTP server")
    args = ap.parse_args()

    batch = []
    for r in load_workload(SAMPLE)[: args.requests]:
        r = dict(r)
        for key in ("max_completion_tokens", "max_tokens"):
            if r.get(key) is not None:
                r[key] = min(r[key], args.max_tokens)
        if r.get("max_completion_tokens") is None:
            r["max_tokens"] = min(r.get("max_tokens") or args.max_tokens, args.max_tokens)
        batch.append(r)

    t0 = time.perf_counter()
    engine = Timed(load_engine(args.engine, model=args.model, base_url=args.openai_base_url))
    load_s = time.perf_counter() - t0
    loop = asyncio.new_event_loop()
    tmp = tempfile.TemporaryDirectory(prefix="bench-serving-")
    home, chain, task = loop.run_until_complete(setup(Path(tmp.name) / "home", 1_000_000))
    service = loop.run_until_complete(NodeService.open(home.path, "node-1", engine, chain=chain))
    server = None
    if args.http:
        from atoma_ops.serving.server import BackgroundServer, create_app

        # its own service (and chain connection) in the server thread, same store
        http_service = loop.run_until_complete(NodeService.open(home.path, "node-1", engine))
        server = BackgroundServer(create_app(http_service, max_batch=len(batch))).start()

    print(f"engine {engine.kind} ({engine.model}) loaded in {load_s:.1f} s; batch of {len(batch)} requests, "
          f"output budgets <= {args.max_tokens}; {args.rounds} round(s)")
    t = time.perf_counter()
    reference = [deterministic_response(r) for r in engine.inner.chat(batch)]  # warm-up pass, not timed
    print(f"  warm-up  {time.perf_counter() - t:6.2f} s (not counted)")
    rates: dict[str, list[float]] = {"bare": [], "metered": [], "http": []}
    ratios: list[float] = []
    http_ratios: list[float] = []
    overhead_ms: list[float] = []
    mismatches = 0
    for rnd in range(args.rounds):
        # paired: each request runs bare and metered back to back (order alternating), so load drift from other
        # processes hits both sides alike; metered = the whole pipeline for a batch of one (the worst case: a larger
        # batch shares the chain reads and the two store transactions)
        stack = loop.run_until_complete(buy(chain, task, 1_000_000))
        secs = {"bare": 0.0, "metered": 0.0}
        engine.seconds = 0.0
        tokens = 0
        for i, request in enumerate(batch):
            for mode in (("bare", "metered") if (i + rnd) % 2 == 0 else ("metered", "bare")):
                t = time.perf_counter()
                if mode == "bare":
                    (response,) = engine.inner.chat([request])
                else:
                    (outcome,) = loop.run_until_complete(service.serve(stack, [request]))
                    if not outcome.ok:
                        raise SystemExit(f"metered serving refused a request: {outcome.error}")
                    response = outcome.response
                secs[mode] += time.perf_counter() - t
                mismatches += deterministic_response(response) != reference[i]
            tokens += response["usage"]["completion_tokens"]
        overhead_ms.append((secs["metered"] - engine.seconds) * 1000 / len(batch))
        for mode in secs:
            rates[mode].append(tokens / secs[mode])
        ratios.append(secs["bare"] / secs["metered"])
        print(f"  round {rnd + 1}  bare {tokens} tokens in {secs['bare']:6.2f} s = {tokens / secs['bare']:6.2f} tok/s;"
              f"  metered {secs['metered']:6.2f} s = {tokens / secs['metered']:6.2f} tok/s;  ratio {ratios[-1]:.3f}")
        if server is not None:
            import httpx

            stack = loop.run_until_complete(buy(chain, task, 1_000_000))

            def post(r):
                with httpx.Client(timeout=600) as c:
                    resp = c.post(server.url + "/v1/chat/completions", json=r, headers={"X-Stack-Small-Id": str(stack)})
                    resp.raise_for_status()
                    return resp.json()

            t = time.perf_counter()
            engine.inner.chat(batch)
            bare_wall = time.perf_counter() - t
            t = time.perf_counter()
            with ThreadPoolExecutor(len(batch)) as pool:
                responses = list(pool.map(post, batch))
            wall = time.perf_counter() - t
            mismatches += sum(deterministic_response(r) != ref for r, ref in zip(responses, reference))
            rates["http"].append(completion_tokens(responses) / wall)
            http_ratios.append(bare_wall / wall)
            print(f"           bare batch {bare_wall:6.2f} s;  HTTP, {len(batch)} concurrent clients {wall:6.2f} s = "
                  f"{completion_tokens(responses) / wall:6.2f} tok/s;  ratio {http_ratios[-1]:.3f}")

    bare = statistics.median(rates["bare"])
    metered = statistics.median(rates["metered"])
    ratio = statistics.median(ratios)
    prompt = sum(engine.prompt_tokens(r) or 0 for r in batch)
    print()
    print(f"sizes: {len(batch)} requests, {prompt} templated prompt tokens, {tokens} completion tokens per pass")
    print(f"bare engine      {bare:8.2f} completion tok/s (median)")
    print(f"metered serving  {metered:8.2f} completion tok/s (median)")
    print(f"ratio metered/bare {ratio:.3f} (median over rounds; goal >= {GOAL}) {'OK' if ratio >= GOAL else 'BELOW GOAL'}")
    print(f"metering overhead outside the engine: {statistics.median(overhead_ms):.2f} ms per request (median)")
    if rates["http"]:
        print(f"HTTP serving     {statistics.median(rates['http']):8.2f} completion tok/s (median)   "
              f"ratio {statistics.median(http_ratios):.3f} (vs the bare engine on the whole batch)")
    print(f"responses identical to the bare engine's: {'yes' if mismatches == 0 else f'NO ({mismatches} differ)'}")
    if server is not None:
        server.stop()
        loop.run_until_complete(http_service.close())
    loop.run_until_complete(service.close())
    loop.run_until_complete(chain.close())
    tmp.cleanup()
    print(json.dumps({"bare_tok_s": round(bare, 3), "metered_tok_s": round(metered, 3), "ratio": round(ratio, 4)}))
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
