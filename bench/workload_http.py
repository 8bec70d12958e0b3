"""What sending a workload as its buyer costs: ``stack serve``'s workload over loopback HTTP against the same
requests handed to the node service directly, side by side in one process with one engine.

    .venv/bin/python bench/workload_http.py                       # data/workloads/sample.jsonl, CPU engine, 3 rounds
    .venv/bin/python bench/workload_http.py --engine stub --rounds 5   # the stub engine: the path's own cost

- **direct**: ``atoma_ops.testing.serve_all`` — admission, the engine, the charge and the history append on the
  ``NodeService``, no HTTP; the path ``stack serve`` took before it acted as the buyer (now only the tests use it).
- **http**: ``lifecycle.serve_workload`` — what ``stack serve --workload`` and the serve-stack flow do now: the node's
  HTTP server started in the event loop on a free 127.0.0.1 port, every request signed with the stack owner's key,
  every answer's signature checked, request ids per line.

Each round serves the whole workload on a fresh stack both ways, alternating which goes first; both at the same
concurrency (8, as ``stack serve``). Printed: the median wall time of each and their ratio. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from atoma_ops.protocol.events import small_id  # noqa: E402
from bench.serving import buyer, setup  # noqa: E402


async def buy(home, units: int) -> int:
    """Another stack of the task ``setup`` created (task 1), sold to node-1."""
    chain = home.open()
    try:
        tx = await chain.acquire_new_stack_entry("user", task_small_id=1, num_compute_units=units, price=1_000_000)
        return small_id(tx.event("StackCreatedEvent").parsed_json["stack_small_id"])
    finally:
        await chain.close()


async def direct(service, stack: int, workload: list[dict], concurrency: int) -> tuple[float, int]:
    from atoma_ops.testing.serve_all import serve_all

    t0 = time.perf_counter()
    outcomes = await serve_all(service, stack, workload, concurrency=concurrency)
    return time.perf_counter() - t0, sum(o.units for o in outcomes if o.ok)


async def http(service, signer, stack: int, workload: list[dict], concurrency: int) -> tuple[float, int]:
    from atoma_ops.lifecycle import serve_workload

    t0 = time.perf_counter()
    report, _ = await serve_workload(service, signer, stack, workload, concurrency=concurrency)
    return time.perf_counter() - t0, report.units_charged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default=str(REPO / "data/workloads/sample.jsonl"))
    parser.add_argument("--engine", choices=("cpu", "stub"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from atoma_ops.serving.engines.base import SMOLLM2_MODEL
    from atoma_ops.serving.node import NodeService, load_engine
    from atoma_ops.serving.workload import load_workload

    workload = load_workload(args.workload)
    if args.engine == "cpu":
        engine = load_engine("cpu")
    else:
        from atoma_ops.testing.stub_engine import StubEngine

        engine = StubEngine()
        workload = [{k: v for k, v in r.items() if k != "model"} for r in workload]
    model = SMOLLM2_MODEL if args.engine == "cpu" else engine.model
    times: dict[str, list[float]] = {"direct": [], "http": []}
    with tempfile.TemporaryDirectory() as tmp:
        home, _ = asyncio.run(setup(Path(tmp) / "home", model, 1_000_000))  # funds the stacks below

        async def run() -> None:
            service = await NodeService.open(home.path, "node-1", engine)
            signer = buyer(home)
            try:
                warm = await buy(home, 20_000)
                await direct(service, warm, workload[:4], args.concurrency)  # warm-up (first-call costs)
                for r in range(args.rounds):
                    order = ("direct", "http") if r % 2 == 0 else ("http", "direct")
                    for way in order:
                        stack = await buy(home, 20_000)
                        if way == "direct":
                            wall, units = await direct(service, stack, workload, args.concurrency)
                        else:
                            wall, units = await http(service, signer, stack, workload, args.concurrency)
                        times[way].append(wall)
                        print(f"round {r + 1} {way:>6}: {wall:7.2f} s, {units} units", flush=True)
            finally:
                await service.close()

        asyncio.run(run())
    d, h = statistics.median(times["direct"]), statistics.median(times["http"])
    print(f"\n{len(workload)} requests, {args.engine} engine, concurrency {args.concurrency}, {args.rounds} rounds")
    print(f"median wall: direct {d:.2f} s, http {h:.2f} s; http/direct = {h / d:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
